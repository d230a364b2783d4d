// The health checker's metrics, by service (the shm name standalone, the registry's service in
// a tier) and target fwmark. The alerts in contrib/prometheus use these names.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export class HealthMetrics {
  readonly targetUp: Gauge<'service' | 'fwmark'>;
  readonly probeSeconds: Histogram<'service'>;
  readonly transitions: Counter<'service' | 'fwmark' | 'to'>;
  readonly allDown: Gauge<'service'>;
  readonly disagreement: Gauge<'service'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.targetUp = new Gauge({
      name: 'nfqlb_target_up',
      help: "1 while the target passes its health checks, 0 while it fails them (this LB's view)",
      labelNames: ['service', 'fwmark'],
      registers,
    });
    this.probeSeconds = new Histogram({
      name: 'nfqlb_health_probe_seconds',
      help: 'Time a health probe took, until it passed, failed or timed out',
      labelNames: ['service'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.transitions = new Counter({
      name: 'nfqlb_health_transitions_total',
      help: 'Target state changes seen by the probes, by the state entered',
      labelNames: ['service', 'fwmark', 'to'],
      registers,
    });
    this.allDown = new Gauge({
      name: 'nfqlb_service_all_down',
      help: 'Every target of the service is down: the table keeps them all (fail open)',
      labelNames: ['service'],
      registers,
    });
    this.disagreement = new Gauge({
      name: 'nfqlb_health_disagreement',
      help: "Targets whose state in this LB's view differs from the tier's (a path broken from some LBs only)",
      labelNames: ['service'],
      registers,
    });
  }
}
