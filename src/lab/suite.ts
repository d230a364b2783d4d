// The test suite of the original xcluster load-balancer overlay, on network namespaces:
// `nfqueue`, `ecmp`, ... (mconnect over IPv4 and IPv6 reaches every server), `*_scale`,
// `*_scale_in`, `*_scale_out` (100 long-lived ctraffic connections while servers are removed
// and added back; loss report and plot), `*_scale_lb` (the same for load-balancers behind ECMP
// on the tester) and `start_*` (leave the lab up for manual work). With `--bgp` the LBs sit
// behind a BGP gateway (./bgp.ts): `*_scale_lb` stops and starts the lb processes themselves and
// `nfqueue_crash_lb` kills one, and the gateway's routes follow. With `--registry` the LBs
// follow targets registered in etcd (./registry.ts); the `registry_*` tests
// (./registry-tests.ts) always run with it.
import { type ChildProcess, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ANNOUNCE_IF, BgpTier, bgpUnavailable, removeBirdFiles } from './bgp.js';
import { etcdUnavailable, removeEtcdFiles } from './etcd.js';
import { type HealthLab, type HealthOutcome, healthAllDown, healthPartition, healthRestart, healthTargetCrash } from './health-tests.js';
import { binArgv, createLb, type LabHandle, type LbKind, type LoadBalancer, lbUnavailable, removeLabShm, repoRoot } from './lb-setup.js';
import { connectionsSvg } from './plot.js';
import { DRAIN_MS, RegistryTier, SERVICE } from './registry.js';
import {
  PROPAGATION_TARGETS,
  type RegistryLab,
  type RegistryOutcome,
  registryEtcdFaults,
  registryLbRestart,
  registryPropagation,
  registryScale,
  registryTargetCrash,
  serverSlots,
  type TrafficControl,
} from './registry-tests.js';
import { lossReport, type ScaleEvent } from './report.js';
import type { Convergence, ScaleRun } from './runs.js';
import { CLIENT_CIDR, createTopology, destroyLab, type Family, type Topology, VIP, vmName } from './topology.js';
import type { MconnectResult } from './traffic/mconnect.js';
import { asStats } from './traffic/stats.js';
import { toolArgv } from './traffic/tools.js';

export type { Convergence, ScaleRun } from './runs.js';

type TestKind =
  | 'basic'
  | 'scale'
  | 'scale_in'
  | 'scale_out'
  | 'scale_lb'
  | 'crash_lb'
  | 'start'
  | 'target_crash'
  | 'etcd_faults'
  | 'lb_restart'
  | 'propagation'
  | 'health_target_crash'
  | 'health_partition'
  | 'health_all_down'
  | 'health_restart';

interface TestSpec {
  lb: LbKind;
  kind: TestKind;
  /** Runs with --registry (the LBs follow etcd) whether it is given or not. */
  registry?: boolean;
  /** Runs with --registry --health (every LB's follower checks the targets). */
  health?: boolean;
}

/** The tests, named as in the original load-balancer.sh. */
export const TESTS: Readonly<Record<string, TestSpec>> = {
  nfqueue: { lb: 'nfqueue', kind: 'basic' },
  nfqueue_scale: { lb: 'nfqueue', kind: 'scale' },
  nfqueue_scale_in: { lb: 'nfqueue', kind: 'scale_in' },
  nfqueue_scale_out: { lb: 'nfqueue', kind: 'scale_out' },
  nfqueue_scale_lb: { lb: 'nfqueue', kind: 'scale_lb' },
  nfqueue_crash_lb: { lb: 'nfqueue', kind: 'crash_lb' },
  ecmp: { lb: 'ecmp', kind: 'basic' },
  ecmp_scale: { lb: 'ecmp', kind: 'scale' },
  ecmp_scale_in: { lb: 'ecmp', kind: 'scale_in' },
  ecmp_scale_out: { lb: 'ecmp', kind: 'scale_out' },
  ecmp_scale_lb: { lb: 'ecmp', kind: 'scale_lb' },
  ipvs: { lb: 'ipvs', kind: 'basic' },
  ipvs_scale: { lb: 'ipvs', kind: 'scale' },
  xdp: { lb: 'xdp', kind: 'basic' },
  xdp_scale: { lb: 'xdp', kind: 'scale' },
  start_nfqueue: { lb: 'nfqueue', kind: 'start' },
  start_ecmp: { lb: 'ecmp', kind: 'start' },
  start_xdp: { lb: 'xdp', kind: 'start' },
  start_ipvs: { lb: 'ipvs', kind: 'start' },
  registry_scale: { lb: 'nfqueue', kind: 'scale', registry: true },
  registry_target_crash: { lb: 'nfqueue', kind: 'target_crash', registry: true },
  registry_etcd_faults: { lb: 'nfqueue', kind: 'etcd_faults', registry: true },
  registry_lb_restart: { lb: 'nfqueue', kind: 'lb_restart', registry: true },
  registry_propagation: { lb: 'nfqueue', kind: 'propagation', registry: true },
  health_target_crash: { lb: 'nfqueue', kind: 'health_target_crash', registry: true, health: true },
  health_partition: { lb: 'nfqueue', kind: 'health_partition', registry: true, health: true },
  health_all_down: { lb: 'nfqueue', kind: 'health_all_down', registry: true, health: true },
  health_restart: { lb: 'nfqueue', kind: 'health_restart', registry: true, health: true },
};

export interface LabOptions {
  /** Namespace prefix (also of the lab's shared memory tables). */
  prefix: string;
  nvm: number;
  /** Routers (load-balancers); the *_scale_lb tests need at least 2. */
  nrouters: number;
  /** Servers to scale (1..nvm), or routers as 201.. for *_scale_lb; default [1] or [201]. */
  scale?: number[];
  /** Address families of the ctraffic runs (mconnect always uses both). */
  families: Family[];
  nconn: number;
  /** ctraffic messages per second over all connections. */
  rate: number;
  /** Length of a ctraffic run; default 20 s for *_scale and *_scale_lb, 10 s otherwise. */
  durationMs?: number;
  /** Where stats, plots and process logs go. */
  outDir: string;
  /** nfqueue: only new connections through the queue (the original's xcluster_SYN_ONLY). */
  synOnly: boolean;
  /** nfqueue: nfqlb --conntrack with this many entries (0: stateless); a scale-in then drains. */
  conntrack?: number;
  /** Scale-in stops the servers (and removes them at once); scale-out starts them again. */
  stopServers?: boolean;
  /** Leave the lab up after a test (the original's --no-stop). */
  noStop: boolean;
  /** The LBs behind a BGP gateway (BIRD) instead of the tester's static ECMP route. */
  bgp?: boolean;
  /** ecmp: kernel resilient next-hop groups instead of hash-threshold multipath. */
  resilient?: boolean;
  /** nfqueue: the LBs follow targets registered in etcd (a 3-member cluster the lab starts). */
  registry?: boolean;
  /** With registry: `nfqlb follow --health` on every LB (probes to the VIPs on the servers' port 5001). */
  health?: boolean;
  /** Progress lines. */
  log(line: string): void;
}

export interface TestResult {
  test: string;
  ok: boolean;
  /** Why the test did not run (a missing kernel feature or build), if it did not. */
  unavailable?: string;
  /** Problems that made it fail. */
  problems: string[];
  mconnect: { family: Family; result: MconnectResult }[];
  runs: ScaleRun[];
  /** What a registry test measured, one line each. */
  figures: string[];
}

/** When the scale events of a test happen, as fractions of the run (the original's sleeps). */
const SCHEDULE: Record<'scale' | 'scale_in' | 'scale_out' | 'scale_lb' | 'crash_lb', { durationMs: number; at: number[] }> = {
  scale: { durationMs: 20_000, at: [0.25, 0.75] }, // in at 5 s, out at 15 s of 20 s (registry_scale too)
  scale_lb: { durationMs: 20_000, at: [0.25, 0.75] },
  crash_lb: { durationMs: 10_000, at: [0.4] }, // SIGKILL at 4 s of 10 s
  scale_in: { durationMs: 10_000, at: [0.4] }, // at 4 s of 10 s
  scale_out: { durationMs: 10_000, at: [0.4] }, // scaled in before the run, out at 4 s
};

const vipAddr = (family: Family, port: number): string => (family === 4 ? `${VIP[4]}:${port}` : `[${VIP[6]}]:${port}`);
const routerName = (i: number): string => vmName(200 + i);

/** Removes a lab left by `start_*`, `--no-stop` or a crash: namespaces, processes, shared memory. */
export function removeLab(prefix: string): void {
  destroyLab(prefix);
  removeLabShm(prefix);
  removeBirdFiles(prefix);
  removeEtcdFiles(prefix);
}

export const formatMs = (ms: Record<Family, number>): string => `IPv4 ${ms[4]} ms, IPv6 ${ms[6]} ms`;

/** LB tests: the targets are load-balancers (routers), not servers. */
const isLbKind = (kind: TestKind): boolean => kind === 'scale_lb' || kind === 'crash_lb';

/** A running lab: topology, servers, processes, and a load-balancer. */
class Lab implements LabHandle {
  readonly procs: ChildProcess[] = [];
  readonly topo: Topology;
  lb!: LoadBalancer;
  bgp: BgpTier | null = null;
  registry: RegistryTier | null = null;
  /** Routers in the tester's ECMP route. */
  private routersUp: number[];
  /** The traffic server process of each server, by number. */
  private readonly serverProcs = new Map<number, ChildProcess>();

  constructor(
    readonly o: LabOptions,
    readonly detached: boolean,
  ) {
    removeLabShm(o.prefix);
    this.topo = createTopology({ prefix: o.prefix, nvm: o.nvm, nrouters: o.nrouters });
    this.routersUp = Array.from({ length: o.nrouters }, (_, k) => k + 1);
  }

  async daemon(ns: string, argv: readonly string[], name: string, ready: string): Promise<ChildProcess> {
    const logFile = join(this.o.outDir, `${name}.log`);
    const fd = openSync(logFile, 'w');
    // Output to a file, not a pipe: a daemon of a lab left up outlives this process.
    const p = this.topo.spawn(ns, argv, { stdio: ['ignore', fd, fd], detached: this.detached });
    closeSync(fd);
    if (this.detached) p.unref();
    this.procs.push(p);
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (readFileSync(logFile, 'utf8').includes(ready)) return p;
      if (p.exitCode !== null || p.signalCode !== null || Date.now() > deadline) {
        const out = readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ');
        throw new Error(`${name}: '${argv.slice(1).join(' ')}' did not start in ${ns}: ${out || 'no output'}`);
      }
      await sleep(50);
    }
  }

  /** Starts the lab; with --registry the sidecars drain for `drainMs` after SIGTERM. */
  async start(kind: LbKind, drainMs: number): Promise<void> {
    const { topo, o } = this;
    for (let n = 1; n <= o.nvm; n++) await this.startServer(n);
    if (o.bgp) {
      this.bgp = new BgpTier(this);
      await this.bgp.start();
    } else {
      // Several routers: the tester spreads flows over them with ECMP, as the original's default route.
      topo.setTesterRoute(this.routersUp);
    }
    if (o.registry) {
      const registry = new RegistryTier(this, PROPAGATION_TARGETS, drainMs, o.health === true);
      this.registry = registry;
      await registry.start();
      o.log(`  registry: etcd ${registry.etcd.endpoints}, a sidecar per server, a follower per LB`);
    }
    const registry = this.registry;
    this.lb = createLb(kind, this, {
      synOnly: o.synOnly,
      resilient: o.resilient === true,
      announce: o.bgp ? ANNOUNCE_IF : undefined,
      conntrack: o.conntrack ?? 0,
      follow: registry ? (i) => registry.startFollower(i, serverSlots(o.nvm)) : undefined,
    });
    await this.lb.start();
    const t = Date.now();
    if (this.bgp) o.log(`  BGP: every LB announced, ${formatMs(await this.bgp.converge(this.routersUp.length, t))}`);
  }

  private async startServer(n: number): Promise<void> {
    const ns = this.topo.ns.server(n);
    this.serverProcs.set(n, await this.daemon(ns, [...toolArgv('server'), `--name=${vmName(n)}`], `${ns}-server`, 'listening'));
  }

  /** Ends the processes this lab started and removes it. */
  destroy(): void {
    for (const p of this.procs) {
      if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    removeLab(this.o.prefix);
  }

  mconnect(family: Family): MconnectResult {
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        this.topo.ns.tester,
        ...toolArgv('mconnect'),
        `--address=${vipAddr(family, 5001)}`,
        `--nconn=${this.o.nconn}`,
        `--srccidr=${CLIENT_CIDR[family]}`,
        '--output=json',
      ],
      { encoding: 'utf8' },
    );
    if (r.status !== 0 && r.status !== 1) throw new Error(`mconnect failed (${r.status}): ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as MconnectResult;
  }

  /**
   * Routers in the tester's ECMP route (scale_lb), lb processes behind the BGP gateway
   * (scale_lb, crash_lb with --bgp), or servers in the load-balancing; with --stop-servers the
   * servers are stopped (a crash: their connections break) and removed at once, and started
   * again before they are put back. With BGP, returns how long the gateway took to follow.
   */
  async scaleTargets(kind: TestKind, list: readonly number[], active: boolean): Promise<Convergence | null> {
    if (!isLbKind(kind)) {
      if (this.o.stopServers && active) for (const n of list) if (!this.serverProcs.has(n)) await this.startServer(n);
      if (this.o.stopServers && !active) for (const n of list) this.killServer(n);
      // Through the registry: the sidecars deregister (draining, then deleted) and register again.
      if (this.registry) {
        const registry = this.registry;
        if (active) await Promise.all(list.map((n) => registry.startSidecar(n)));
        else for (const n of list) registry.stopSidecar(n, 'SIGTERM');
      } else this.lb.setServers(list, active, this.o.stopServers === true);
      return null;
    }
    this.routersUp = active
      ? [...new Set([...this.routersUp, ...list])].sort((a, b) => a - b)
      : this.routersUp.filter((i) => !list.includes(i));
    if (!this.bgp) {
      this.topo.setTesterRoute(this.routersUp);
      return null;
    }
    const t = Date.now();
    const how = active ? 'lb started' : kind === 'crash_lb' ? 'lb SIGKILLed' : 'lb SIGTERMed';
    // A graceful stop withdraws first and drains for 2 s: the route changes long before the exit.
    const exits = active
      ? list.map((i) => this.lb.startRouter!(i))
      : list.map((i) => this.lb.stopRouter!(i, kind === 'crash_lb' ? 'SIGKILL' : 'SIGTERM'));
    // Timed when it happens: the route may change before the processes are done or after.
    const processDone = Promise.all(exits.map((e) => e.then(() => Date.now() - t)));
    const ms = await this.bgp.converge(this.routersUp.length, t);
    const processMs = Math.max(...(await processDone));
    this.o.log(`    gateway converged (${how} -> route changed): ${formatMs(ms)}`);
    return { kind: active ? 'scale-out' : 'scale-in', how, ms, processMs };
  }

  /** One ctraffic run with scale events at fixed times; returns the stats and the events. */
  async traffic(test: string, kind: Exclude<TestKind, 'basic' | 'start'>, family: Family, list: number[]): Promise<ScaleRun> {
    const { o } = this;
    const plan = SCHEDULE[kind as keyof typeof SCHEDULE];
    const names = list.map((n) => (isLbKind(kind) ? routerName(n) : vmName(n)));
    const kinds: ScaleEvent['kind'][] =
      kind === 'scale_out' ? ['scale-out'] : kind === 'scale_in' || kind === 'crash_lb' ? ['scale-in'] : ['scale-in', 'scale-out'];
    if (kind === 'scale_out') await this.scaleTargets(kind, list, false);
    const convergence: Convergence[] = [];
    const [run] = await this.runTraffic(test, [family], o.durationMs ?? plan.durationMs, !isLbKind(kind), async (c) => {
      for (const [k, frac] of plan.at.entries()) {
        await c.at(frac);
        const ev = kinds[k]!;
        c.mark(ev, names);
        const conv = await this.scaleTargets(kind, list, ev === 'scale-out');
        if (conv) convergence.push(conv);
      }
    });
    // The next run starts with all targets.
    if (kind === 'scale_in' || kind === 'crash_lb') await this.scaleTargets(kind, list, true);
    return { ...run!, convergence };
  }

  /**
   * ctraffic on each family at once for durationMs while `script` places the events; returns a
   * run (loss report, stats, plot) per family. idealByTargets: the targets are servers.
   */
  async runTraffic(
    test: string,
    families: readonly Family[],
    durationMs: number,
    idealByTargets: boolean,
    script: (c: TrafficControl) => Promise<void>,
  ): Promise<ScaleRun[]> {
    const { o, topo } = this;
    const clients = families.map((family) => {
      const base = join(o.outDir, `${test}-ipv${family}`);
      const statsFile = `${base}.json`;
      rmSync(statsFile, { force: true });
      const client = topo.spawn(
        topo.ns.tester,
        [
          ...toolArgv('ctraffic'),
          `--address=${vipAddr(family, 5003)}`,
          `--nconn=${o.nconn}`,
          `--rate=${o.rate}`,
          `--timeout=${durationMs}ms`,
          `--srccidr=${CLIENT_CIDR[family]}`,
          `--stats-file=${statsFile}`,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      this.procs.push(client);
      let stderr = '';
      client.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const exited = new Promise<number | null>((resolve) => client.once('close', (code) => resolve(code)));
      o.log(`  ctraffic IPv${family}: ${o.nconn} connections, ${o.rate} msg/s, ${durationMs / 1000} s`);
      return { family, base, statsFile, exited, stderr: () => stderr };
    });
    const spawned = Date.now();
    const wall: { at: number; kind: ScaleEvent['kind']; targets: string[] }[] = [];
    await script({
      at: (frac) => sleep(Math.max(0, spawned + frac * durationMs - Date.now())),
      mark: (kind, targets) => {
        const at = Date.now();
        o.log(`  t=${((at - spawned) / 1000).toFixed(1)}s ${kind} ${targets.join(' ')}`);
        wall.push({ at, kind, targets });
      },
    });
    const runs: ScaleRun[] = [];
    for (const c of clients) {
      const code = await c.exited;
      if (code !== 0 || !existsSync(c.statsFile)) throw new Error(`ctraffic IPv${c.family} exited (${code}): ${c.stderr().trim()}`);
      const stats = asStats(JSON.parse(readFileSync(c.statsFile, 'utf8')));
      const t0 = Date.parse(stats.started);
      const events = wall.map((w): ScaleEvent => ({ t: w.at - t0, kind: w.kind, targets: w.targets }));
      const plotFile = `${c.base}.svg`;
      const what = idealByTargets ? `${o.nvm} servers` : `${o.nrouters} load-balancers${o.bgp ? ' behind BGP' : ''}`;
      writeFileSync(plotFile, connectionsSvg(stats, events, { title: `${test} IPv${c.family}: ${o.nconn} connections, ${what}` }));
      runs.push({
        family: c.family,
        events,
        report: lossReport(stats, events, idealByTargets),
        nservers: idealByTargets ? o.nvm : o.nrouters,
        statsFile: c.statsFile,
        plotFile,
        convergence: [],
        maxDelay: stats.maxDelay,
      });
    }
    return runs;
  }

  /** SIGKILLs server n's traffic server (a crash: its connections break). */
  killServer(n: number): void {
    const p = this.serverProcs.get(n);
    this.serverProcs.delete(n);
    if (p?.pid !== undefined && p.exitCode === null) process.kill(p.pid, 'SIGKILL');
  }

  /** mconnect --rate on every family at once, in the background (the health tests' new connections). */
  private async connects(rate: number, durationMs: number): Promise<{ family: Family; result: MconnectResult }[]> {
    const { o, topo } = this;
    const runs = o.families.map(async (family) => {
      const argv = [
        ...toolArgv('mconnect'),
        `--address=${vipAddr(family, 5001)}`,
        `--nconn=${Math.round((rate * durationMs) / 1000)}`,
        `--rate=${rate}`,
        `--srccidr=${CLIENT_CIDR[family]}`,
        '--output=json',
      ];
      const p = topo.spawn(topo.ns.tester, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
      this.procs.push(p);
      let out = '';
      let err = '';
      p.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
      });
      p.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
      });
      const code = await new Promise<number | null>((resolve) => p.once('close', resolve));
      if (code !== 0 && code !== 1) throw new Error(`mconnect IPv${family} exited (${code}): ${err.trim()}`);
      return { family, result: JSON.parse(out) as MconnectResult };
    });
    return Promise.all(runs);
  }

  /** The log of router i's follower started last (the registry tier names them <ns>-follow-<start>). */
  private followerLog(i: number): string {
    const re = new RegExp(`^${this.topo.ns.router(i)}-follow-(\\d+)\\.log$`);
    const last = readdirSync(this.o.outDir)
      .map((f) => re.exec(f))
      .filter((m) => m !== null)
      .sort((a, b) => Number(b[1]) - Number(a[1]))[0];
    return last ? readFileSync(join(this.o.outDir, last[0]), 'utf8') : '';
  }

  /** The health tests' view of this lab. */
  healthLab(): HealthLab {
    const registry = this.registry;
    if (!registry || !this.o.health) throw new Error('the lab runs without --registry --health');
    return {
      topo: this.topo,
      registry,
      killServer: (n) => this.killServer(n),
      startServer: (n) => this.startServer(n),
      connects: (rate, durationMs) => this.connects(rate, durationMs),
      followerLog: (i) => this.followerLog(i),
      log: this.o.log,
    };
  }

  /** The registry tests' view of this lab. */
  registryLab(): RegistryLab {
    const { o } = this;
    const registry = this.registry;
    if (!registry) throw new Error('the lab runs without --registry');
    return {
      topo: this.topo,
      registry,
      lb: this.lb,
      families: o.families,
      conntrack: (o.conntrack ?? 0) > 0,
      log: o.log,
      traffic: (test, durationMs, script) => this.runTraffic(test, o.families, durationMs, true, script),
      killServer: (n) => this.killServer(n),
      mconnect: (family) => this.mconnect(family),
    };
  }
}

/**
 * Checks a test name and the options for it; returns what to scale: server numbers, or router
 * numbers 1.. (given as 201..) for *_scale_lb.
 */
export function checkTest(test: string, o: LabOptions): number[] {
  const spec = TESTS[test];
  if (!spec) throw new RangeError(`unknown test '${test}' (see 'lblab test --list')`);
  const isLb = isLbKind(spec.kind);
  if (isLb && o.nrouters < 2) throw new RangeError(`${test}: needs --nrouters >= 2 (load-balancers to scale)`);
  if (spec.kind === 'crash_lb' && !o.bgp)
    throw new RangeError(`${test}: needs --bgp (without a routing daemon nothing withdraws a dead LB)`);
  if (o.bgp && spec.lb !== 'nfqueue') throw new RangeError(`${test}: --bgp is for the nfqueue tests (the announcement follows 'nfqlb lb')`);
  if (o.resilient && spec.lb !== 'ecmp') throw new RangeError(`${test}: --resilient is for the ecmp tests`);
  if ((o.conntrack ?? 0) > 0 && spec.lb !== 'nfqueue') throw new RangeError(`${test}: --conntrack is for the nfqueue tests (nfqlb)`);
  if (o.health && !o.registry) throw new RangeError(`${test}: --health goes with --registry (nfqlb follow --health)`);
  if (o.registry && spec.lb !== 'nfqueue') throw new RangeError(`${test}: --registry is for the nfqueue tests (nfqlb follow)`);
  if (spec.kind === 'propagation' && o.nrouters < 2) throw new RangeError(`${test}: needs --nrouters >= 2 (LBs to compare)`);
  const list = o.scale ?? [isLb ? 201 : 1];
  const [lo, hi] = isLb ? [201, 200 + o.nrouters] : [1, o.nvm];
  for (const n of list) {
    if (!Number.isInteger(n) || n < lo || n > hi)
      throw new RangeError(`${test}: --scale ${n} is not a ${isLb ? 'router' : 'server'} (${lo}..${hi})`);
  }
  if (new Set(list).size >= hi - lo + 1 && spec.kind !== 'basic' && spec.kind !== 'start') {
    throw new RangeError(`${test}: --scale would remove every ${isLb ? 'router' : 'server'}`);
  }
  return isLb ? list.map((n) => n - 200) : list;
}

/** Shell lines for someone entering the lab by hand (printed by start_* and --no-stop). */
export function manualText(
  lab: { topo: Topology; lb: LoadBalancer; bgp?: BgpTier | null; registry?: RegistryTier | null },
  o: LabOptions,
): string {
  const { topo } = lab;
  const last = topo.ns.server(topo.nvm);
  const tool = (t: 'mconnect' | 'ctraffic'): string => toolArgv(t).join(' ');
  const lastRouter = topo.nrouters > 1 ? ` .. ${topo.ns.router(topo.nrouters)}` : '';
  return [
    `Lab '${o.prefix}' is up: ${lab.lb.kind}, ${topo.nvm} servers, ${topo.nrouters} router(s). Enter a namespace:`,
    `  ip netns exec ${topo.ns.tester} bash      # tester vm-221`,
    `  ip netns exec ${topo.ns.router(1)} bash      # load-balancer vm-201${lastRouter}`,
    `  ip netns exec ${topo.ns.server(1)} bash      # server vm-001${topo.nvm > 1 ? ` .. ${last}` : ''}`,
    'On the tester:',
    `  ${tool('mconnect')} --address=${vipAddr(4, 5001)} --nconn=100 --srccidr=${CLIENT_CIDR[4]}`,
    `  ${tool('mconnect')} --address=${vipAddr(6, 5001)} --nconn=100 --srccidr=${CLIENT_CIDR[6]}`,
    `  ${tool('ctraffic')} --address=${vipAddr(4, 5003)} --nconn=100 --rate=100 --timeout=30s --srccidr=${CLIENT_CIDR[4]} --monitor`,
    ...lab.lb.manual().map((l) => `  ${l}`),
    ...(lab.bgp
      ? [
          '  # The BGP tier: the gateway (tester) learns one multipath route; each BIRD has its own socket:',
          `  ip -n ${topo.ns.tester} route show ${VIP[4]}/32; ip -n ${topo.ns.tester} -6 route show ${VIP[6]}/128`,
          `  birdc -s ${lab.bgp.socket('gateway')} show protocols; birdc -s ${lab.bgp.socket('lb-201')} show route`,
        ]
      : []),
    ...(lab.registry ? registryManual(lab.registry) : []),
    `Logs: ${o.outDir}/*.log`,
    `Remove the lab: ${process.execPath} ${join(repoRoot(), 'bin', 'lblab.js')} down --prefix=${o.prefix}`,
  ].join('\n');
}

/** How to look at and change the registry by hand (a lab with --registry). */
function registryManual(r: RegistryTier): string[] {
  const nfqlb = binArgv('nfqlb').join(' ');
  const ns = r.etcd.operatorNs;
  return [
    `  # The registry: etcd ${r.etcd.endpoints}; the operator (writer) works in ${ns}:`,
    `  ip netns exec ${ns} ${nfqlb} registry show --service=${SERVICE} ${r.etcd.clientOptions('reader').join(' ')}`,
    `  ip netns exec ${ns} ${nfqlb} registry drain --service=${SERVICE} --slot=1 ${r.etcd.clientOptions('writer').join(' ')}`,
  ];
}

/** Runs one test; the lab is removed afterwards unless it is a start_* test or noStop is set. */
export async function runTest(test: string, options: LabOptions): Promise<TestResult> {
  if (TESTS[test]?.health) return (await runHealthTests([test], options))[0]!;
  // The registry tests run with --registry whether it is given or not.
  const o = TESTS[test]?.registry ? { ...options, registry: true } : options;
  const list = checkTest(test, o);
  const spec = TESTS[test]!;
  const result: TestResult = { test, ok: false, problems: [], mconnect: [], runs: [], figures: [] };
  const unavailable = lbUnavailable(spec.lb) ?? (o.bgp ? bgpUnavailable() : null) ?? (o.registry ? etcdUnavailable() : null);
  if (unavailable) {
    result.unavailable = unavailable;
    return result;
  }
  mkdirSync(o.outDir, { recursive: true });
  const keep = spec.kind === 'start' || o.noStop;
  const lab = new Lab(o, keep);
  let started = false;
  try {
    await lab.start(spec.lb, sidecarDrainMs(spec.kind, o));
    started = true;
    if (spec.kind === 'start') {
      result.ok = true;
      return result;
    }
    const outcome = spec.registry ? await runRegistryTest(lab.registryLab(), test, spec.kind, list, o.durationMs) : null;
    if (outcome) {
      result.figures.push(...outcome.figures);
      result.problems.push(...outcome.problems);
      result.runs.push(...outcome.runs);
    } else if (spec.kind === 'basic') {
      for (const family of [4, 6] as const) {
        const r = lab.mconnect(family);
        result.mconnect.push({ family, result: r });
        if (r.failed_connects + r.failed_reads > 0)
          result.problems.push(`IPv${family}: ${r.failed_connects} failed connects, ${r.failed_reads} failed reads`);
        const missed = Array.from({ length: o.nvm }, (_, k) => vmName(k + 1)).filter((h) => !r.hosts[h]);
        if (missed.length > 0) result.problems.push(`IPv${family}: servers not reached: ${missed.join(' ')}`);
      }
    } else {
      for (const family of o.families) {
        const run = await lab.traffic(test, spec.kind, family, list);
        result.runs.push(run);
        if (run.report.neverConnected > 0) result.problems.push(`IPv${family}: ${run.report.neverConnected} connections never connected`);
        if (run.report.lostBefore > 0) result.problems.push(`IPv${family}: ${run.report.lostBefore} connections lost before any scaling`);
        // Behind BGP a stateless tier loses nothing when an LB leaves or comes back, however it leaves.
        const lost = run.report.phases.reduce((n, p) => n + p.lost, 0);
        if (o.bgp && isLbKind(spec.kind) && lost > 0) result.problems.push(`IPv${family}: ${lost} connections lost (expected 0)`);
        // A resilient group moves only the removed next-hop's buckets: the ideal, give or take a few.
        const scaleIn = run.report.phases.find((p) => p.event.kind === 'scale-in');
        if (o.resilient && scaleIn && scaleIn.lost > scaleIn.ideal + 5) {
          result.problems.push(
            `IPv${family}: scale-in lost ${scaleIn.lost}, more than the ideal ${scaleIn.ideal} + 5 (resilient next-hops)`,
          );
        }
      }
    }
    result.ok = result.problems.length === 0;
    return result;
  } finally {
    lab.registry?.close();
    if (keep && started) o.log(manualText(lab, o));
    else lab.destroy();
  }
}

/** Run lengths of the registry tests with traffic (--duration overrides them). */
const REGISTRY_DURATION: Partial<Record<TestKind, number>> = { scale: 20_000, etcd_faults: 16_000, lb_restart: 10_000 };

/**
 * The sidecars' drain. With --conntrack as long as the test's run: a target that leaves and
 * comes back within the run (a rolling restart) is still draining when its new sidecar takes its
 * registration over, so it keeps every connection. Stateless, a second.
 */
function sidecarDrainMs(kind: TestKind, o: LabOptions): number {
  if (!o.conntrack) return DRAIN_MS;
  const run = o.durationMs ?? REGISTRY_DURATION[kind] ?? (SCHEDULE as Partial<Record<TestKind, { durationMs: number }>>)[kind]?.durationMs;
  return Math.max(DRAIN_MS, run ?? 0);
}

async function runRegistryTest(
  lab: RegistryLab,
  test: string,
  kind: TestKind,
  list: number[],
  durationMs: number | undefined,
): Promise<RegistryOutcome> {
  const d = durationMs ?? REGISTRY_DURATION[kind] ?? 0;
  switch (kind) {
    case 'scale':
      return registryScale(lab, test, d, list);
    case 'target_crash':
      return registryTargetCrash(lab, list[0]!);
    case 'etcd_faults':
      return registryEtcdFaults(lab, test, d, list[0]!);
    case 'lb_restart':
      return registryLbRestart(lab, test, d);
    case 'propagation':
      return registryPropagation(lab);
    default:
      throw new Error(`${test}: not a registry test`);
  }
}

/**
 * Runs health_* tests one after the other on one lab (--registry --health, implied); each starts
 * from every target up and in every table. The lab is removed afterwards unless noStop is set.
 */
export async function runHealthTests(tests: readonly string[], options: LabOptions): Promise<TestResult[]> {
  const o = { ...options, registry: true, health: true };
  const lists = tests.map((test) => {
    if (!TESTS[test]?.health) throw new RangeError(`${test}: not a health test`);
    return checkTest(test, o);
  });
  const results = tests.map((test): TestResult => ({ test, ok: false, problems: [], mconnect: [], runs: [], figures: [] }));
  const unavailable = lbUnavailable('nfqueue') ?? etcdUnavailable();
  if (unavailable) {
    for (const r of results) r.unavailable = unavailable;
    return results;
  }
  mkdirSync(o.outDir, { recursive: true });
  const lab = new Lab(o, o.noStop);
  let started = false;
  try {
    await lab.start('nfqueue', DRAIN_MS);
    started = true;
    const h = lab.healthLab();
    for (const [k, r] of results.entries()) {
      const n = lists[k]![0]!;
      o.log(`  ${r.test}`);
      let outcome: HealthOutcome;
      try {
        outcome = await runHealthTest(h, TESTS[r.test]!.kind, n);
      } catch (e) {
        outcome = { figures: [], problems: [(e as Error).message] };
      }
      r.figures.push(...outcome.figures);
      r.problems.push(...outcome.problems);
      r.ok = r.problems.length === 0;
    }
    return results;
  } finally {
    lab.registry?.close();
    if (o.noStop && started) o.log(manualText(lab, o));
    else lab.destroy();
  }
}

function runHealthTest(lab: HealthLab, kind: TestKind, n: number): Promise<HealthOutcome> {
  switch (kind) {
    case 'health_target_crash':
      return healthTargetCrash(lab, n);
    case 'health_partition':
      return healthPartition(lab, n);
    case 'health_all_down':
      return healthAllDown(lab);
    case 'health_restart':
      return healthRestart(lab);
    default:
      throw new Error(`not a health test (${kind})`);
  }
}
