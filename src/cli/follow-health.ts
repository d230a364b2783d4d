// `nfqlb follow --health`: the health checker of one LB of a registry tier (docs/health.md).
// It probes the registry's active targets, publishes this LB's view under a lease of its own,
// reads every live LB's view on each change, and holds down (follower.setDown) the targets a
// majority sees down, never all of them (fail open). Here, in the CLI, the registry wing and the
// health wing meet; neither imports the other.

import { probeAddresses } from '../health/address.js';
import { HealthChecker } from '../health/checker.js';
import { HealthMetrics } from '../health/metrics.js';
import { checkProbePermission } from '../health/probe.js';
import type { HealthOptions } from '../health/standalone.js';
import type { HealthState } from '../health/state.js';
import { takenOut } from '../health/state.js';
import { readViews, tierVerdict, viewValue } from '../health/tier.js';
import { log } from '../log.js';
import type { EtcdOptions, HeldLease, Registry } from '../registry/etcd.js';
import type { Publication, RegistryFollower } from '../registry/follower.js';
import type { ServiceKeys } from '../registry/model.js';

export interface TierHealthOptions {
  keys: ServiceKeys;
  etcd: EtcdOptions;
  /** This LB's name in the views (default the host name). */
  lb: string;
  health: Omit<HealthOptions, 'metrics'>;
  /** Seconds the view outlives an LB that stopped renewing its lease. */
  leaseTtl: number;
}

const RETRY_MS = 1000;

const sameSet = (a: ReadonlySet<number>, b: ReadonlySet<number>): boolean => a.size === b.size && [...a].every((x) => b.has(x));

/** Starts the tier's health checks on `follower`; resolves with a stop function. */
export function startTierHealth(follower: RegistryFollower, o: TierHealthOptions): () => Promise<void> {
  checkProbePermission();
  const { keys, lb } = o;
  const service = keys.service;
  const healthDir = `${keys.dir}health/`;
  const metrics = new HealthMetrics(follower.metrics);
  metrics.disagreement.set({ service }, 0);
  /** The registry's active targets: slot -> fwmark. */
  let targets = new Map<number, number>();
  let warm = o.health.warmupMs > 0;
  let held: ReadonlySet<number> = new Set();
  let disagreeing = new Set<number>();
  let entries: { key: string; value: string }[] = [];
  let published = new Map<number, string>();
  let reg: Registry | null = null;
  let lease: HeldLease | null = null;
  let stopWatch: (() => Promise<void>) | null = null;
  let stopped = false;
  let busy = false;
  let again = false;
  let failing: string | null = null;

  const checker = new HealthChecker({
    service,
    spec: o.health.spec,
    timing: o.health.timing,
    addresses: (fw) => probeAddresses(o.health.probeAddress, o.health.vips, fw),
    metrics,
    onChange: () => sync(),
  });

  /** This LB's view: each target's state, unknown while warming up. */
  const myView = (): Map<number, HealthState> => {
    const states = checker.states();
    return new Map([...targets].map(([slot, fw]) => [slot, warm ? 'unknown' : (states.get(fw) ?? 'unknown')]));
  };

  /** The tier's verdict from the views read last, applied to the follower. */
  const decide = (): void => {
    const views = readViews(entries, healthDir, targets);
    if (!views.has(lb)) views.set(lb, new Set());
    const mine = new Set([...myView()].filter(([, s]) => s === 'down').map(([slot]) => slot));
    const verdict = tierVerdict(views, mine);
    const { out, allDown } = takenOut(new Set(targets.keys()), verdict.down, false);
    metrics.allDown.set({ service }, allDown ? 1 : 0);
    metrics.disagreement.set({ service }, verdict.disagree.size);
    for (const slot of verdict.disagree) {
      if (!disagreeing.has(slot)) {
        const seen = mine.has(slot) ? 'down here, up for the majority of LBs: kept' : 'up here, down for the majority of LBs: out';
        log.warn({ service, lb, slot, fwmark: targets.get(slot) }, `health views disagree: target ${seen}`);
      }
    }
    disagreeing = verdict.disagree;
    if (sameSet(out, held)) return;
    held = out;
    log.info({ service, down: [...out] }, 'tier health: targets held down');
    follower.setDown(out);
  };

  /** Publishes this LB's view (what changed), reads all views, decides; one at a time, coalesced. */
  const sync = (): void => {
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    void (async () => {
      try {
        do {
          again = false;
          reg ??= await connect();
          const view = new Map([...myView()].map(([slot, s]) => [slot, viewValue(targets.get(slot)!, s)]));
          const put = new Map([...view].filter(([slot, v]) => published.get(slot) !== v));
          const remove = [...published.keys()].filter((slot) => !view.has(slot));
          if (put.size > 0 || remove.length > 0) await reg.putHealthView(keys, lb, lease!.id, put, remove);
          published = view;
          entries = (await reg.snapshot(keys)).entries;
          decide();
        } while (again && !stopped);
        if (failing !== null) log.info({ service, lb }, 'tier health: registry reachable again');
        failing = null;
      } catch (e) {
        const err = (e as Error).message;
        if (failing === null) log.warn({ service, lb, err }, 'tier health: registry unreachable: the targets held down stay as they are');
        failing = err;
        disconnect();
        setTimeout(sync, RETRY_MS).unref();
      } finally {
        busy = false;
      }
    })();
  };

  /** A client, a lease for the view (published anew under it) and a watch on the service. */
  const connect = async (): Promise<Registry> => {
    const { Registry } = await import('../registry/etcd.js');
    const r = await Registry.connect(o.etcd);
    try {
      lease = await r.grantLease(o.leaseTtl);
      lease.onLost(() => {
        if (reg !== r) return;
        log.warn({ service, lb }, 'tier health: lease lost: publishing the view anew');
        disconnect();
        sync();
      });
      published = new Map();
      const { revision } = await r.snapshot(keys);
      stopWatch = await r.watch(
        keys,
        revision,
        () => sync(),
        () => {
          if (reg !== r) return;
          disconnect();
          sync();
        },
      );
      return r;
    } catch (e) {
      r.close();
      throw e;
    }
  };

  const disconnect = (): void => {
    const r = reg;
    reg = null;
    stopWatch?.().catch(() => undefined);
    stopWatch = null;
    r?.close();
  };

  follower.onPublish((p: Publication) => {
    const active = new Map(p.desired.targets.filter((t) => t.state === 'active').map((t) => [t.slot, t.fwmark]));
    if (active.size === targets.size && [...active].every(([slot, fw]) => targets.get(slot) === fw)) return;
    targets = active;
    checker.setTargets(new Set(targets.values()));
    sync();
  });
  const warmup = setTimeout(() => {
    warm = false;
    log.info({ service, lb }, 'warm-up over: this LB votes');
    sync();
  }, o.health.warmupMs);

  return async () => {
    stopped = true;
    clearTimeout(warmup);
    checker.stop();
    // The view goes at once, not after the lease's TTL: the other LBs count one LB fewer.
    await lease?.revoke().catch(() => undefined);
    disconnect();
  };
}
