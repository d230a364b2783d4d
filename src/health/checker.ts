// Probes a set of targets in rounds: every interval all targets are probed at once, each keeping
// rise/fall counters (state.ts). One round wakes the process a few times for all its probes;
// spread over the interval, each probe woke it on its own, which cost several times the CPU.
// The checker only observes: what to do with a down target is its owner's (standalone.ts, or a
// tier's follower).
import { log } from '../log.js';
import type { HealthMetrics } from './metrics.js';
import { type ProbeSpec, probe, probeRequest } from './probe.js';
import { type HealthState, type RiseFall, recordRound, TargetHealth } from './state.js';

export interface HealthTiming extends RiseFall {
  intervalMs: number;
  timeoutMs: number;
}

export interface CheckerOptions {
  /** The `service` label. */
  service: string;
  spec: ProbeSpec;
  timing: HealthTiming;
  /** Where to probe the target of `fwmark` (the VIPs, or its own addresses); throws when that is unknown. */
  addresses(fwmark: number): string[];
  metrics: HealthMetrics;
  /** Called after a round (or a new target's first probe) in which targets entered state up or down. */
  onChange(): void;
}

interface Probed {
  health: TargetHealth;
  /** Where to probe and what to send there, from addresses(); null until found. */
  probes: { address: string; request: string }[] | null;
  /** Forgotten: a probe still under way is ignored when it ends. */
  gone: boolean;
}

export class HealthChecker {
  private readonly targets = new Map<number, Probed>();
  private readonly rounds: NodeJS.Timeout;

  constructor(private readonly o: CheckerOptions) {
    this.rounds = setInterval(() => void this.round(), o.timing.intervalMs);
  }

  /** Probes exactly these targets (by fwmark) from now on: new ones start unknown and are probed at once, gone ones are forgotten. */
  setTargets(fwmarks: ReadonlySet<number>): void {
    for (const [fw, t] of this.targets) if (!fwmarks.has(fw)) this.forget(fw, t);
    for (const fw of fwmarks) {
      if (this.targets.has(fw)) continue;
      const t: Probed = { health: new TargetHealth(this.o.timing), probes: null, gone: false };
      this.targets.set(fw, t);
      void this.probeAll(fw, t).then((why) => this.record([{ fw, t, why }]));
    }
  }

  /** The targets whose state is down. */
  down(): Set<number> {
    return new Set([...this.targets].filter(([, t]) => t.health.state === 'down').map(([fw]) => fw));
  }

  /** The state of each target probed, by fwmark. */
  states(): Map<number, HealthState> {
    return new Map([...this.targets].map(([fw, t]) => [fw, t.health.state]));
  }

  stop(): void {
    clearInterval(this.rounds);
    for (const [fw, t] of this.targets) this.forget(fw, t);
  }

  private forget(fw: number, t: Probed): void {
    t.gone = true;
    this.targets.delete(fw);
    this.o.metrics.targetUp.remove({ service: this.o.service, fwmark: String(fw) });
  }

  /**
   * Probes every target at once and records the results only when all are in: targets that fall
   * together (every server of a service stopped) are then seen together (recordRound), and the
   * fail-open keeps them all, instead of the first few results taking those targets out for a
   * moment.
   */
  private async round(): Promise<void> {
    this.record(await Promise.all([...this.targets].map(async ([fw, t]) => ({ fw, t, why: await this.probeAll(fw, t) }))));
  }

  /** Records the results (`why`: null when passed) of targets not forgotten meanwhile, and tells what changed. */
  private record(results: readonly { fw: number; t: Probed; why: string | null }[]): void {
    const whys = new Map(results.filter(({ t }) => !t.gone).map(({ fw, why }) => [fw, why]));
    const passed = new Map([...whys].map(([fw, why]) => [fw, why === null]));
    const changes = recordRound(new Map([...this.targets].map(([fw, t]) => [fw, t.health])), passed);
    for (const [fw, to] of changes) {
      const labels = { service: this.o.service, fwmark: String(fw) };
      this.o.metrics.targetUp.set(labels, to === 'up' ? 1 : 0);
      this.o.metrics.transitions.inc({ ...labels, to });
      if (to === 'down') log.warn({ ...labels, why: whys.get(fw) }, 'target down');
      else log.info(labels, 'target up');
    }
    if (changes.size > 0) this.o.onChange();
  }

  /** Probes every address of the target at once; null when all passed, else the first failure. */
  private async probeAll(fw: number, t: Probed): Promise<string | null> {
    const { spec, timing, service, metrics } = this.o;
    try {
      t.probes ??= this.o.addresses(fw).map((address) => ({ address, request: probeRequest(spec, address) }));
    } catch (e) {
      return (e as Error).message;
    }
    const results = await Promise.all(
      t.probes.map(async ({ address, request }) => {
        const start = performance.now();
        const why = await probe(address, spec.port, fw, request, timing.timeoutMs);
        metrics.probeSeconds.observe({ service }, (performance.now() - start) / 1000);
        return why === null ? null : `${address}: ${why}`;
      }),
    );
    return results.find((r) => r !== null) ?? null;
  }
}
