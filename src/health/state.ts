// A target's health from its probes, with HAProxy's counters: an up target goes down after
// `fall` failed probes in a row, a down target comes up after `rise` good ones in a row, and
// a target of unknown state (just started, just added) is settled by its first probe.

export type HealthState = 'unknown' | 'up' | 'down';

export interface RiseFall {
  rise: number;
  fall: number;
}

export class TargetHealth {
  state: HealthState = 'unknown';
  /** Probes in a row whose result contradicts `state`. */
  private streak = 0;

  constructor(private readonly o: RiseFall) {}

  /** Records one probe's result; returns the new state when it changed, else null. */
  record(ok: boolean): HealthState | null {
    if (this.state === 'unknown' || ok === (this.state === 'down')) {
      this.streak++;
      if (this.state === 'unknown' || this.streak >= (ok ? this.o.rise : this.o.fall)) {
        this.state = ok ? 'up' : 'down';
        this.streak = 0;
        return this.state;
      }
    } else {
      this.streak = 0;
    }
    return null;
  }
}

/**
 * The targets to take out of the table: the down ones, unless every target is down. Then none
 * is taken out (fail open): a packet with no target helps nobody, while a target wrongly seen
 * down (the checker's own path broken) may still serve. During the warm-up none is taken out
 * either: a restarted checker's first probes must not empty the table while its counters fill.
 */
export function takenOut(
  targets: ReadonlySet<number>,
  down: ReadonlySet<number>,
  warmingUp: boolean,
): { out: Set<number>; allDown: boolean } {
  const out = new Set([...down].filter((t) => targets.has(t)));
  const allDown = targets.size > 0 && out.size === targets.size;
  return { out: allDown || warmingUp ? new Set() : out, allDown };
}
