// `make bench` part `health`: what `nfqlb health` costs its own process. A router namespace
// holds a table of 32 targets whose fwmark routes lead to the lab's servers (each serving
// GET /healthz on the VIP), and the checker probes them all once a second, alone on LB_CPU.
// Rows: the same checker with an empty table (what it costs to be there at all), with 32 tcp
// probes and with 32 http probes. Each row is the checker's utime and stime over a window
// after its targets are up and its start-up is past; probes are counted by its own histogram
// (scraped before and after the window, so the scrapes stay outside it). On veth the servers'
// answers are processed in the softirq of the packet that caused them, on the checker's core
// and charged to it: its system time includes the router's and servers' kernel work of a probe.
import { type ChildProcess, execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { metricSum } from '../lab/health-tests.js';
import { binArgv, removeLabShm } from '../lab/lb-setup.js';
import { addFwmarkRoutes, serverFwmark } from '../lab/rules.js';
import { createTopology, serverAddr, VIP } from '../lab/topology.js';
import { VIP_PORT, VipServers } from '../lab/vip-servers.js';
import { CLK_TCK, fix, LB_CPU, type Lb, startLb, stopLb, userSystemTicks } from './measure.js';

const PREFIX = 'tbn-h-';
const SHM = `${PREFIX}targets`;
const NVM = 3;
const TARGETS = 32;
const METRICS_PORT = 9150;
/**
 * The window of each row (s): at 1% of a core a tick (10 ms) is 0.03% of a 30 s window. index.ts
 * refuses one below 1 before any part runs.
 */
export const WINDOW_S = Number(process.env.BENCH_HEALTH_SECONDS ?? 30);
/**
 * A checker's first half minute costs it up to three times its steady state (V8 compiling the probe
 * path as it gets hot, the heap growing): past it, the steady state is what a checker costs.
 */
const SETTLE_MS = 30_000;

interface Checker {
  label: string;
  /** The --health probe; no targets in the table when `targets` is 0. */
  health: string;
  targets: number;
}

const CHECKERS: readonly Checker[] = [
  { label: 'idle (no targets)', health: `http:${VIP_PORT}/healthz`, targets: 0 },
  { label: `tcp:${VIP_PORT}`, health: `tcp:${VIP_PORT}`, targets: TARGETS },
  { label: `http:${VIP_PORT}/healthz`, health: `http:${VIP_PORT}/healthz`, targets: TARGETS },
];

interface HealthRow {
  label: string;
  targets: number;
  probesPerS: number;
  /** % of a core. */
  user: number;
  system: number;
  /** Target state changes in the window: the targets are healthy, so any is a false one. */
  changes: number;
}

const nfqlb = (...args: string[]): void => {
  const [node, bin] = binArgv('nfqlb');
  execFileSync(node!, [bin!, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
};

function printHealthRows(rows: readonly HealthRow[]): void {
  const idle = rows[0]!;
  const idleCpu = idle.user + idle.system;
  console.log(`${'checker'.padEnd(22)}targets  probes/s   cpu %   user %  system %  µs/probe  marginal µs/probe  cpu×idle  notes`);
  for (const r of rows) {
    const cpu = r.user + r.system;
    /** CPU µs per probe from a share of a core. */
    const perProbe = (share: number): number | null => (r.probesPerS > 0 ? ((share / 100) * 1e6) / r.probesPerS : null);
    console.log(
      `${r.label.padEnd(22)}${fix(r.targets, 0, 7)}${fix(r.probesPerS, 1, 10)}${fix(cpu, 2, 8)}${fix(r.user, 2, 9)}` +
        `${fix(r.system, 2, 10)}${fix(perProbe(cpu), 0, 10)}${fix(perProbe(cpu - idleCpu), 0, 19)}` +
        `${fix(idleCpu > 0 ? cpu / idleCpu : null, 2, 10)}  ${r.changes > 0 ? `${r.changes} state changes` : ''}`,
    );
  }
}

export async function benchHealth(): Promise<void> {
  removeLabShm(PREFIX);
  const topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: 1 });
  const router = topo.ns.router(1);
  const procs: ChildProcess[] = [];
  let checker: Lb | null = null;
  try {
    // Fwmarks 101..132 lead to servers 1..3 in turn.
    const fwmarks = Array.from({ length: TARGETS }, (_, k) => serverFwmark(k + 1));
    addFwmarkRoutes(topo, router, (family) => fwmarks.map((fw, k) => [fw, serverAddr((k % NVM) + 1, family)] as const), [4]);
    await VipServers.start(topo, procs);
    const scrape = (): string => topo.exec(router, ['curl', '-sf', `http://127.0.0.1:${METRICS_PORT}/metrics`]);
    const rows: HealthRow[] = [];
    for (const c of CHECKERS) {
      nfqlb('init', `--shm=${SHM}`, `--N=${TARGETS}`);
      if (c.targets > 0) nfqlb('activate', `--shm=${SHM}`, ...fwmarks.slice(0, c.targets).map(String));
      const argv = [
        ...binArgv('nfqlb'),
        'health',
        `--shm=${SHM}`,
        `--vip=${VIP[4]}`,
        `--health=${c.health}`,
        '--hc_warmup=0',
        `--metrics=${METRICS_PORT}`,
      ];
      checker = await startLb(topo, router, argv, 'health checking');
      const pid = checker.proc.pid!;
      for (const deadline = Date.now() + 10_000; metricSum(scrape(), 'nfqlb_target_up') < c.targets; await sleep(100)) {
        if (Date.now() > deadline) throw new Error(`bench: ${c.label}: not every target came up: ${checker.output()}`);
      }
      await sleep(SETTLE_MS);
      const before = scrape();
      const [t0, a] = [performance.now(), userSystemTicks(pid)];
      await sleep(WINDOW_S * 1000);
      const [t1, b] = [performance.now(), userSystemTicks(pid)];
      const after = scrape();
      const secs = (t1 - t0) / 1000;
      const share = (ticks: number): number => (ticks / CLK_TCK / secs) * 100;
      const delta = (name: string): number => metricSum(after, name) - metricSum(before, name);
      rows.push({
        label: c.label,
        targets: c.targets,
        probesPerS: delta('nfqlb_health_probe_seconds_count') / secs,
        user: share(b.user - a.user),
        system: share(b.system - a.system),
        changes: delta('nfqlb_health_transitions_total'),
      });
      await stopLb(checker);
      checker = null;
    }
    console.log(
      `\nhealth: nfqlb health alone on cpu${LB_CPU}, probing through fwmark routes to ${NVM} servers once a second; ` +
        `${WINDOW_S} s per row; marginal = above the idle row, per probe`,
    );
    printHealthRows(rows);
  } finally {
    if (checker) await stopLb(checker);
    for (const p of procs) p.kill('SIGKILL');
    topo.destroy();
    removeLabShm(PREFIX);
  }
}
