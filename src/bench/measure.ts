// What every traffic row of `make bench` measures over one window, and how it is printed.
//
// Cores: the traffic generator (and iperf, and the bench itself) run on GEN_CPU, the lb
// process alone on LB_CPU (`taskset` at spawn, so every thread it starts later inherits it).
// Over the window: offered = packets the tester's eth1 sent, received = packets that arrived
// on the server's eth1, lb CPU per packet = the lb's utime+stime (all threads, /proc/<pid>/stat)
// over received packets, core busy = each core's non-idle share (/proc/stat). Without
// IRQ time accounting the kernel charges softirq work to the task it interrupted, so the lb's
// time includes the forwarding its verdicts and transmits trigger.

import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Topology } from '../lab/topology.js';

export const GEN_CPU = 0;
export const LB_CPU = 1;
export const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
/** A generator's start-up (node, socket set-up) stays out of the window. */
const WARMUP_MS = 1000;
export const CLK_TCK = 100; // USER_HZ, the unit of /proc/stat and /proc/<pid>/stat
/** received ≥ 98% of offered: the lb kept up, so the row measures the generator. */
const GENERATOR_BOUND = 0.98;
/** Busy points on the lb's core beyond the lb's own time that make a row say its core was shared. */
const SHARED_LB_CPU = 10;

/** argv that runs `argv` on one core; threads started later inherit the affinity. */
export function onCpu(cpu: number, argv: readonly string[]): string[] {
  return ['taskset', '-c', String(cpu), ...argv];
}

export function checkCpus(): void {
  const online = readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d/.test(l)).length;
  if (online <= Math.max(GEN_CPU, LB_CPU)) {
    throw new Error(`bench: needs CPUs ${GEN_CPU} (generator) and ${LB_CPU} (lb); this machine has ${online}`);
  }
}

/** utime and stime in ticks of one process (all its threads). */
export function userSystemTicks(pid: number): { user: number; system: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(f[11]), system: Number(f[12]) };
}

/** utime+stime in ticks of a process (all its threads) and of its running descendants. */
export function processTicks(pid: number): number {
  let ticks = 0;
  try {
    const { user, system } = userSystemTicks(pid);
    ticks = user + system;
    for (const child of readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ')) {
      if (child.trim()) ticks += processTicks(Number(child));
    }
  } catch {
    /* exited meanwhile */
  }
  return ticks;
}

/** [busy, total] ticks per core (idle and iowait are not busy). */
function coreTicks(): Array<[number, number]> {
  return readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d/.test(l))
    .map((l) => {
      const f = l.trim().split(/\s+/).slice(1, 9).map(Number); // user nice system idle iowait irq softirq steal
      const total = f.reduce((a, b) => a + b, 0);
      return [total - f[3]! - f[4]!, total];
    });
}

/** Where a window's counters are read. */
export interface Probe {
  topo: Topology;
  /** The lb process, or null for kernel forwarding. */
  lb: ChildProcess | null;
  /** The traffic generator, when it runs as long as the window (the UDP floods). */
  gen?: ChildProcess;
  /** An extra counter of the path, e.g. NFQUEUE drops (reported as its delta). */
  drops?: () => number;
}

interface Sample {
  at: bigint;
  cores: Array<[number, number]>;
  lb: number;
  gen: number;
  sent: number;
  received: number;
  drops: number;
}

function netCounter(topo: Topology, ns: string, dev: string, field: 'tx_packets' | 'rx_packets'): number {
  return Number(topo.exec(ns, ['cat', `/sys/class/net/${dev}/statistics/${field}`]));
}

function sample(p: Probe): Sample {
  return {
    at: process.hrtime.bigint(),
    cores: coreTicks(),
    lb: p.lb ? processTicks(p.lb.pid!) : 0,
    gen: p.gen ? processTicks(p.gen.pid!) : 0,
    sent: netCounter(p.topo, p.topo.ns.tester, 'eth1', 'tx_packets'),
    received: netCounter(p.topo, p.topo.ns.server(1), 'eth1', 'rx_packets'),
    drops: p.drops?.() ?? 0,
  };
}

export interface Row {
  path: string;
  /** kpps the generator put on the wire; null for TCP (iperf offers what the path takes). */
  offered: number | null;
  received: number;
  gbps: number | null;
  /** Generator CPU µs per offered packet, the forwarding it triggers on its core included. */
  genUs: number | null;
  /** lb CPU µs per received packet; null without an lb. */
  lbUs: number | null;
  /** The lb's CPU time as % of one core: below its core's busy %, something else ran there too. */
  lbCpu: number | null;
  /** Busy % per core. */
  cores: number[];
  notes: string[];
}

/** Measures the path while `during` runs. */
export async function measure(p: Probe, path: string, tcp: boolean, during: () => Promise<number | null>): Promise<Row> {
  const a = sample(p);
  const gbps = await during();
  const b = sample(p);
  const secs = Number(b.at - a.at) / 1e9;
  const received = b.received - a.received;
  const sent = b.sent - a.sent;
  const perPacket = (ticks: number, packets: number): number | null => (packets > 0 ? (ticks / CLK_TCK / packets) * 1e6 : null);
  const row: Row = {
    path,
    gbps,
    notes: [],
    genUs: p.gen ? perPacket(b.gen - a.gen, sent) : null,
    lbUs: p.lb ? perPacket(b.lb - a.lb, received) : null,
    lbCpu: p.lb ? ((b.lb - a.lb) / CLK_TCK / secs) * 100 : null,
    offered: tcp ? null : sent / secs / 1000,
    received: received / secs / 1000,
    cores: b.cores.map(([busy, total], i) => ((busy - a.cores[i]![0]) / (total - a.cores[i]![1])) * 100),
  };
  if (row.offered !== null && row.received >= GENERATOR_BOUND * row.offered) row.notes.push('generator-bound');
  if (p.drops && b.drops > a.drops) row.notes.push(`queue drops ${b.drops - a.drops}`);
  const others = row.lbCpu === null ? 0 : row.cores[LB_CPU]! - row.lbCpu;
  if (others > SHARED_LB_CPU) row.notes.push(`cpu${LB_CPU} ${others.toFixed(0)}% busy outside the lb`);
  return row;
}

/** A running generator (p.gen) is measured for SECONDS after its warm-up, then stopped (its whole process group). */
export async function measureFlood(p: Probe & { gen: ChildProcess }, path: string): Promise<Row> {
  const generator = p.gen;
  const exited = new Promise((r) => generator.once('exit', r));
  try {
    await sleep(WARMUP_MS);
    if (generator.exitCode !== null) throw new Error(`bench: '${generator.spawnargs.join(' ')}' exited with ${generator.exitCode}`);
    return await measure(p, path, false, async () => {
      await sleep(SECONDS * 1000);
      return null;
    });
  } finally {
    try {
      process.kill(-generator.pid!, 'SIGTERM');
    } catch {
      /* gone */
    }
    await exited;
  }
}

/** `v` with `digits` decimals, right-aligned in `width` ('-' for none). */
export const fix = (v: number | null, digits: number, width: number): string => (v === null ? '-' : v.toFixed(digits)).padStart(width);
const pct = (v: number | null, width: number): string => (v === null ? '-' : `${v.toFixed(0)}%`).padStart(width);

/** Prints rows; `base` (a row of the same run) gives the received and CPU-per-packet ratios. */
/** The round with the median lb CPU per packet (without an lb: the median packets received). */
export function medianRow(rounds: readonly Row[]): Row {
  const key = (r: Row): number => r.lbUs ?? r.received;
  return [...rounds].sort((a, b) => key(a) - key(b))[(rounds.length - 1) >> 1]!;
}

export function printRows(rows: readonly Row[], base: Row | null): void {
  const cores = rows[0]?.cores.map((_, i) => `cpu${i}`.padStart(6)).join('') ?? '';
  console.log(`${'path'.padEnd(38)}offered  received  Gbit/s  gen µs/pkt  lb µs/pkt  lb cpu${cores}  rx×base  µs×base  notes`);
  for (const r of rows) {
    const ratio = (v: number | null, b: number | null | undefined): string => fix(v !== null && b ? v / b : null, 2, 9);
    console.log(
      `${r.path.padEnd(38)}${fix(r.offered, 0, 7)}${fix(r.received, 0, 10)}${fix(r.gbps, 2, 8)}` +
        `${fix(r.genUs, 2, 12)}${fix(r.lbUs, 2, 11)}${pct(r.lbCpu, 8)}` +
        `${r.cores.map((c) => pct(c, 6)).join('')}` +
        `${ratio(r.received, base?.received)}${ratio(r.lbUs, base?.lbUs)}  ${r.notes.join(', ')}`,
    );
  }
}

/** An lb started on LB_CPU in `ns`; resolves once its log shows `ready` (or `ready()` is true, polled). */
export interface Lb {
  proc: ChildProcess;
  output(): string;
}

export function startLb(topo: Topology, ns: string, argv: readonly string[], ready: string | (() => boolean)): Promise<Lb> {
  const proc = topo.spawn(ns, onCpu(LB_CPU, argv));
  let out = '';
  const lb: Lb = { proc, output: () => out };
  return new Promise((resolve, reject) => {
    let poll: NodeJS.Timeout | undefined;
    if (typeof ready === 'function')
      poll = setInterval(() => {
        if (!ready()) return;
        clearInterval(poll);
        resolve(lb);
      }, 50);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (typeof ready === 'string' && out.includes(ready)) resolve(lb);
    });
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    proc.once('exit', (code) => {
      clearInterval(poll);
      reject(new Error(`'${argv.join(' ')}' exited with ${code}: ${out.trim()}`));
    });
  });
}

/** Stops an lb with SIGTERM (so it detaches and logs its final counters) and returns its output. */
export async function stopLb(lb: Lb): Promise<string> {
  if (lb.proc.exitCode === null && lb.proc.signalCode === null) {
    const exited = new Promise((r) => lb.proc.once('exit', r));
    lb.proc.kill('SIGTERM');
    await exited;
  }
  return lb.output();
}
