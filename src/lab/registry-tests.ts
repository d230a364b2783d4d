// The lab's registry tests (`lblab test registry_*`, docs/lab.md): what a tier whose LBs follow
// etcd does when targets crash, etcd members die, an LB restarts, and changes come fast. Each
// returns the figures it prints and the problems that fail it, measured on the LBs' published
// tables (read from /dev/shm) and on real TCP connections.
import { setTimeout as sleep } from 'node:timers/promises';
import { sameInt32 } from '../target-table.js';
import type { LoadBalancer } from './lb-setup.js';
import { LEASE_S, metricValue, type RegistryTier, type Slots } from './registry.js';
import type { ScaleKind } from './report.js';
import { serverFwmark } from './rules.js';
import type { ScaleRun } from './runs.js';
import { type Family, type Topology, vmName } from './topology.js';
import type { MconnectResult } from './traffic/mconnect.js';

/** Places a run's events: resolves at a fraction of the run, records an event now. */
export interface TrafficControl {
  at(fraction: number): Promise<void>;
  mark(kind: ScaleKind, targets: string[]): void;
}

/** What the tests need of a running lab with --registry. */
export interface RegistryLab {
  readonly topo: Topology;
  readonly registry: RegistryTier;
  readonly lb: LoadBalancer;
  readonly families: readonly Family[];
  /** ctraffic on every family at once for durationMs while `script` runs; a run per family. */
  traffic(test: string, durationMs: number, script: (c: TrafficControl) => Promise<void>): Promise<ScaleRun[]>;
  /** SIGKILLs server n's traffic server. */
  killServer(n: number): void;
  mconnect(family: Family): MconnectResult;
  /** nfqlb --conntrack on the LBs: drained targets keep their flows. */
  readonly conntrack: boolean;
  log(line: string): void;
}

export interface RegistryOutcome {
  figures: string[];
  problems: string[];
  runs: ScaleRun[];
}

/** The slots the lab's servers hold in the registry (server n: slot n, fwmark 100+n), less `without`. */
export function serverSlots(nvm: number, without: readonly number[] = []): Slots {
  const slots: Slots = new Map();
  for (let n = 1; n <= nvm; n++) if (!without.includes(n)) slots.set(n, serverFwmark(n));
  return slots;
}

const routersOf = (topo: Topology): number[] => Array.from({ length: topo.nrouters }, (_, k) => k + 1);
const lost = (run: ScaleRun, kinds: readonly ScaleKind[] = ['scale-in', 'scale-out', 'fault']): number =>
  run.report.phases.filter((p) => kinds.includes(p.event.kind)).reduce((n, p) => n + p.lost, 0);

/** The checks every traffic run of these tests makes. */
function healthy(run: ScaleRun, problems: string[]): void {
  if (run.report.neverConnected > 0) problems.push(`IPv${run.family}: ${run.report.neverConnected} connections never connected`);
  if (run.report.lostBefore > 0) problems.push(`IPv${run.family}: ${run.report.lostBefore} connections lost before the first event`);
}

/** Whether every LB publishes the same lookup array (the tables are built alike only if so). */
function sameLookups(tier: RegistryTier, routers: readonly number[]): boolean {
  const first = tier.table(routers[0]!).lookup;
  return routers.every((i) => sameInt32(tier.table(i).lookup, first));
}

/**
 * Whether every LB's lookup array is the same within `ms`. A table is written in place (as the
 * reference's is): an activation's slot is in `active` before its lookup array is copied, so a
 * reader that saw the slot may still catch the old lookup for a moment.
 */
async function lookupsAgree(tier: RegistryTier, routers: readonly number[], ms = 1000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!sameLookups(tier, routers)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 1));
  }
  return true;
}

/**
 * registry_scale: nfqueue_scale through the registry. The `list` servers' sidecars get SIGTERM
 * (draining, deleted after the drain time) at 1/4 of the run and are started again at 3/4.
 * Stateless, the scale-in loses what nfqlb deactivate loses. With --conntrack the sidecars drain
 * for the whole run (a rolling restart): the draining targets keep their connections, the
 * started sidecars take the draining registrations over, and nothing is lost.
 */
export async function registryScale(lab: RegistryLab, test: string, durationMs: number, list: number[]): Promise<RegistryOutcome> {
  const problems: string[] = [];
  const names = list.map(vmName);
  let tookOver: string[] = [];
  const runs = await lab.traffic(test, durationMs, async (c) => {
    await c.at(0.25);
    c.mark('scale-in', names);
    for (const n of list) lab.registry.stopSidecar(n, 'SIGTERM');
    await c.at(0.75);
    c.mark('scale-out', names);
    const draining = await Promise.all(list.map((n) => lab.registry.startSidecar(n)));
    tookOver = names.filter((_, k) => draining[k]);
  });
  const figures = [`sidecars drain ${lab.registry.drainMs} ms; started again while draining (took over): ${tookOver.join(' ') || 'none'}`];
  for (const run of runs) {
    healthy(run, problems);
    const [scaleIn, scaleOut] = run.report.phases;
    if (!scaleIn || !scaleOut) continue;
    figures.push(`IPv${run.family}: scale-in lost ${scaleIn.lost} (ideal ${scaleIn.ideal}), scale-out lost ${scaleOut.lost}`);
    if (lab.conntrack) {
      for (const p of [scaleIn, scaleOut]) {
        const where = Object.keys(p.lostByHost).join(' ');
        if (p.lost > 0) problems.push(`IPv${run.family}: the ${p.event.kind} lost ${p.lost} with --conntrack (on ${where}; expected 0)`);
      }
    } else {
      // Maglev moves a few flows beyond the removed targets' own (as with nfqlb deactivate).
      if (scaleIn.lost > Math.max(35, scaleIn.ideal + 10))
        problems.push(`IPv${run.family}: scale-in lost ${scaleIn.lost}, ideal ${scaleIn.ideal}`);
      if (scaleOut.lost > scaleIn.lost) problems.push(`IPv${run.family}: scale-out lost ${scaleOut.lost}, more than the scale-in`);
    }
  }
  if (lab.conntrack && tookOver.length !== list.length)
    problems.push(`with --conntrack every sidecar should start again while its predecessor drains; took over: ${tookOver.join(' ')}`);
  return { figures, problems, runs };
}

/**
 * registry_target_crash: SIGKILL a server's sidecar and its server. Its key goes when the lease
 * runs out; every LB must have dropped it within the lease TTL + 1 s. Then mconnect (IPv4 and
 * IPv6) reaches every other server and fails nowhere.
 */
export async function registryTargetCrash(lab: RegistryLab, n: number): Promise<RegistryOutcome> {
  const { topo, registry } = lab;
  const figures: string[] = [];
  const problems: string[] = [];
  const goal = LEASE_S * 1000 + 1000;
  const t0 = Date.now();
  registry.stopSidecar(n, 'SIGKILL');
  lab.killServer(n);
  const at = await registry.waitTables(`${vmName(n)} to leave every table`, routersOf(topo), serverSlots(topo.nvm, [n]), goal + 10_000);
  const ms = Math.max(...at.values()) - t0;
  figures.push(
    `${vmName(n)}: sidecar and server SIGKILLed -> out of all ${topo.nrouters} LBs' tables in ${ms} ms ` +
      `(lease ${LEASE_S} s, goal <= ${goal} ms)`,
  );
  if (ms > goal) problems.push(`${vmName(n)} left the tables after ${ms} ms, more than the lease + 1 s (${goal} ms)`);
  for (const family of [4, 6] as const) {
    const r = lab.mconnect(family);
    const reached = Object.keys(r.hosts).sort();
    const others = Array.from({ length: topo.nvm }, (_, k) => vmName(k + 1)).filter((h) => h !== vmName(n));
    figures.push(
      `IPv${family}: mconnect ${r.connections} connections, failed ${r.failed_connects + r.failed_reads}, servers ${reached.join(' ')}`,
    );
    if (r.failed_connects + r.failed_reads > 0)
      problems.push(`IPv${family}: ${r.failed_connects + r.failed_reads} failed connections after the crash`);
    if (reached.join(' ') !== others.join(' ')) problems.push(`IPv${family}: reached ${reached.join(' ')}, expected ${others.join(' ')}`);
  }
  return { figures, problems, runs: [] };
}

/**
 * registry_etcd_faults, under traffic: (1) all members are SIGKILLed: the tables stay and no
 * connection is lost; (2) the members restart and a target is drained at once: every LB
 * converges to the registry within 1 s of etcd answering; (3) the leader is SIGKILLed and the
 * target undrained: the change applies through the two members left. The outage comes first so
 * that no change's own losses (a moved flow is lost at its next message) fall into it.
 */
export async function registryEtcdFaults(lab: RegistryLab, test: string, durationMs: number, n: number): Promise<RegistryOutcome> {
  const { topo, registry } = lab;
  const { etcd } = registry;
  const routers = routersOf(topo);
  const figures: string[] = [];
  const problems: string[] = [];
  const runs = await lab.traffic(test, durationMs, async (c) => {
    await c.at(0.15);
    const before = routers.map((i) => Array.from(registry.table(i).lookup));
    await etcd.killAll();
    const downAt = Date.now();
    c.mark('fault', ['etcd-all-killed']);
    await c.at(0.3);
    const kept = routers.every((i, k) => sameInt32(registry.table(i).lookup, Int32Array.from(before[k]!)));
    figures.push(`1. all 3 members killed for ${Date.now() - downAt} ms: every LB kept its table: ${kept ? 'yes' : 'NO'}`);
    if (!kept) problems.push('a table changed while etcd was down');

    const t0 = Date.now();
    await etcd.restartAll();
    const up = Date.now();
    c.mark('scale-in', [vmName(n)]);
    const drain = await registry.write({ op: 'drain', slot: n });
    const converged = await registry.waitTables('every LB to converge after the restart', routers, serverSlots(topo.nvm, [n]), 10_000);
    const ms = Math.max(...converged.values()) - up;
    figures.push(
      `2. members restarted (serving after ${up - t0} ms): every LB converged ${ms} ms after etcd answered ` +
        `(${Math.max(...converged.values()) - drain.ts} ms after the drain's write; goal <= 1000 ms)`,
    );
    if (ms > 1000) problems.push(`the LBs converged ${ms} ms after etcd was back, more than 1 s`);
    if (!(await lookupsAgree(registry, routers))) problems.push('the LBs publish different lookup arrays after the restart');

    await c.at(0.55);
    const leader = etcd.leader() ?? 1;
    await etcd.kill(leader);
    c.mark('fault', [`etcd${leader}-killed`]);
    c.mark('scale-out', [vmName(n)]);
    const undrain = await registry.write({ op: 'undrain', slot: n });
    const applied = await registry.waitTables('the undrain to apply with 2 of 3 members', routers, serverSlots(topo.nvm), 10_000);
    figures.push(
      `3. leader etcd${leader} killed: an undrain applied on every LB ${Math.max(...applied.values()) - undrain.ts} ms after its write`,
    );
  });
  for (const run of runs) {
    healthy(run, problems);
    const down = run.report.phases.find((p) => p.event.targets[0] === 'etcd-all-killed');
    figures.push(`IPv${run.family}: lost while etcd was down: ${down?.lost}; in the whole run: ${lost(run)}`);
    if (down && down.lost > 0) problems.push(`IPv${run.family}: ${down.lost} connections lost while etcd was down (expected 0)`);
    if (lab.conntrack && lost(run) > 0) problems.push(`IPv${run.family}: ${lost(run)} connections lost with --conntrack (expected 0)`);
  }
  return { figures, problems, runs };
}

/**
 * registry_lb_restart, under traffic: SIGKILL router 1's follower and lb, start the lb again
 * (its table is in /dev/shm, as the follower left it), then the follower. No connection is
 * lost, and the table holds the registry's targets from the lb's start on, through the
 * follower's start and its first watch event.
 */
export async function registryLbRestart(lab: RegistryLab, test: string, durationMs: number): Promise<RegistryOutcome> {
  const { topo, registry, lb } = lab;
  const figures: string[] = [];
  const problems: string[] = [];
  const expected = serverSlots(topo.nvm);
  const runs = await lab.traffic(test, durationMs, async (c) => {
    await c.at(0.3);
    const before = Int32Array.from(registry.table(1).lookup);
    const t0 = Date.now();
    await Promise.all([registry.stopFollower(1, 'SIGKILL'), lb.stopRouter!(1, 'SIGKILL')]);
    c.mark('fault', ['vm-201-killed']);
    await lb.startRouter!(1);
    const lbMs = Date.now() - t0;
    const there = sameInt32(registry.table(1).lookup, before);
    figures.push(
      `vm-201's follower and lb SIGKILLed; the lb serves again after ${lbMs} ms, its table there at once: ${there ? 'yes' : 'NO'}`,
    );
    if (!there) problems.push("the restarted lb did not find the follower's last table");
    // Sample the table while the follower starts: it must never lack the registry's targets.
    let gaps = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        if (!sameInt32(registry.table(1).lookup, before)) gaps++;
        await sleep(1);
      }
    })();
    const t1 = Date.now();
    await registry.startFollower(1, expected);
    const connected = await waitMetric(registry, 1, 'nfqlb_registry_connected', (v) => v === 1, 15_000);
    sampling = false;
    await sampler;
    figures.push(`the follower restarted and connected in ${connected - t1} ms; samples without the registry's table meanwhile: ${gaps}`);
    if (gaps > 0) problems.push(`router 1's table lacked the registry's targets in ${gaps} samples while its follower started`);
  });
  for (const run of runs) {
    healthy(run, problems);
    figures.push(`IPv${run.family}: connections lost: ${lost(run)} (longest wait for an echo ${run.maxDelay} ms)`);
    if (lost(run) > 0) problems.push(`IPv${run.family}: ${lost(run)} connections lost over the LB restart (expected 0)`);
  }
  return { figures, problems, runs };
}

/** Polls a follower's metric until `ok`; returns when (Date.now()). */
async function waitMetric(tier: RegistryTier, i: number, name: string, ok: (v: number) => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last: number | undefined;
  for (;;) {
    try {
      last = metricValue(tier.metrics([i])[0]!, name);
      if (last !== undefined && ok(last)) return Date.now();
    } catch {
      /* not serving yet */
    }
    if (Date.now() > deadline) throw new Error(`router ${i}: ${name} is ${last} after ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** The targets registry_propagation changes: the lab's servers, and table-only targets up to this many. */
export const PROPAGATION_TARGETS = 32;
const PROPAGATION_CHANGES = 200;

const percentile = (sorted: readonly number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

/**
 * registry_propagation: 32 targets (the servers, then table-only ones the writer registers),
 * 200 drains and undrains one after the other. For each: the time from the entry's `ts` to the
 * change published on every LB (the tables polled every ms), and after it every LB's lookup
 * array, nfqlb_table_hash and revision are compared.
 */
export async function registryPropagation(lab: RegistryLab, changes = PROPAGATION_CHANGES): Promise<RegistryOutcome> {
  const { topo, registry } = lab;
  const routers = routersOf(topo);
  const figures: string[] = [];
  const problems: string[] = [];
  const expected = serverSlots(topo.nvm);
  for (let slot = topo.nvm + 1; slot <= PROPAGATION_TARGETS; slot++) {
    await registry.write({ op: 'claim', slot, fwmark: serverFwmark(slot), name: `t-${slot}` });
    expected.set(slot, serverFwmark(slot));
  }
  const slots = [...expected.keys()];
  const all = new Map(expected);
  await registry.waitTables(`all LBs to hold ${slots.length} targets`, routers, expected, 10_000);
  const latency: number[] = [];
  const spread: number[] = [];
  let seed = 1;
  for (let k = 0; k < changes; k++) {
    // A fixed pseudo-random sequence: the same slots every run.
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const slot = slots[seed % slots.length]!;
    // Never drain the last one: an empty table is a different case.
    const drain = expected.has(slot) && expected.size > 1;
    const a = await registry.write({ op: drain ? 'drain' : 'undrain', slot });
    if (drain) expected.delete(slot);
    else expected.set(slot, all.get(slot)!);
    const at = await registry.waitTables(`change ${k + 1} on every LB`, routers, expected, 5000);
    const times = [...at.values()];
    latency.push(Math.max(...times) - a.ts);
    spread.push(Math.max(...times) - Math.min(...times));
    if (!(await lookupsAgree(registry, routers))) problems.push(`change ${k + 1}: the LBs publish different lookup arrays`);
    const seen = registry.metrics(routers);
    const hashes = new Set(seen.map((m) => metricValue(m, 'nfqlb_table_hash')));
    if (hashes.size !== 1 || hashes.has(undefined)) problems.push(`change ${k + 1}: nfqlb_table_hash differs: ${[...hashes].join(' ')}`);
    const behind = routers.filter((_, j) => (metricValue(seen[j]!, 'nfqlb_registry_revision') ?? 0) < a.revision);
    if (behind.length > 0) problems.push(`change ${k + 1}: routers ${behind.join(' ')} report a revision before ${a.revision}`);
    if (problems.length > 5) break;
  }
  latency.sort((x, y) => x - y);
  const [p50, p99, max] = [percentile(latency, 50), percentile(latency, 99), latency[latency.length - 1]!];
  figures.push(
    `${latency.length} changes, ${topo.nrouters} LBs, ${slots.length} targets: write (ts) -> published on every LB: ` +
      `p50 ${p50} ms, p99 ${p99} ms, max ${max} ms (goal p99 <= 100 ms)`,
  );
  figures.push(`tables identical on all LBs after every change; first to last LB: max ${Math.max(...spread)} ms`);
  if (p99 > 100) problems.push(`propagation p99 ${p99} ms > 100 ms`);
  if (Math.max(...spread) > 1000) problems.push(`the LBs disagreed for ${Math.max(...spread)} ms (> 1 s)`);
  return { figures, problems, runs: [] };
}
