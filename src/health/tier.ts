// Tier agreement: every LB of a registry tier probes every target and publishes what it sees
// (`<prefix>/<service>/health/<lb>/<slot>`, under the LB's own lease); a target's tier state
// changes only when a majority of the live LBs (those whose lease holds keys) see it down.
// Maglev keeps no second choice per row, so LBs that decided alone would build different tables
// and move flows between each other's targets; a target that only some LBs cannot reach (a
// broken path from those LBs) stays in, and the disagreement is reported instead. Every LB
// computes the verdict from the same published views, so they all reach the same one.
import type { HealthState } from './state.js';

/** One live LB's view: the targets (slots) it sees down. */
export type LbView = ReadonlySet<number>;

export interface TierVerdict {
  /** Targets a majority of the live LBs see down. */
  down: Set<number>;
  /** Targets on which this LB's own view and the tier's differ (seen down here only, or up here while the tier takes them out). */
  disagree: Set<number>;
}

/**
 * The tier's verdict from the published views of the live LBs, and where `mine` (this LB's own
 * down set) differs from it. An LB still warming up publishes no target down: a restarting LB
 * can delay a removal, never cause one.
 */
export function tierVerdict(views: ReadonlyMap<string, LbView>, mine: ReadonlySet<number>): TierVerdict {
  const votes = new Map<number, number>();
  for (const view of views.values()) for (const t of view) votes.set(t, (votes.get(t) ?? 0) + 1);
  const down = new Set([...votes].filter(([, n]) => 2 * n > views.size).map(([t]) => t));
  const disagree = new Set([...[...mine].filter((t) => !down.has(t)), ...[...down].filter((t) => !mine.has(t))]);
  return { down, disagree };
}

/** The value of a view key: the target's fwmark (a slot may change hands) and its state. */
export function viewValue(fwmark: number, state: HealthState): string {
  return JSON.stringify({ fwmark, state });
}

/**
 * The views in a service's keys (`<healthDir><lb>/<slot>` = viewValue): each LB that has a key
 * is live; a slot counts as down in its view when the value says down for the fwmark the slot
 * holds now (`targets`: slot -> fwmark). Keys that do not parse are no vote.
 */
export function readViews(
  entries: readonly { key: string; value: string }[],
  healthDir: string,
  targets: ReadonlyMap<number, number>,
): Map<string, Set<number>> {
  const views = new Map<string, Set<number>>();
  for (const { key, value } of entries) {
    if (!key.startsWith(healthDir)) continue;
    const m = /^([^/]+)\/(\d{1,9})$/.exec(key.slice(healthDir.length));
    if (!m) continue;
    const view = views.get(m[1]!) ?? new Set<number>();
    views.set(m[1]!, view);
    let v: { fwmark?: unknown; state?: unknown };
    try {
      v = JSON.parse(value) as typeof v;
    } catch {
      continue;
    }
    const slot = Number(m[2]);
    if (v?.state === 'down' && v.fwmark === targets.get(slot)) view.add(slot);
  }
  return views;
}
