// `nfqlb follow --health` in a tier: three LBs (routers of a lab, each routing fwmark 100+n to
// server n), one etcd, every LB following the service and publishing its health view. A target
// down for every LB leaves every table; a target that one LB alone cannot reach (its probes
// dropped in that LB's namespace) stays in every table, and that LB reports the disagreement.
// etcd listens on loopback in router 1; routers 2 and 3 reach it through a relay over a unix
// socket (the namespaces share the file system, not the network).
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addFwmarkRoutes, serverFwmark } from '../../src/lab/rules.js';
import { createTopology, serverAddr, type Topology, VIP } from '../../src/lab/topology.js';
import { VIP_PORT, VipServers } from '../../src/lab/vip-servers.js';
import { NFQLB_TABLE, TargetStore } from '../../src/target-store.js';
import { waitFor } from '../wait.js';
import { EtcdFixture } from './etcd-fixture.js';
import { type Daemon, httpGet, NFQLB, nfqlbIn, requireBuild, Scrape, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'thc-t';
const NVM = 3;
const LBS = [1, 2, 3] as const;
const shm = (lb: number): string => `thc-t-lb${lb}`;
const metricsPort = (lb: number): number => 9210 + lb;

// Relays TCP between `listen` and `to`: each a port on loopback or a unix socket path.
const RELAY_JS = `
const net = require('net');
const [listen, to] = process.argv.slice(1).map((a) => (/^\\d+$/.test(a) ? { port: Number(a), host: '127.0.0.1' } : { path: a }));
net.createServer((c) => {
  const u = net.connect(to);
  c.pipe(u).pipe(c);
  c.on('error', () => u.destroy());
  u.on('error', () => c.destroy());
}).listen(listen, () => console.log('relaying'));`;

let topo: Topology | undefined;
let etcd: EtcdFixture | undefined;
let dir: string;
let servers: VipServers;
const procs: ChildProcess[] = [];
const followers: Daemon[] = [];

const router = (lb: number): string => topo!.ns.router(lb);
const scrape = (lb: number): Scrape => new Scrape(httpGet(topo!, router(lb), metricsPort(lb), '/metrics').body);
/** The active fwmarks of LB lb's table. */
const active = (lb: number): number[] => [...TargetStore.open(NFQLB_TABLE, shm(lb)).table.active].filter((fw) => fw >= 0);

function writer(args: string[]): void {
  const [cmd, ...rest] = args;
  const r = nfqlbIn(
    router(1),
    cmd === 'registry' ? ['registry', rest[0]!, ...etcd!.writer, ...rest.slice(1)] : [cmd!, ...etcd!.writer, ...rest],
  );
  expect(r.status, r.stderr).toBe(0);
}

/** Drops LB lb's probes to the VIPs with fwmark `fw` (`-A`), or lets them through again (`-D`). */
function dropProbes(lb: number, fw: number, op: '-A' | '-D'): void {
  for (const [cmd, vip] of [
    ['iptables', VIP[4]],
    ['ip6tables', VIP[6]],
  ] as const) {
    topo!.exec(router(lb), [cmd, op, 'OUTPUT', '-d', vip, '-m', 'mark', '--mark', String(fw), '-j', 'DROP']);
  }
}

beforeAll(async () => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: LBS.length });
  for (const lb of LBS) {
    addFwmarkRoutes(topo, router(lb), (family) =>
      Array.from({ length: NVM }, (_, k) => [serverFwmark(k + 1), serverAddr(k + 1, family)] as const),
    );
  }
  servers = await VipServers.start(topo, procs);
  etcd = await EtcdFixture.create(router(1), 'thc-t-etcd-');
  dir = mkdtempSync(join(tmpdir(), 'thc-t-'));
  const sock = join(dir, 'etcd.sock');
  const relays = [topo.spawn(router(1), ['node', '-e', RELAY_JS, sock, '2379'])];
  for (const lb of LBS.slice(1)) relays.push(topo.spawn(router(lb), ['node', '-e', RELAY_JS, '2379', sock]));
  procs.push(...relays);
  for (const r of relays) await startDaemon(r, 'relaying');
  writer(['registry', 'init', '--service=web', '--M=97', '--N=8']);
  for (let n = 1; n <= NVM; n++) writer(['register', '--service=web', `--fwmark=${serverFwmark(n)}`, `--slot=${n - 1}`]);
  for (const lb of LBS) {
    const argv = ['node', NFQLB, 'follow', ...etcd.writer, '--service=web', `--shm=${shm(lb)}`, `--metrics=${metricsPort(lb)}`];
    const health = [`--health=tcp:${VIP_PORT}`, `--vip=${VIP[4]},${VIP[6]}`, `--lb=lb${lb}`, '--hc_warmup=0'];
    const proc = topo.spawn(router(lb), [...argv, ...health]);
    procs.push(proc);
    followers.push(await startDaemon(proc, '"msg":"following"'));
  }
  await waitFor('every LB to see every target up', () => LBS.every((lb) => scrape(lb).sum('nfqlb_target_up') === NVM));
}, 120_000);

afterAll(async () => {
  for (const f of followers) await f.stop();
  await etcd?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  const left = tearDownLab(PREFIX, topo, procs, LBS.map(shm));
  expect(left).toEqual([]);
});

describe('nfqlb follow --health', () => {
  it('takes a target that every LB sees down out of every table, and puts it back when it rises', async () => {
    const all = [101, 102, 103];
    for (const lb of LBS) expect(active(lb)).toEqual(all);
    const t0 = Date.now();
    await servers.vipListener(1, 'close', 4);
    await waitFor('101 out of every table', () => LBS.every((lb) => !active(lb).includes(101)), { timeout: 8000 });
    console.log(`health tier: target down for all 3 LBs -> out of every table in ${Date.now() - t0} ms`);
    for (const lb of LBS) {
      expect(active(lb)).toEqual([102, 103]);
      expect(TargetStore.open(NFQLB_TABLE, shm(lb)).draining()).toEqual([101]);
    }
    const t1 = Date.now();
    await servers.vipListener(1, 'open', 4);
    await waitFor('101 back in every table', () => LBS.every((lb) => active(lb).includes(101)), { timeout: 8000 });
    console.log(`health tier: target up again -> back in every table in ${Date.now() - t1} ms`);
    for (const lb of LBS) expect(active(lb)).toEqual(all);
    // The tier puts it back once a majority sees it up; the last LB agrees at its own rise.
    await waitFor('every LB to agree again', () => LBS.every((lb) => scrape(lb).sum('nfqlb_health_disagreement') === 0), {
      timeout: 5000,
    });
  });

  it('keeps a target that one LB alone cannot reach, and that LB reports the disagreement', async () => {
    const tables = LBS.map((lb) => TargetStore.open(NFQLB_TABLE, shm(lb)).table.lookup.join());
    const logged = followers[2]!.output().length;
    const t0 = Date.now();
    dropProbes(3, 102, '-A');
    try {
      await waitFor('LB 3 to report the disagreement', () => scrape(3).sum('nfqlb_health_disagreement', { service: 'web' }) === 1, {
        timeout: 8000,
      });
      console.log(`health tier: one LB's path to a target cut -> disagreement reported in ${Date.now() - t0} ms, no table changed`);
      expect(Date.now() - t0).toBeLessThanOrEqual(3500 + 1000);
      expect(scrape(3).sum('nfqlb_target_up', { fwmark: '102' })).toBe(0);
      for (const lb of [1, 2]) {
        expect(scrape(lb).sum('nfqlb_target_up', { fwmark: '102' })).toBe(1);
        expect(scrape(lb).sum('nfqlb_health_disagreement')).toBe(0);
      }
      expect(LBS.map((lb) => TargetStore.open(NFQLB_TABLE, shm(lb)).table.lookup.join())).toEqual(tables);
      // The warning is logged with the gauge's change but reaches this process through a pipe.
      await waitFor('LB 3 to log the disagreement on 102', () =>
        followers[2]!
          .output()
          .slice(logged)
          .split('\n')
          .some(
            (l) => l.includes('"fwmark":102') && l.includes('health views disagree: target down here, up for the majority of LBs: kept'),
          ),
      );
    } finally {
      dropProbes(3, 102, '-D');
    }
    await waitFor('the disagreement to end', () => scrape(3).sum('nfqlb_health_disagreement') === 0, { timeout: 8000 });
    expect(LBS.map((lb) => TargetStore.open(NFQLB_TABLE, shm(lb)).table.lookup.join())).toEqual(tables);
  });
});
