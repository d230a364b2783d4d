// nfqlb flowlb through the kernel: flows set over the flow channel steer real TCP connections
// to different target tables by port, source CIDR, priority and byte match; no match means
// --nolb_fwmark; flow-list reports counts; the channel works over tcp too (with the control key)
// and refuses non-root peers on the unix socket; with several queues each has a worker thread.

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Family, vmName as hostName, type Topology, VIP } from '../../src/lab/topology.js';
import { kernelQueueStats } from '../../src/nfqueue.js';
import {
  createNfqueueLab,
  type Daemon,
  type MconnectResult,
  mconnect as mconnectFrom,
  NFQLB,
  nfqlb,
  nfqlbIn,
  nfqueueTarget,
  queueEventLoops,
  type RunResult,
  requireBuild,
  sources,
  startDaemon,
  tearDownLab,
} from './harness.js';

const PREFIX = 'tfl-';
const NVM = 4;
// Two target tables: servers 1-2 and servers 3-4.
const WEB = 'tfl-web';
const OTHER = 'tfl-other';
const FT_SHM = 'tfl-ftflow';
const KEY_DIR = mkdtempSync(join(tmpdir(), 'tfl-key-'));
const KEY = join(KEY_DIR, 'control.key');

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

/** Runs an nfqlb command in the router namespace (the flow channel is per namespace). */
function inRouter(args: string[], env: Record<string, string> = {}, user: 'root' | 'nobody' = 'root'): RunResult {
  return nfqlbIn(router, args, { env, user });
}

function flowSet(...args: string[]): string {
  const r = inRouter(['flow-set', ...args]);
  expect(r.stdout, r.stderr).toBe('OK\n');
  return r.stdout;
}

function startFlowLb(env: Record<string, string>, ...args: string[]): Promise<Daemon> {
  const lb = topo.spawn(router, [
    'env',
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    'node',
    NFQLB,
    'flowlb',
    `--ft_shm=${FT_SHM}`,
    ...args,
  ]);
  procs.push(lb);
  return startDaemon(lb);
}

const mconnect = (family: Family, srccidr: string, nconn = 20, timeout = '3s') => mconnectFrom(topo, family, { srccidr, nconn, timeout });
const hostsOf = (r: MconnectResult) => Object.keys(r.hosts).sort();

// In the tester: one connection to the VIP's port 5001 from each source address given; prints
// { "<src>": "<server name>" | null }.
const CONNECT_JS = `
import { connect } from 'node:net';
const [vip, ...srcs] = process.argv.slice(1);
const one = (localAddress) => new Promise((resolve) => {
  const c = connect({ host: vip, port: 5001, localAddress });
  let data = '';
  const timer = setTimeout(() => c.destroy(), 3000);
  c.setEncoding('utf8');
  c.on('data', (d) => (data += d));
  c.on('error', () => {});
  c.on('close', () => { clearTimeout(timer); resolve(data.trim() || null); });
});
console.log(JSON.stringify(Object.fromEntries(await Promise.all(srcs.map(async (s) => [s, await one(s)])))));`;

/** The server each source's connection to the IPv4 VIP reached (null: none answered). */
function serverBySource(srcs: readonly string[]): Record<string, string | null> {
  const out = topo.exec(topo.ns.tester, ['node', '--input-type=module', '-e', CONNECT_JS, VIP[4], ...srcs]);
  return JSON.parse(out) as Record<string, string | null>;
}

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  nfqlb('init', `--shm=${WEB}`, '--M=997', '--N=10');
  nfqlb('activate', `--shm=${WEB}`, '101', '102');
  nfqlb('init', `--shm=${OTHER}`, '--M=997', '--N=10');
  nfqlb('activate', `--shm=${OTHER}`, '103', '104');
});

afterAll(() => {
  const leftover = tearDownLab(PREFIX, topo, procs, [WEB, OTHER, FT_SHM]);
  rmSync(KEY_DIR, { recursive: true, force: true });
  expect(leftover).toEqual([]);
});

describe('nfqlb flowlb', () => {
  it('steers connections by flow, priority, source CIDR and byte match; lists and deletes flows', async () => {
    const lb = await startFlowLb({});
    try {
      // No flow: --nolb_fwmark defaults to drop.
      expect(mconnect(4, '50.0.1.0/24', 5, '1s').failed_connects).toBe(5);

      flowSet('--name=web', `--target=${WEB}`, '--prio=10', '--protocols=tcp', '--dports=5001', '--dsts=10.0.0.0/24,1000::/120');
      for (const family of [4, 6] as const) {
        const r = mconnect(family, family === 4 ? '50.0.1.0/24' : '2000::100/120');
        expect(r.failed_connects + r.failed_reads).toBe(0);
        expect(hostsOf(r)).toEqual([hostName(1), hostName(2)]);
      }

      // A higher priority flow with a byte match (TCP destination port 5001) for one source range.
      flowSet(
        '--name=special',
        `--target=${OTHER}`,
        '--prio=20',
        '--protocols=tcp',
        '--srcs=50.0.2.0/24',
        '--match=tcp[2:2] = 5001,tcp[0:4] & 0x0000ffff = 5001',
      );
      const special = mconnect(4, '50.0.2.0/24');
      expect(special.failed_connects + special.failed_reads).toBe(0);
      expect(hostsOf(special)).toEqual([hostName(3), hostName(4)]);
      expect(hostsOf(mconnect(4, '50.0.1.0/24'))).toEqual([hostName(1), hostName(2)]);

      // A byte match that does not hold leaves the packets to the next flow.
      flowSet('--name=special', `--target=${OTHER}`, '--prio=20', '--protocols=tcp', '--srcs=50.0.2.0/24', '--match=tcp[2:2] = 5002');
      expect(hostsOf(mconnect(4, '50.0.2.0/24'))).toEqual([hostName(1), hostName(2)]);

      const names = JSON.parse(inRouter(['flow-list-names']).stdout) as string[];
      expect(names).toEqual(['special', 'web']);
      const list = JSON.parse(inRouter(['flow-list']).stdout) as Record<string, unknown>[];
      expect(list[1]).toMatchObject({
        name: 'web',
        priority: 10,
        protocols: ['tcp'],
        dests: ['::ffff:10.0.0.0/120', '1000::/120'],
        dports: ['5001'],
        user_ref: WEB,
      });
      expect(list[0]).toMatchObject({ name: 'special', match: ['tcp[2:2]=0x138a'], srcs: ['::ffff:50.0.2.0/120'] });
      // Every packet of a connection is counted (SYN, ACKs, FIN): at least 3 per connection.
      expect(list[1]!.matches_count as number).toBeGreaterThanOrEqual(3 * 80);
      const one = JSON.parse(inRouter(['flow-list', '--name=web']).stdout) as Record<string, unknown>;
      expect(one.name).toBe('web');

      expect(inRouter(['flow-delete', '--name=web']).stdout).toBe('OK\n');
      expect(inRouter(['flow-delete', '--name=special']).stdout).toBe('OK\n');
      expect(JSON.parse(inRouter(['flow-list']).stdout)).toEqual([]);
      expect(mconnect(6, '2000::100/120', 5, '1s').failed_connects).toBe(5);
    } finally {
      await lb.stop();
    }
  });

  it('hashes a flow without protocols on addresses; --nolb_fwmark catches the rest', async () => {
    const lb = await startFlowLb({}, '--nolb_fwmark=104');
    try {
      const none = mconnect(6, '2000::200/120', 10);
      expect(none.hosts).toEqual({ [hostName(4)]: 10 });
      flowSet('--name=all', `--target=${WEB}`, '--srcs=50.0.3.0/24');
      // Address-only hash: each connection reaches the server of the fwmark nfqlb computes for
      // its addresses without a protocol (a source port in the key would move about half).
      const srcs = sources(4, 16, 3);
      const got = serverBySource(srcs);
      const want = Object.fromEntries(
        srcs.map((src) => {
          const { fwmark } = JSON.parse(nfqlb('fwmark', `--shm=${WEB}`, `--src=${src}`, `--dst=${VIP[4]}`)) as { fwmark: number };
          return [src, hostName(fwmark - 100)];
        }),
      );
      expect(got).toEqual(want);
      expect(new Set(Object.values(got))).toEqual(new Set([hostName(1), hostName(2)]));
    } finally {
      await lb.stop();
    }
  });

  it('serves the flow channel on a tcp address and refuses non-root peers on the unix socket', async () => {
    // The lb creates the control key the tcp client must present; here in a file of the test's own.
    const env = { NFQLB_FLOW_ADDRESS: 'tcp:[::1]:10033', NFQLB_CONTROL_KEY: KEY };
    const lb = await startFlowLb(env);
    try {
      const set = inRouter(['flow-set', '--name=t', `--target=${WEB}`, '--protocols=udp,tcp'], env);
      expect(set.stdout).toBe('OK\n');
      expect(JSON.parse(inRouter(['flow-list-names'], env).stdout)).toEqual(['t']);
      const bad = inRouter(['flow-set', '--name=t2', '--target=tfl-none'], env);
      expect(bad.stdout).toBe("FAIL: Couldn't create load-balancer\n");
      expect(bad.status).toBe(1);
      const refused = inRouter(['flow-list-names']);
      expect(refused.status).toBe(1);
      expect(refused.stderr).toMatch(/Connect failed/);
    } finally {
      await lb.stop();
    }
    const lb2 = await startFlowLb({});
    try {
      const nobody = inRouter(['flow-list-names'], {}, 'nobody');
      expect(nobody.status).toBe(1);
      expect(nobody.stderr).toMatch(/refused the request: root only/);
      expect(JSON.parse(inRouter(['flow-list-names']).stdout)).toEqual([]);
      // Client-side checks, as the reference's: one line, non-zero, nothing sent.
      const noProto = inRouter(['flow-set', '--name=x', `--target=${WEB}`, '--dports=80']);
      expect(noProto.status).toBe(1);
      expect(noProto.stderr).toMatch(/ports specified without protocols/);
      const encap = inRouter(['flow-set', '--name=x', `--target=${WEB}`, '--protocols=tcp', '--udpencap=9899']);
      expect(encap.stderr).toMatch(/udpencap specified without sctp/);
      const badMatch = inRouter(['flow-set', '--name=x', `--target=${WEB}`, '--match=tcp[40:2] = 1']);
      expect(badMatch.stdout).toMatch(/^FAIL: match out of bounds/);
    } finally {
      await lb2.stop();
    }
  });

  it('serves flows on several queues (one worker each) and sums their matches', async () => {
    nfqueueTarget(topo, router, '--queue-balance', '0:1');
    const lb = await startFlowLb({}, '--queue=0:1');
    try {
      flowSet('--name=web', `--target=${WEB}`, '--protocols=tcp');
      for (const family of [4, 6] as const) {
        const r = mconnect(family, family === 4 ? '50.0.4.0/24' : '2000::400/120', 40);
        expect(r.failed_connects + r.failed_reads).toBe(0);
        expect(hostsOf(r)).toEqual([hostName(1), hostName(2)]);
      }
      // Both queues saw packets: their last packet ids grew.
      const proc = topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']);
      for (const q of [0, 1]) expect(kernelQueueStats(q, proc)?.idSequence, `queue ${q}`).toBeGreaterThan(0);
      // Each queue's socket is watched by one event loop, and not the same one: a thread each.
      const loops = queueEventLoops(topo, router, lb.proc.pid!, [0, 1]);
      expect(loops.map((l) => l.length)).toEqual([1, 1]);
      expect(loops[0]![0]).not.toBe(loops[1]![0]);
      const [flow] = JSON.parse(inRouter(['flow-list']).stdout) as { matches_count: number }[];
      expect(flow!.matches_count).toBeGreaterThanOrEqual(3 * 80);
    } finally {
      await lb.stop();
      nfqueueTarget(topo, router, '--queue-num', '2');
    }
  });
});
