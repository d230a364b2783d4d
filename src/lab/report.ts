// The loss report of a scale test: which connections a scale event cost, next to the least it
// could have cost. Pure (stats in, figures out), so it is unit-tested with synthetic runs.
//
// A scale event opens a phase that lasts until the next event (or the end of the run); a
// connection lost in that phase is counted against the event. The ideal for a scale-in is the
// connections that were on the removed targets when they left: those must break with any
// load-balancer. The ideal for a scale-out is zero: nothing forces an established connection
// to move when targets are added (a stateful load-balancer moves none).
import type { CtrafficStats } from './traffic/stats.js';

/** A fault (an etcd member killed, an LB restarted) is an event that should cost nothing: ideal 0. */
export type ScaleKind = 'scale-in' | 'scale-out' | 'fault';

export interface ScaleEvent {
  /** Milliseconds since the traffic run started (the stats' time base). */
  t: number;
  kind: ScaleKind;
  /** Names of the targets removed or added back (server names, or router names for an LB tier). */
  targets: string[];
}

export interface PhaseLoss {
  event: ScaleEvent;
  /** Lost-connection events in the phase. */
  lost: number;
  /** The least loss any load-balancer could have had (see the file comment). */
  ideal: number;
  lostByHost: Record<string, number>;
}

export interface LossReport {
  nconn: number;
  /** Connections per server just before the first scale event (or at the end without events). */
  before: Record<string, number>;
  /** Connections per server at the end of the run. */
  after: Record<string, number>;
  /** Losses before the first scale event: a healthy lab has none. */
  lostBefore: number;
  phases: PhaseLoss[];
  failedConnects: number;
  neverConnected: number;
}

function bump(m: Record<string, number>, k: string, n = 1): void {
  m[k] = (m[k] ?? 0) + n;
}

/** Connections per server at time t (a connection counts from its greeting until it is lost). */
export function hostsAt(stats: CtrafficStats, t: number): Record<string, number> {
  const hosts: Record<string, number> = {};
  for (const c of stats.connections) {
    let current: string | undefined;
    for (const e of c.events) {
      if (e.t > t) break;
      if (e.type === 'connect' || e.type === 'reconnect') current = e.host;
      else if (e.type === 'lost') current = undefined;
    }
    if (current !== undefined) bump(hosts, current);
  }
  return hosts;
}

/**
 * Losses per scale event. `ideal` of a scale-in counts the connections on its targets at the
 * event; pass `idealByTargets: false` when the targets are load-balancers, not servers (a
 * stateless LB tier can move a connection to another LB without breaking it: ideal 0).
 */
export function lossReport(stats: CtrafficStats, events: readonly ScaleEvent[], idealByTargets = true): LossReport {
  const sorted = [...events].sort((a, b) => a.t - b.t);
  const firstT = sorted[0]?.t ?? Infinity;
  const phases: PhaseLoss[] = sorted.map((event) => {
    const at = hostsAt(stats, event.t);
    const ideal = event.kind === 'scale-in' && idealByTargets ? event.targets.reduce((sum, h) => sum + (at[h] ?? 0), 0) : 0;
    return { event, lost: 0, ideal, lostByHost: {} };
  });
  let lostBefore = 0;
  let failedConnects = 0;
  let neverConnected = 0;
  for (const c of stats.connections) {
    if (!c.events.some((e) => e.type === 'connect' || e.type === 'reconnect')) neverConnected++;
    for (const e of c.events) {
      if (e.type === 'connect-failed') failedConnects++;
      if (e.type !== 'lost') continue;
      if (e.t < firstT) {
        lostBefore++;
        continue;
      }
      // The last event at or before the loss owns it.
      let k = phases.length - 1;
      while (k > 0 && phases[k]!.event.t > e.t) k--;
      const p = phases[k]!;
      p.lost++;
      bump(p.lostByHost, e.host);
    }
  }
  return {
    nconn: stats.nconn,
    before: hostsAt(stats, Number.isFinite(firstT) ? firstT : stats.duration),
    after: hostsAt(stats, stats.duration),
    lostBefore,
    phases,
    failedConnects,
    neverConnected,
  };
}

const pct = (n: number, of: number): string => `${of > 0 ? Math.round((100 * n) / of) : 0}%`;

/** `vm-001=11 vm-002=9 ...`, sorted by name. */
export function formatHosts(m: Record<string, number>): string {
  return (
    Object.keys(m)
      .sort()
      .map((h) => `${h}=${m[h]}`)
      .join(' ') || '-'
  );
}

/** The per-test report: a table of phases, the distribution, and the original's one-line verdict. */
export function formatLossReport(r: LossReport, nservers: number): string {
  const lines = [`  ${'event'.padEnd(10)} ${'time'.padStart(6)}  ${'targets'.padEnd(16)} ${'lost'.padStart(5)} ${'ideal'.padStart(6)}`];
  for (const p of r.phases) {
    lines.push(
      `  ${p.event.kind.padEnd(10)} ${(p.event.t / 1000).toFixed(1).padStart(5)}s  ${p.event.targets.join(' ').padEnd(16)}` +
        ` ${String(p.lost).padStart(5)} ${String(p.ideal).padStart(6)}`,
    );
  }
  lines.push(`  Connections per server before scaling: ${formatHosts(r.before)}`);
  lines.push(`  Connections per server at the end:     ${formatHosts(r.after)}`);
  if (r.lostBefore > 0) lines.push(`  Lost before the first scale event: ${r.lostBefore}`);
  if (r.failedConnects > 0 || r.neverConnected > 0) {
    lines.push(`  Failed connects: ${r.failedConnects}, connections that never connected: ${r.neverConnected}`);
  }
  const scaleIn = r.phases.find((p) => p.event.kind === 'scale-in');
  if (scaleIn && scaleIn.ideal > 0) {
    const k = scaleIn.event.targets.length;
    lines.push(
      `  The ideal loss when ${k} of ${nservers} backends are scaled in is ${pct(scaleIn.ideal, r.nconn)}` +
        ` (${scaleIn.ideal} of ${r.nconn}), we lost ${pct(scaleIn.lost, r.nconn)} (${scaleIn.lost}).`,
    );
  }
  return lines.join('\n');
}
