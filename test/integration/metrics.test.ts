// nfqlb --metrics through the kernel: known traffic (TCP connections from 100 sources and counted
// UDP bursts) to the VIP through the reference router setup, then a real HTTP scrape from the
// router's namespace. Every count is checked against one the kernel keeps on its own: iptables
// counters at the servers (what each one received), /proc/net/netfilter/nfnetlink_queue at the
// router (what the queue handed out).

import { type ChildProcess, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Family, type Topology, VIP } from '../../src/lab/topology.js';
import { type KernelQueueStats, kernelQueueStats } from '../../src/nfqueue.js';
import { shmPath } from '../../src/shm.js';
import { waitFor, waitUntilStable } from '../wait.js';
import {
  activateServers,
  createNfqueueLab,
  type Daemon,
  httpGet,
  mconnect as mconnectFrom,
  NFQLB,
  nfqlb,
  requireBuild,
  Scrape,
  startDaemon,
  staticNeighbours,
  tearDownLab,
} from './harness.js';

const PREFIX = 'tmx-';
const SHM = 'tmx-targets';
const FT_SHM = 'tmx-ftshm';
const FLOW_FT_SHM = 'tmx-ftflow';
const NVM = 4;
const PORT = 9110;

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

// Sends `count` UDP datagrams of `size` bytes to [host]:5001 from 16 sockets (16 flows), one
// after the other, and prints how many were sent.
const UDP_BURST_JS = `
const dgram = require('dgram');
const [host, count, size] = process.argv.slice(1).map((a, i) => (i === 0 ? a : Number(a)));
const socks = Array.from({ length: 16 }, () => dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4'));
(async () => {
  for (let i = 0; i < count; i++) await new Promise((r, j) => socks[i % 16].send(Buffer.alloc(size), 5001, host, (e) => (e ? j(e) : r())));
  for (const s of socks) s.close();
  console.log(count);
})();`;

// A malformed request (expects a 400 and the connection closed) and a slow client that sends
// half a request and then nothing (expects the server to cut it off).
const BAD_CLIENTS_JS = `
const net = require('net');
const port = Number(process.argv[1]);
const bad = net.connect(port, '127.0.0.1', () => bad.write('GET /metrics HTTP/1.1\\r\\nHost\\x00: \\x01\\r\\n\\r\\n'));
let reply = '';
bad.on('data', (d) => (reply += d));
bad.on('close', () => console.log('malformed: ' + reply.split('\\r\\n')[0]));
const slow = net.connect(port, '127.0.0.1', () => { slow.write('GET /metrics HTTP/1.1\\r\\nHost: x'); console.log('slow: holding'); });
let answer = '';
slow.on('data', (d) => (answer += d));
slow.on('error', () => {});
slow.on('close', () => console.log('slow: closed, answer ' + answer.split('\\r\\n')[0]));`;

const udpBurst = (family: Family, count: number, size = 100) =>
  expect(topo.exec(topo.ns.tester, ['node', '-e', UDP_BURST_JS, VIP[family], String(count), String(size)]).trim()).toBe(String(count));

const mconnect = (family: Family, nconn = 100) => {
  const r = mconnectFrom(topo, family, { nconn });
  expect(r.failed_connects + r.failed_reads).toBe(0);
};

interface Counts {
  packets: number;
  bytes: number;
}

/** Packets and bytes to the VIP (v4 + v6) that each server's PREROUTING saw, server 1 first. */
function serverCounts(): Counts[] {
  return Array.from({ length: NVM }, (_, i) => {
    const c = { packets: 0, bytes: 0 };
    for (const cmd of ['iptables', 'ip6tables']) {
      const rule = topo
        .exec(topo.ns.server(i + 1), [cmd, '-t', 'mangle', '-nvxL', 'PREROUTING'])
        .trim()
        .split('\n')[2]!
        .trim()
        .split(/\s+/);
      c.packets += Number(rule[0]);
      c.bytes += Number(rule[1]);
    }
    return c;
  });
}

function kernelQueue(queue: number): KernelQueueStats {
  const k = kernelQueueStats(queue, topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']));
  if (k === undefined) throw new Error(`queue ${queue} is not bound`);
  return k;
}

function scrape(): Scrape {
  const r = httpGet(topo, router, PORT, '/metrics');
  expect(r.status).toBe(200);
  return new Scrape(r.body);
}

/** Polls /healthz until it answers `status` (the lb reads tables and binds queues on its own time). */
async function healthz(status: number): Promise<string> {
  const r = await waitFor(
    `/healthz to answer ${status}`,
    () => {
      const got = httpGet(topo, router, PORT, '/healthz');
      if (got.status !== status) throw new Error(`it answers ${got.status}: ${got.body.trim()}`);
      return got;
    },
    { timeout: 20_000, interval: 100 },
  );
  return r.body;
}

interface Settled {
  s: Scrape;
  /** serverCounts() at the time of the scrape. */
  servers: Counts[];
  /** The kernel's stats of the queues asked for, by queue number. */
  kernel: Map<number, KernelQueueStats>;
}

/**
 * Waits until the last packets of the traffic have crossed the lb and reached the servers: the
 * lb's packet counters, the servers' and the kernel queues' no longer move. Returns that state,
 * all read in one sample, for exact comparisons.
 */
async function settled(queues: number[]): Promise<Settled> {
  let last!: Settled;
  await waitUntilStable(
    'the packet counters',
    () => {
      last = { s: scrape(), servers: serverCounts(), kernel: new Map(queues.map((q) => [q, kernelQueue(q)])) };
      return [
        last.servers,
        [...last.kernel.values()].map((k) => k.idSequence),
        ...['nfqlb_packets_total', 'nfqlb_target_packets_total', 'nfqlb_drops_total'].map((m) => last.s.series(m)),
      ];
    },
    { settle: 200, timeout: 20_000 },
  );
  return last;
}

async function startLb(cmd: 'lb' | 'flowlb', ...args: string[]): Promise<Daemon> {
  const lb = topo.spawn(router, ['node', NFQLB, cmd, `--metrics=${PORT}`, ...args]);
  procs.push(lb);
  const d = await startDaemon(lb);
  await healthz(200);
  return d;
}

/** Per-fwmark counts of the lb equal what each server received from `before` to `after`. */
function expectTargetsMatchServers(s: Scrape, before: Counts[], after: Counts[], base?: Scrape): void {
  for (let n = 1; n <= NVM; n++) {
    const fwmark = String(100 + n);
    const packets = s.sum('nfqlb_target_packets_total', { fwmark }) - (base?.sum('nfqlb_target_packets_total', { fwmark }) ?? 0);
    const bytes = s.sum('nfqlb_target_bytes_total', { fwmark }) - (base?.sum('nfqlb_target_bytes_total', { fwmark }) ?? 0);
    expect(packets, `fwmark ${fwmark}`).toBeGreaterThan(0);
    expect({ fwmark, packets, bytes }).toEqual({
      fwmark,
      packets: after[n - 1]!.packets - before[n - 1]!.packets,
      bytes: after[n - 1]!.bytes - before[n - 1]!.bytes,
    });
  }
}

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  staticNeighbours(topo);
  // A counting rule (no target) per server and family: what reached the server for the VIP.
  for (let n = 1; n <= NVM; n++) {
    topo.exec(topo.ns.server(n), ['iptables', '-t', 'mangle', '-A', 'PREROUTING', '-d', `${VIP[4]}/32`]);
    topo.exec(topo.ns.server(n), ['ip6tables', '-t', 'mangle', '-A', 'PREROUTING', '-d', `${VIP[6]}/128`]);
  }
  nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=10');
  activateServers(SHM, NVM);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM, FLOW_FT_SHM])).toEqual([]);
});

describe('nfqlb lb --metrics, one queue', () => {
  let lb: Daemon;
  beforeAll(async () => {
    lb = await startLb('lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--queue=2');
  });
  afterAll(async () => {
    await lb?.stop();
  });

  it('counts per fwmark exactly what each server received, and agrees with the kernel queue', async () => {
    const before = serverCounts();
    mconnect(4);
    udpBurst(4, 500);
    udpBurst(6, 200, 1000);
    const { s, servers, kernel } = await settled([2]);
    expectTargetsMatchServers(s, before, servers);
    const k = kernel.get(2)!;
    const packets = s.sum('nfqlb_packets_total', { queue: '2' });
    // Every packet the kernel handed out (ids), less those it could not deliver to our socket.
    expect(packets).toBe(k.idSequence - k.userDropped);
    expect(packets).toBeGreaterThan(700 + 100 * 3);
    expect(s.sum('nfqlb_target_packets_total')).toBe(packets);
    expect(s.sum('nfqlb_drops_total')).toBe(0);
    expect(s.sum('nfqlb_batches_total', { queue: '2' })).toBeGreaterThan(0);
    expect(s.sum('nfqlb_batches_total', { queue: '2' })).toBeLessThanOrEqual(packets);
    expect(s.sum('nfqlb_nfqueue_dropped_total', { queue: '2', reason: 'queue_full' })).toBe(k.queueDropped);
    expect(s.sum('nfqlb_nfqueue_dropped_total', { queue: '2', reason: 'user' })).toBe(k.userDropped);
    expect(s.series('nfqlb_nfqueue_queue_length', { queue: '2' })).toHaveLength(1);
    expect(s.sum('nfqlb_queue_bound', { queue: '2' })).toBe(1);
    expect(s.sum('nfqlb_targets_active', { table: SHM })).toBe(NVM);
    expect(s.sum('nfqlb_table_size', { table: SHM })).toBe(887);
    // prom-client's process metrics are there too.
    expect(s.series('process_cpu_seconds_total')).toHaveLength(1);
    expect(s.text).toMatch(/^# TYPE nfqlb_target_bytes_total counter$/m);
  });

  it('no_target counts the packets sent while every target is deactivated', async () => {
    const base = scrape();
    const before = serverCounts();
    try {
      for (let n = 1; n <= NVM; n++) nfqlb('deactivate', `--shm=${SHM}`, `--index=${n}`);
      udpBurst(4, 50);
      udpBurst(6, 30);
      const { s, servers } = await settled([2]);
      expect(s.sum('nfqlb_drops_total', { reason: 'no_target' }) - base.sum('nfqlb_drops_total', { reason: 'no_target' })).toBe(80);
      expect(s.sum('nfqlb_target_packets_total')).toBe(base.sum('nfqlb_target_packets_total'));
      expect(servers).toEqual(before);
      expect(s.sum('nfqlb_targets_active', { table: SHM })).toBe(0);
      expect(s.sum('nfqlb_table_changes_total', { table: SHM })).toBeGreaterThan(base.sum('nfqlb_table_changes_total', { table: SHM }));
      expect(s.sum('nfqlb_table_last_change_seconds', { table: SHM })).toBeGreaterThan(
        base.sum('nfqlb_table_last_change_seconds', { table: SHM }),
      );
    } finally {
      activateServers(SHM, NVM);
    }
  });

  it('/healthz answers 503 while the target table is gone and 200 once it is back', async () => {
    nfqlb('delete', `--shm=${SHM}`);
    try {
      expect(await healthz(503)).toContain(SHM);
    } finally {
      nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=10');
      activateServers(SHM, NVM);
    }
    expect(await healthz(200)).toBe('ok\n');
  });

  it('a malformed request and a slow client never block the data path', async () => {
    const clients = topo.spawn(router, ['node', '-e', BAD_CLIENTS_JS, String(PORT)]);
    procs.push(clients);
    let out = '';
    clients.stdout!.on('data', (d) => (out += String(d)));
    const seen = (text: string, timeout: number) =>
      waitFor(
        `the clients to print '${text}'`,
        () => {
          if (!out.includes(text)) throw new Error(`they printed ${JSON.stringify(out)}`);
          return true;
        },
        { timeout, interval: 100 },
      );
    await seen('slow: holding', 10_000);
    await seen('malformed: HTTP/1.1 400', 10_000);
    // With the slow client's connection open, a scrape is answered (checked right after it: the
    // server may rightly cut the client off 10 s after it connected) and traffic goes on.
    const base = scrape();
    expect(out).not.toContain('slow: closed');
    const before = serverCounts();
    mconnect(4, 20);
    udpBurst(4, 200);
    const { s, servers } = await settled([2]);
    expectTargetsMatchServers(s, before, servers, base);
    expect(s.sum('nfqlb_packets_total') - base.sum('nfqlb_packets_total')).toBe(
      s.sum('nfqlb_target_packets_total') - base.sum('nfqlb_target_packets_total'),
    );
    // The server cuts the slow client off (10 s for the headers, checked every second), the lb carries on.
    await seen('slow: closed, answer HTTP/1.1 408 Request Timeout', 30_000);
    expect(lb.proc.exitCode).toBeNull();
  });
});

describe('nfqlb lb --metrics --queue=0:1 (worker threads)', () => {
  const queueRule = (...target: string[]) => {
    for (const [cmd, vip] of [
      ['iptables', `${VIP[4]}/32`],
      ['ip6tables', `${VIP[6]}/128`],
    ] as const) {
      topo.exec(router, [cmd, '-t', 'mangle', '-R', 'PREROUTING', '1', '-i', 'eth2', '-d', vip, '-j', 'NFQUEUE', ...target]);
    }
  };

  it('sums the counts of both queues, each equal to its kernel queue', async () => {
    queueRule('--queue-balance', '0:1');
    const lb = await startLb('lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--queue=0:1');
    try {
      const before = serverCounts();
      mconnect(4);
      mconnect(6);
      udpBurst(4, 300);
      const { s, servers, kernel } = await settled([0, 1]);
      expectTargetsMatchServers(s, before, servers);
      for (const q of [0, 1]) {
        const k = kernel.get(q)!;
        const packets = s.sum('nfqlb_packets_total', { queue: String(q) });
        expect(packets).toBeGreaterThan(0);
        expect(packets).toBe(k.idSequence - k.userDropped);
        expect(s.sum('nfqlb_queue_bound', { queue: String(q) })).toBe(1);
      }
      expect(s.sum('nfqlb_target_packets_total')).toBe(s.sum('nfqlb_packets_total'));
    } finally {
      await lb.stop();
      queueRule('--queue-num', '2');
    }
  });
});

describe('nfqlb flowlb --metrics', () => {
  it('counts matches per flow and the packets no flow takes', async () => {
    const lb = await startLb('flowlb', `--ft_shm=${FLOW_FT_SHM}`, '--queue=2');
    try {
      const r = spawnSync(
        'ip',
        ['netns', 'exec', router, 'node', NFQLB, 'flow-set', '--name=web', `--target=${SHM}`, '--protocols=tcp', '--dports=5001'],
        { encoding: 'utf8' },
      );
      expect(r.stdout, r.stderr).toBe('OK\n');
      const before = serverCounts();
      mconnect(4, 30);
      udpBurst(4, 40);
      const { s, servers } = await settled([2]);
      expectTargetsMatchServers(s, before, servers);
      expect(s.sum('nfqlb_flow_matches_total', { flow: 'web' })).toBe(s.sum('nfqlb_target_packets_total'));
      expect(s.sum('nfqlb_drops_total', { reason: 'no_flow_match' })).toBe(40);
      expect(s.sum('nfqlb_targets_active', { table: SHM })).toBe(NVM);
    } finally {
      await lb.stop();
    }
  });
});

describe('bad --metrics', () => {
  it.each([
    ['300.1.1.1:9110', /^nfqlb lb: --metrics: '300\.1\.1\.1:9110' has no valid IPv4/],
    ['localhost:9110', /^nfqlb lb: --metrics: 'localhost:9110' has no valid IPv4/],
    ['9110x', /^nfqlb lb: --metrics: '9110x' is not \[ADDR:\]PORT/],
    ['0', /^nfqlb lb: --metrics: '0' has a port out of range/],
    // Well-formed, but not an address of this namespace: found out when listening.
    ['192.0.2.1:9110', /^nfqlb lb: --metrics: cannot listen on 192\.0\.2\.1:9110: EADDRNOTAVAIL\n$/],
  ])('--metrics=%s: one line on stderr, exit 1, no queue bound and no file made', (arg, message) => {
    const ft = 'tmx-ftbad';
    const r = spawnSync(
      'ip',
      ['netns', 'exec', router, 'node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${ft}`, '--queue=2', `--metrics=${arg}`],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(shmPath(ft))).toBe(false);
    expect(kernelQueueStats(2, topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']))).toBeUndefined();
  });
});
