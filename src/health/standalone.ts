// `nfqlb health`: the checker of one LB's own table, as keepalived is for IPVS. It probes the
// table's active targets and takes a down one out by deactivating it, so it drains (an lb with
// --conntrack keeps its established flows, new flows avoid it); when it rises it goes back into
// the slot it had, so the Maglev table is the same as before. It never takes out every target
// (fail open) and takes none out during the warm-up. What it took out is its own overlay on the
// operator's table: a target the operator activates or deactivates is the operator's again, and
// on SIGTERM or SIGINT the checker puts back what it took out (a stopped checker must not leave
// targets out that nobody watches).
import { log } from '../log.js';
import { type MetricsAddress, MetricsServer, newRegistry } from '../metrics.js';
import { NFQLB_TABLE, TableFollower, TargetStore } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import { type ProbeAddress, probeAddresses } from './address.js';
import { HealthChecker, type HealthTiming } from './checker.js';
import { HealthMetrics } from './metrics.js';
import { checkProbePermission, type ProbeSpec } from './probe.js';
import { takenOut } from './state.js';

export interface HealthOptions {
  spec: ProbeSpec;
  vips: string[];
  probeAddress: ProbeAddress;
  timing: HealthTiming;
  warmupMs: number;
  metrics: MetricsAddress | null;
}

const EVENT_LOOP_PRECISION_MS = 1000;

/** The active targets of a table: fwmark -> slot. */
function activeSlots(t: TargetTable): Map<number, number> {
  const slots = new Map<number, number>();
  t.active.forEach((fw, i) => {
    if (fw >= 0 && !slots.has(fw)) slots.set(fw, i);
  });
  return slots;
}

/** Runs until SIGTERM or SIGINT; resolves with the exit code. Throws (nothing started) when the table cannot be read. */
export async function runHealth(shm: string, o: HealthOptions): Promise<number> {
  checkProbePermission();
  const follower = new TableFollower(NFQLB_TABLE, shm);
  // The checker sleeps between probes: sampling the event loop more often than it wakes costs more than the probes.
  const registry = newRegistry(EVENT_LOOP_PRECISION_MS);
  const metrics = new HealthMetrics(registry);
  const service = shm;
  metrics.disagreement.set({ service }, 0);
  /** Targets this checker took out: fwmark -> the slot it had. */
  const ours = new Map<number, number>();
  let warm = o.warmupMs > 0;

  const sync = (): void => {
    try {
      // A table made anew by `init` is the operator's whole new set: what was taken out of the old one stays out.
      if (follower.check()) ours.clear();
      const active = activeSlots(follower.table);
      for (const fw of ours.keys()) if (active.has(fw)) ours.delete(fw);
      const targets = new Set([...active.keys(), ...ours.keys()]);
      checker.setTargets(targets);
      const { out, allDown } = takenOut(targets, checker.down(), warm);
      metrics.allDown.set({ service }, allDown ? 1 : 0);
      apply(out, active);
    } catch (e) {
      log.warn({ shm, err: (e as Error).message }, 'cannot apply health to the table: trying again');
    }
  };

  /** Takes `out` out of the table and puts back what it took out before and is not in `out`. */
  const apply = (out: ReadonlySet<number>, active: ReadonlyMap<number, number>): void => {
    const back = [...ours.keys()].filter((fw) => !out.has(fw));
    const leaving = [...out].filter((fw) => active.has(fw));
    if (back.length === 0 && leaving.length === 0) return;
    const store = TargetStore.open(NFQLB_TABLE, shm, true);
    for (const fw of back) {
      const slot = ours.get(fw)!;
      if (store.targets.active[slot]! < 0) store.activateAt(slot, fw);
      else store.activate([fw]);
      ours.delete(fw);
      log.info({ shm, fwmark: fw, slot }, 'target back in the table');
    }
    if (leaving.length === 0) return;
    store.deactivate(leaving);
    for (const fw of leaving) ours.set(fw, active.get(fw)!);
    log.warn({ shm, fwmarks: leaving }, 'targets down: taken out of the table (draining)');
  };

  const checker = new HealthChecker({
    service,
    spec: o.spec,
    timing: o.timing,
    addresses: (fw) => probeAddresses(o.probeAddress, o.vips, fw),
    metrics,
    onChange: () => sync(),
  });
  const server = o.metrics === null ? null : await MetricsServer.start(o.metrics, registry, () => follower.error);
  // Table changes by the operator (or an init) are picked up once an interval.
  const ticker = setInterval(sync, o.timing.intervalMs);
  const warmup = setTimeout(() => {
    warm = false;
    log.info({ shm }, 'warm-up over: down targets are taken out');
    sync();
  }, o.warmupMs);
  sync();
  log.info({ shm, targets: activeSlots(follower.table).size, warmupMs: o.warmupMs }, 'health checking');

  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  clearInterval(ticker);
  clearTimeout(warmup);
  checker.stop();
  try {
    follower.check();
    apply(new Set(), activeSlots(follower.table));
  } catch (e) {
    log.warn({ shm, err: (e as Error).message }, 'cannot put back the targets taken out');
  }
  await server?.close();
  return 0;
}
