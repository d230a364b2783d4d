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
  /** The last probe's result; null before the first. */
  private passed: boolean | null = null;

  constructor(private readonly o: RiseFall) {}

  /** Up, but its last probe failed: on the way down, or a probe lost. */
  get failing(): boolean {
    return this.state === 'up' && this.passed === false;
  }

  /** Records one probe's result; returns the new state when it changed, else null. */
  record(ok: boolean): HealthState | null {
    this.passed = ok;
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

  /** Undoes a fall just recorded: the target stays up (failing), and its next failed probe makes it fall again. */
  holdUp(): void {
    this.state = 'up';
    this.streak = this.o.fall - 1;
  }
}

/**
 * Records a probe round's results (fwmark -> passed) on the targets' counters and answers the
 * targets whose state changed. A target that falls while every other target is failing too, and
 * not all of them fall, is held up: when every server of a service stops at once, a round may
 * still catch some answering, so they would fall a round apart, and the first ones would be
 * taken out for a round before fail-open put them back. Held, they fall together and fail-open
 * keeps them all. A held target falls at its next failed probe once any other target passes,
 * or with all the others; it is held at most until they reach their own fall.
 */
export function recordRound(targets: ReadonlyMap<number, TargetHealth>, passed: ReadonlyMap<number, boolean>): Map<number, HealthState> {
  const changes = new Map<number, HealthState>();
  const fell: number[] = [];
  for (const [fw, ok] of passed) {
    const h = targets.get(fw);
    if (h === undefined) continue;
    const was = h.state;
    const to = h.record(ok);
    if (to === null) continue;
    changes.set(fw, to);
    if (was === 'up' && to === 'down') fell.push(fw);
  }
  const all = [...targets.values()];
  if (fell.length > 0 && all.every((h) => h.state === 'down' || h.failing) && !all.every((h) => h.state === 'down')) {
    for (const fw of fell) {
      targets.get(fw)!.holdUp();
      changes.delete(fw);
    }
  }
  return changes;
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
