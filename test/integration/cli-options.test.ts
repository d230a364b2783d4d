// CLI options the README promises and no other test runs, through the kernel of a 3-server lab:
// `lb --conntrack --ct_other_timeout` (an idle flow's entry expires after the given time, so a
// drained target's flow is forgotten and re-placed), bad `--ct_*_timeout` values, `flowlb
// --conntrack` (drain: established connections stay on a deactivated target, new ones avoid
// it), the iptables rule's `--queue-bypass` (no lb bound: packets pass unmarked, by the main
// table) and `nfqlb primebelow` (exact output; bad input is one line and exit 1).

import { type ChildProcess, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Topology, VIP, vmName } from '../../src/lab/topology.js';
import { waitFor } from '../wait.js';
import {
  activateServers,
  createNfqueueLab,
  httpGet,
  mconnect,
  NFQLB,
  nfqlb,
  nfqlbIn,
  type RunResult,
  requireBuild,
  Scrape,
  startDaemon,
  startUdpServers,
  tearDownLab,
  UDP_PORT,
} from './harness.js';

const PREFIX = 'tcl-';
const SHM = 'tcl-targets';
const FLOW_SHM = 'tcl-flow';
const BYPASS_SHM = 'tcl-bypass';
const FT_SHM = 'tcl-ftshm';
const NVM = 3;
const METRICS_PORT = 9117;

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

/** An nfqlb command in the router namespace (its queues and flow channel are there). */
const inRouter = (...args: string[]): RunResult => nfqlbIn(router, args);

function startLb(cmd: 'lb' | 'flowlb', ...args: string[]) {
  const p = topo.spawn(router, ['node', NFQLB, cmd, `--ft_shm=${FT_SHM}`, ...args]);
  procs.push(p);
  return startDaemon(p);
}

// One small UDP datagram from a fixed source address and port (one flow), answered by the
// server that got it with its name; "none" when no answer came within 5 s (a deadline: every
// use expects an answer, which takes milliseconds).
const UDP_ONCE_JS = `
import { createSocket } from 'node:dgram';
const [src, sport, dst, dport] = process.argv.slice(1);
const s = createSocket({ type: 'udp4' });
const timer = setTimeout(() => { console.log('none'); process.exit(0); }, 5000);
s.on('message', (m) => { clearTimeout(timer); console.log(m.toString().split(' ')[0]); process.exit(0); });
s.bind(+sport, src, () => s.send('x', +dport, dst));`;

const udpOnce = (src: string, sport: number): string =>
  topo.exec(topo.ns.tester, ['node', '--input-type=module', '-e', UDP_ONCE_JS, src, String(sport), VIP[4], String(UDP_PORT)]).trim();

const scrape = (): Scrape => new Scrape(httpGet(topo, router, METRICS_PORT, '/metrics').body);

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  procs.push(...startUdpServers(topo, NVM));
  for (const shm of [SHM, FLOW_SHM, BYPASS_SHM]) nfqlb('init', `--shm=${shm}`, '--M=97', '--N=4');
  activateServers(SHM, NVM);
  activateServers(FLOW_SHM, NVM);
  activateServers(BYPASS_SHM, [1]);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FLOW_SHM, BYPASS_SHM, FT_SHM])).toEqual([]);
});

describe('nfqlb lb --conntrack --ct_other_timeout', () => {
  it('forgets an idle UDP flow after the timeout: a drained target keeps it until then, Maglev places it after', async () => {
    const lb = await startLb('lb', `--tshm=${SHM}`, '--conntrack=1024', '--ct_other_timeout=3', `--metrics=${METRICS_PORT}`);
    let n = 0;
    try {
      const first = udpOnce('50.0.5.1', 7001);
      n = Number(/^vm-(\d+)$/.exec(first)?.[1]);
      expect(n).toBeGreaterThanOrEqual(1);
      // Drained: the recorded flow stays on its target...
      nfqlb('deactivate', `--shm=${SHM}`, `--index=${n}`);
      // Taken before the flow's last packet, so that a slow client exit cannot shorten the idle time measured.
      const idleSince = Date.now();
      expect(udpOnce('50.0.5.1', 7001)).toBe(first);
      expect(scrape().sum('nfqlb_conntrack_draining_total')).toBeGreaterThanOrEqual(1);
      // ...until it has been idle for 3 s: the sweeper frees it (a whole pass takes 8 s). The
      // default (30 s) would time this wait out.
      await waitFor(
        'the flow entry to expire',
        () => {
          const m = scrape();
          return m.sum('nfqlb_conntrack_entries') === 0 && m.sum('nfqlb_conntrack_expired_total') >= 1;
        },
        { timeout: 20_000, interval: 250 },
      );
      // Not before the timeout: the lb's clock moves once a second, so an entry may look up to 1 s older.
      expect(Date.now() - idleSince).toBeGreaterThanOrEqual(2000);
      // Forgotten: the same flow is placed again, away from the deactivated target.
      const again = udpOnce('50.0.5.1', 7001);
      expect(again).toMatch(/^vm-\d+$/);
      expect(again).not.toBe(first);
    } finally {
      if (n > 0) activateServers(SHM, [n]);
      await lb.stop();
    }
  });

  it.each([
    ['--ct_syn_timeout=0', /^nfqlb lb: --ct_syn_timeout: 0 is out of range 1\.\.\d+\n$/],
    ['--ct_established_timeout=5m', /^nfqlb lb: --ct_established_timeout: '5m' is not a number\n$/],
    ['--ct_close_timeout=-1', /^nfqlb lb: --ct_close_timeout: -1 is out of range 1\.\.\d+\n$/],
    ['--ct_other_timeout=999999999', /^nfqlb lb: --ct_other_timeout: 999999999 is out of range 1\.\.\d+\n$/],
    ['--compat=nfqlb-1.3', /^nfqlb lb: --compat: 'nfqlb-1\.3' is not one of: nfqlb\n$/],
  ])('%s: one line on stderr, exit 1, no queue bound', (arg, message) => {
    const r = inRouter('lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--conntrack=1024', arg);
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toMatch(message);
    expect(topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue'])).toBe('');
  });
});

// Holds n TCP connections to the VIP's echo port from 50.0.7.1.., prints the server each reached
// (its greeting) as a JSON array; then for each line on stdin writes a line on every connection
// and prints whether each came back ("ok") within 2 s.
const ECHO_CLIENT_JS = `
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
const [host, n] = [process.argv[1], +process.argv[2]];
const conns = [];
const names = await Promise.all(Array.from({ length: n }, (_, i) => new Promise((resolve) => {
  const s = connect({ host, port: 5003, localAddress: '50.0.7.' + (i + 1) });
  conns.push(s);
  let got = '';
  s.on('error', (e) => resolve(e.code));
  const greet = (d) => { got += d; if (got.endsWith('\\n')) { s.off('data', greet); resolve(got.trim()); } };
  s.on('data', greet);
})));
console.log(JSON.stringify(names));
for await (const line of createInterface({ input: process.stdin })) {
  const r = await Promise.all(conns.map((s, i) => new Promise((resolve) => {
    if (s.destroyed) return resolve('closed');
    const msg = 'ping ' + i + ' ' + line + '\\n';
    let got = '';
    const done = (v) => { clearTimeout(t); s.off('data', on); s.off('close', closed); resolve(v); };
    const on = (d) => { got += d; if (got === msg) done('ok'); };
    const closed = () => done('closed');
    const t = setTimeout(() => done('timeout'), 2000);
    s.on('data', on);
    s.on('close', closed);
    s.write(msg);
  })));
  console.log(JSON.stringify(r));
}`;

describe('nfqlb flowlb --conntrack', () => {
  it('drains a deactivated target: its established connections keep working, new ones avoid it; --now cuts exactly them', async () => {
    const lb = await startLb('flowlb', '--conntrack=1024');
    let client: ChildProcess | undefined;
    let out = '';
    /** The client's k-th line of output (0-based), once it has printed it. */
    const line = async (k: number): Promise<string[]> =>
      JSON.parse(
        await waitFor(`line ${k} of the echo client`, () => {
          const lines = out.split('\n');
          return lines.length > k + 1 ? lines[k] : undefined;
        }),
      ) as string[];
    try {
      const set = inRouter(
        'flow-set',
        '--name=all',
        `--target=${FLOW_SHM}`,
        '--protocols=tcp',
        '--dports=5001,5003',
        `--dsts=${VIP[4]}/32`,
      );
      expect(set.stdout, set.stderr).toBe('OK\n');
      client = topo.spawn(topo.ns.tester, ['node', '--input-type=module', '-e', ECHO_CLIENT_JS, VIP[4], '30'], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      procs.push(client);
      client.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      client.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const names = await line(0);
      expect(names.every((name) => /^vm-00[1-3]$/.test(name))).toBe(true);
      // The target with the most connections (30 over 3: at least 10) is drained.
      const count = (name: string): number => names.filter((x) => x === name).length;
      const victim = [1, 2, 3].map(vmName).sort((a, b) => count(b) - count(a))[0]!;
      const index = Number(victim.slice(3));
      nfqlb('deactivate', `--shm=${FLOW_SHM}`, `--index=${index}`);
      client.stdin!.write('a\n');
      expect(await line(1)).toEqual(names.map(() => 'ok'));
      const fresh = mconnect(topo, 4, { srccidr: '50.0.8.0/24', nconn: 30 });
      expect(fresh.failed_connects + fresh.failed_reads).toBe(0);
      expect(Object.keys(fresh.hosts).sort()).toEqual([1, 2, 3].map(vmName).filter((h) => h !== victim));

      // Its slot is empty now: --index cannot say which target to remove (it once did nothing).
      const byIndex = spawnSync('node', [NFQLB, 'deactivate', '--now', `--shm=${FLOW_SHM}`, `--index=${index}`], { encoding: 'utf8' });
      expect(byIndex).toMatchObject({ status: 1, stdout: '' });
      expect(byIndex.stderr).toBe(
        `nfqlb deactivate: --index=${index}: the slot is empty; name a draining target by its fwmark (draining: ${100 + index})\n`,
      );
      // Removed at once by fwmark: its flows go back to Maglev, to servers that do not know them.
      nfqlb('deactivate', '--now', `--shm=${FLOW_SHM}`, String(100 + index));
      client.stdin!.write('b\n');
      const after = await line(2);
      // Exactly the victim's connections broke (reset by the server the flow moved to, or silent).
      expect(after.map((r) => r === 'ok')).toEqual(names.map((name) => name !== victim));
    } finally {
      client?.kill('SIGKILL');
      activateServers(FLOW_SHM, NVM);
      // The lb logs its counters when it stops: its entries took the drained target.
      expect(await lb.stop()).toMatch(/"draining":[1-9]/);
    }
  });
});

describe('iptables NFQUEUE --queue-bypass', () => {
  const rule = (cmd: 'iptables' | 'ip6tables', op: '-A' | '-D', bypass: boolean): void => {
    topo.exec(router, [
      cmd,
      '-t',
      'mangle',
      op,
      'PREROUTING',
      '-i',
      'eth2',
      '-d',
      cmd === 'iptables' ? `${VIP[4]}/32` : `${VIP[6]}/128`,
      '-j',
      'NFQUEUE',
      '--queue-num',
      '2',
      ...(bypass ? ['--queue-bypass'] : []),
    ]);
  };
  const setBypass = (bypass: boolean): void => {
    for (const cmd of ['iptables', 'ip6tables'] as const) {
      rule(cmd, '-D', !bypass);
      rule(cmd, '-A', bypass);
    }
  };
  const hosts = (family: 4 | 6) => {
    const r = mconnect(topo, family, { nconn: 20, timeout: '2s' });
    return { failed: r.failed_connects + r.failed_reads, hosts: r.hosts };
  };

  it("lets the VIP's packets through unmarked while no lb is bound (main table route), queues them while one is", async () => {
    // The main table's route for the VIP: server 3; the lb's table has server 1 only.
    topo.setRouterVipRoute(1, [3]);
    try {
      // Without it, no lb: the kernel drops them.
      expect(mconnect(topo, 4, { nconn: 5, timeout: '1s' }).failed_connects).toBe(5);
      setBypass(true);
      for (const family of [4, 6] as const) expect(hosts(family)).toEqual({ failed: 0, hosts: { 'vm-003': 20 } });
      const lb = await startLb('lb', `--tshm=${BYPASS_SHM}`);
      try {
        for (const family of [4, 6] as const) expect(hosts(family)).toEqual({ failed: 0, hosts: { 'vm-001': 20 } });
      } finally {
        await lb.stop('SIGTERM');
      }
      // The stopped lb released the queue: bypassed again at once.
      for (const family of [4, 6] as const) expect(hosts(family)).toEqual({ failed: 0, hosts: { 'vm-003': 20 } });
    } finally {
      if (topo.exec(router, ['iptables', '-t', 'mangle', '-S', 'PREROUTING']).includes('--queue-bypass')) setBypass(false);
      topo.setRouterVipRoute(1, []);
    }
  });
});

describe('nfqlb primebelow', () => {
  const primebelow = (...args: string[]) => {
    const r = spawnSync('node', [NFQLB, 'primebelow', ...args], { encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it.each([
    ['2', '2'],
    ['3', '3'],
    ['4', '3'],
    ['100', '97'],
    ['997', '997'],
    ['1000', '997'],
    ['65536', '65521'],
    ['994009', '993997'],
    // As the reference (src/lib/prime.c): its prime test knows divisors up to 997, so n is capped at 997^2.
    ['1000000', '993997'],
    ['2147483648', '993997'],
  ])('primebelow %s prints %s', (n, p) => {
    expect(primebelow(n)).toEqual({ status: 0, stdout: `${p}\n`, stderr: '' });
  });

  it.each([
    [[], 'primebelow takes one number'],
    [['100', '200'], 'primebelow takes one number'],
    [['1'], '--n: 1 is out of range 2..2147483648'],
    [['-5'], '--n: -5 is out of range 2..2147483648'],
    [['2147483649'], '--n: 2147483649 is out of range 2..2147483648'],
    [['abc'], "--n: 'abc' is not a number"],
    [['10.5'], "--n: '10.5' is not a number"],
  ])('primebelow %j: one line on stderr, exit 1', (args, message) => {
    expect(primebelow(...args)).toEqual({ status: 1, stdout: '', stderr: `nfqlb primebelow: ${message}\n` });
  });
});
