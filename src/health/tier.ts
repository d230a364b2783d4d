// Tier agreement: every LB of a registry tier probes every target and publishes what it sees;
// a target's tier state changes only when a majority of the live LBs see it down. Maglev keeps
// no second choice per row, so LBs that decided alone would build different tables and move
// flows between each other's targets; a target that only some LBs cannot reach (a broken path
// from those LBs) stays in, and the disagreement is reported instead.

/** One live LB's view: the targets (slots) it sees down; null while it has no view yet (warming up). */
export type LbView = ReadonlySet<number> | null;

export interface TierVerdict {
  /** Targets a majority of the live LBs see down. */
  down: Set<number>;
  /** Targets this LB's view puts on the other side of the tier's: seen down here only by a minority, or up here while the tier takes them out. */
  disagree: Set<number>;
}

/**
 * The tier's verdict from the views of the live LBs (this one's under `self`). LBs without a
 * view count as live voters that see every target up: a restarting LB can delay a removal,
 * never cause one.
 */
export function tierVerdict(views: ReadonlyMap<string, LbView>, self: string): TierVerdict {
  const votes = new Map<number, number>();
  for (const view of views.values()) for (const t of view ?? []) votes.set(t, (votes.get(t) ?? 0) + 1);
  const down = new Set([...votes].filter(([, n]) => 2 * n > views.size).map(([t]) => t));
  const mine = views.get(self) ?? new Set<number>();
  const disagree = new Set([...[...mine].filter((t) => !down.has(t)), ...[...down].filter((t) => !mine.has(t))]);
  return { down, disagree };
}
