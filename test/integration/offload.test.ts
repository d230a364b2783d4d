// `nfqlb lb --offload` through the kernel: the tc ingress program marks whole TCP packets to
// the VIPs and the NFQUEUE rule (`-m mark --mark 0`) queues only what it left unmarked. 100
// connections over 10 DSR servers with nothing in the queue, fragmented UDP still balanced
// whole by the queue path, the program gone with a SIGKILLed lb, and live connections through
// activate/deactivate: exactly those whose lookup entry changed break.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashTuple } from '../../src/hash.js';
import { type Family, type Topology, VIP, vmName } from '../../src/lab/topology.js';
import { ECHO_PORT } from '../../src/lab/traffic/server.js';
import { OFFLOAD_PROGRAM } from '../../src/nfqlb/offload.js';
import { kernelQueueStats } from '../../src/nfqueue.js';
import { openShm } from '../../src/shm.js';
import { TargetTable } from '../../src/target-table.js';
import { waitFor } from '../wait.js';
import {
  activateServers,
  createNfqueueLab,
  type Daemon,
  mconnect,
  NFQLB,
  nfqlb,
  ROOT,
  requireBuild,
  sources,
  startDaemon,
  startUdpServers,
  tearDownLab,
  UDP_PORT,
  udpRoundTrips,
} from './harness.js';

const PREFIX = 'tof-';
const SHM = 'tof-targets';
const FT_SHM = 'tof-ftshm';
const NVM = 10;
const QUEUE = 2;

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

function startLb(): Promise<Daemon> {
  const lb = topo.spawn(router, [
    'node',
    NFQLB,
    'lb',
    `--tshm=${SHM}`,
    `--ft_shm=${FT_SHM}`,
    `--queue=${QUEUE}`,
    '--offload=eth2',
    `--vip=${VIP[4]},${VIP[6]}`,
  ]);
  procs.push(lb);
  return startDaemon(lb);
}

/** Packets the kernel has put in our queue since the lb bound it. */
function queued(): number {
  return kernelQueueStats(QUEUE, topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']))?.idSequence ?? -1;
}

/** The program's counters, from the lb's last log line. */
async function stopLb(lb: Daemon): Promise<{ marked: number; declined: number }> {
  const line = (await lb.stop()).split('\n').find((l) => l.includes('offload detached'));
  return JSON.parse(line ?? '{}') as { marked: number; declined: number };
}

/** Programs at tcx ingress of the router's eth2. */
function tcxPrograms(): { id: number; name?: string }[] {
  const js = `console.log(JSON.stringify(require('${ROOT}build/Release/tc_offload.node').tcxIngress('eth2')))`;
  return JSON.parse(topo.exec(router, ['node', '-e', js])) as { id: number; name?: string }[];
}

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  procs.push(...startUdpServers(topo, NVM));
  // The documented rule for --offload: queue only the packets the program did not mark.
  for (const [cmd, vip] of [
    ['iptables', `${VIP[4]}/32`],
    ['ip6tables', `${VIP[6]}/128`],
  ] as const) {
    topo.exec(router, [
      cmd,
      '-t',
      'mangle',
      '-R',
      'PREROUTING',
      '1',
      '-i',
      'eth2',
      '-d',
      vip,
      '-m',
      'mark',
      '--mark',
      '0',
      '-j',
      'NFQUEUE',
      '--queue-num',
      String(QUEUE),
    ]);
  }
  nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=20');
  activateServers(SHM, NVM);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
});

describe.each([4, 6] as const)('lb --offload, IPv%i', (family) => {
  it('spreads 100 connections over the 10 servers; the queue sees no packet', async () => {
    const lb = await startLb();
    let counters: Awaited<ReturnType<typeof stopLb>> | undefined;
    try {
      const r = mconnect(topo, family);
      expect(r.failed_connects + r.failed_reads).toBe(0);
      expect(Object.keys(r.hosts).sort()).toEqual(Array.from({ length: NVM }, (_, i) => vmName(i + 1)));
      for (const count of Object.values(r.hosts)) expect(count).toBeLessThan(30);
      expect(queued()).toBe(0);
    } finally {
      counters = await stopLb(lb);
    }
    // SYN, ACK and FIN at least, for each of the 100 connections.
    expect(counters?.marked).toBeGreaterThanOrEqual(300);
    expect(counters?.declined).toBe(0);
  });

  it('sends fragmented UDP through the queue, whole, to the server of its 5-tuple', async () => {
    const lb = await startLb();
    try {
      const src = sources(family, 16, 1);
      const answers = udpRoundTrips(
        topo,
        src.map((s) => ({ src: s, sport: 7001, family })),
      );
      const table = new TargetTable(openShm(SHM, false));
      const ep = (a: string, p: number) => (family === 4 ? `${a}:${p}` : `[${a}]:${p}`);
      const servers = new Set<string>();
      for (const s of src) {
        const fw = table.fwmarkOf(hashTuple({ proto: 'udp', src: ep(s, 7001), dst: ep(VIP[family], UDP_PORT) }, 1));
        expect(answers[s], `datagram from ${s}`).toBe(`${vmName(fw - 100)} 3000`);
        servers.add(answers[s]!);
      }
      expect(servers.size).toBeGreaterThan(1);
      // Each 3000-byte datagram is 3 fragments on a 1500 MTU, all through the queue (a late
      // answer could add an ICMP port unreachable: at least).
      expect(queued()).toBeGreaterThanOrEqual(3 * src.length);
    } finally {
      const counters = await stopLb(lb);
      expect(counters.marked).toBe(0);
    }
  });
});

describe('the program goes with the lb', () => {
  it('is refused on a device that has one, and is detached when the lb is SIGKILLed', async () => {
    const lb = await startLb();
    try {
      const attached = tcxPrograms().filter((p) => p.name === OFFLOAD_PROGRAM);
      expect(attached).toHaveLength(1);
      const second = spawnSync(
        'ip',
        [
          'netns',
          'exec',
          router,
          'node',
          NFQLB,
          'lb',
          `--tshm=${SHM}`,
          '--ft_shm=tof-ft2',
          '--queue=3',
          '--offload=eth2',
          `--vip=${VIP[4]}`,
        ],
        { encoding: 'utf8' },
      );
      expect(second.status).toBe(1);
      expect(second.stderr.trim()).toBe(
        `nfqlb lb: --offload: eth2 already has an offload program at tc ingress (BPF prog id ${attached[0]!.id}): ` +
          "another 'nfqlb lb --offload' runs there, or its link was pinned in /sys/fs/bpf",
      );
    } finally {
      await lb.stop('SIGKILL');
    }
    // No cleanup code ran: the kernel released the bpf_link with the process.
    await waitFor('the kernel to detach the program', () => tcxPrograms().length === 0, { timeout: 2000, interval: 100 });
  });
});

describe('re-init while lb --offload runs', () => {
  it('follows a table that init re-created (another size)', async () => {
    const lb = await startLb();
    try {
      nfqlb('init', `--shm=${SHM}`, '--M=400', '--N=10');
      nfqlb('activate', `--shm=${SHM}`, '103');
      // The program has the new table once a connection reaches server 3 without the queue
      // (until then one may be queued: the queue's own follow is slower). The 20 below are
      // then the check.
      await waitFor('a connection to server 3 through the program', () => {
        const before = queued();
        return mconnect(topo, 6, { nconn: 1 }).hosts[vmName(3)] === 1 && queued() === before;
      });
      const before = queued();
      const r = mconnect(topo, 6, { nconn: 20 });
      expect(r.failed_connects + r.failed_reads).toBe(0);
      expect(r.hosts).toEqual({ [vmName(3)]: 20 });
      expect(queued()).toBe(before);
    } finally {
      nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=20');
      activateServers(SHM, NVM);
      await stopLb(lb);
    }
  });
});

// Long-lived connections from fixed source addresses and ports (so the test knows each one's
// hash), one echo message per connection every 50 ms. Prints "ready" once every connection
// got its server's greeting, and "lost <i>" when connection i is reset or closed: a server that
// gets a packet of a connection it does not have answers with a reset. On a "sync" line it
// prints "synced" once every connection not lost has had data back since; on stdin's end it
// prints [{ host, lost }].
const CHURN_CLIENT_JS = `
const { connect } = require('node:net');
const { createInterface } = require('node:readline');
const jobs = JSON.parse(process.argv[1]);
let greeted = 0;
const conns = jobs.map((j, i) => {
  const c = { host: null, lost: false, received: 0 };
  const s = connect({ host: j.dst, port: ${ECHO_PORT}, localAddress: j.src, localPort: j.sport });
  s.setNoDelay(true);
  s.on('data', (d) => {
    c.received++;
    if (c.host === null) { c.host = d.toString().split('\\n')[0]; if (++greeted === jobs.length) console.log('ready'); }
  });
  const lose = () => { if (!c.lost) console.log('lost ' + i); c.lost = true; };
  s.on('error', lose);
  s.on('close', lose);
  setInterval(() => { if (!c.lost) s.write('x\\n'); }, 50);
  return c;
});
createInterface({ input: process.stdin }).on('line', () => {
  const mark = conns.map((c) => c.received);
  const check = setInterval(() => {
    if (conns.every((c, i) => c.lost || c.received > mark[i])) { clearInterval(check); console.log('synced'); }
  }, 10);
}).on('close', () => {
  console.log(JSON.stringify(conns.map((c) => ({ host: c.host, lost: c.lost }))));
  process.exit(0);
});`;

describe('churn', () => {
  it('activate/deactivate under traffic: exactly the connections whose entry changed break', async () => {
    const lb = await startLb();
    const jobs = ([4, 6] as Family[]).flatMap((family) =>
      sources(family, 50, 9).map((src, i) => ({ family, src, sport: 41000 + i, dst: VIP[family] })),
    );
    const client = spawn('ip', ['netns', 'exec', topo.ns.tester, 'node', '-e', CHURN_CLIENT_JS, JSON.stringify(jobs)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    procs.push(client);
    const out: string[] = [];
    createInterface({ input: client.stdout! }).on('line', (l) => out.push(l));
    const lost = () => new Set(out.filter((l) => l.startsWith('lost ')).map((l) => Number(l.slice(5))));
    const table = new TargetTable(openShm(SHM, false));
    const ep = (family: Family, a: string, p: number) => (family === 4 ? `${a}:${p}` : `[${a}]:${p}`);
    const fwmarks = () =>
      jobs.map((j) =>
        table.fwmarkOf(hashTuple({ proto: 'tcp', src: ep(j.family, j.src, j.sport), dst: ep(j.family, j.dst, ECHO_PORT) }, 1)),
      );
    try {
      await waitFor('every connection to get its greeting', () => out.includes('ready'));
      // Each state's fwmark per connection; a connection is unchanged if all are the same.
      const states = [fwmarks()];
      for (const step of [
        ['deactivate', '--index=1'],
        ['deactivate', '--index=2'],
        ['activate', '--index=1', '101'],
        ['deactivate', '105'],
        ['activate', '--index=2', '102'],
        ['activate', '--index=5', '105'],
      ]) {
        nfqlb(step[0]!, `--shm=${SHM}`, ...step.slice(1));
        const [prev, now] = [states.at(-1)!, fwmarks()];
        states.push(now);
        // The next state only once this one broke every connection it moved (a state that
        // lasted less than a packet interval could move one and back unnoticed).
        await waitFor(`${step.join(' ')} to break the connections it moved`, () => {
          const l = lost();
          return now.every((fw, i) => fw === prev[i] || l.has(i));
        });
      }
      // Every connection still up had traffic through the last state.
      client.stdin!.write('sync\n');
      await waitFor('data back on every connection still up', () => out.includes('synced'));
      client.stdin!.end();
      const result = JSON.parse(await waitFor("the client's report", () => out.find((l) => l.startsWith('[')))) as {
        host: string;
        lost: boolean;
      }[];
      const changed = jobs.map((_, i) => states.some((s) => s[i] !== states[0]![i]));
      // Every connection reached the server the table gave it first.
      expect(result.map((r) => r.host)).toEqual(states[0]!.map((fw) => vmName(fw - 100)));
      expect(changed.filter(Boolean).length).toBeGreaterThan(5);
      expect(changed.filter((c) => !c).length).toBeGreaterThan(20);
      expect(result.map((r) => r.lost)).toEqual(changed);
      // All of it went through the program, none through the queue.
      expect(queued()).toBe(0);
    } finally {
      client.kill();
      activateServers(SHM, [1, 2, 5]);
      await stopLb(lb);
    }
  });
});
