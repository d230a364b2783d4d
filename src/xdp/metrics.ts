// The Prometheus metrics of `xdplb lb --metrics`: read from the forwarder's counters, the
// AF_XDP sockets' (ours and the kernel's XDP_STATISTICS) and, with --offload, the XDP
// program's per-CPU counters when Prometheus scrapes. Frames the program forwards count in
// the same series as the forwarder's.
import { existsSync } from 'node:fs';
import type { Registry } from 'prom-client';
import { type HealthCheck, type Put, scrapeMetric } from '../metrics.js';
import { shmPath } from '../shm.js';
import type { ForwarderCounters } from './forwarder.js';
import type { XskStats } from './xsk.js';

/**
 * The forwarding socket's counters (rx, tx, drops, kernel drops) and the forwarder's; with
 * --offload also the program's: frames it forwarded, and VIP frames it left to the socket.
 */
export type XdpLbStats = XskStats & ForwarderCounters & { offloaded?: number; declined?: number };

/** What the metrics read of a running xdplb (XdpLb in run.ts, which registers them). */
export interface MeteredXdpLb {
  readonly running: boolean;
  targetFrames(): Float64Array;
  stats(): XdpLbStats;
}

/** Registers the xdplb metrics over `lb()` (null until it has started); returns the /healthz check. */
export function registerXdpMetrics(registry: Registry, lb: () => MeteredXdpLb | null, shm: string): HealthCheck {
  const counter = (name: string, help: string, labelNames: string[], fill: (l: MeteredXdpLb, put: Put) => void) =>
    scrapeMetric('counter', registry, name, help, labelNames, (put) => {
      const l = lb();
      if (l !== null) fill(l, put);
    });
  counter(
    'xdplb_packets_total',
    'VIP frames received (rx) and sent to targets (tx), by the socket or the program',
    ['direction'],
    (l, put) => {
      const s = l.stats();
      put({ direction: 'rx' }, s.rx + (s.offloaded ?? 0));
      put({ direction: 'tx' }, s.tx + (s.offloaded ?? 0));
    },
  );
  counter(
    'xdplb_offload_packets_total',
    'With --offload: frames the XDP program forwarded, and VIP frames it declined to the socket',
    ['verdict'],
    (l, put) => {
      const s = l.stats();
      if (s.offloaded === undefined) return;
      put({ verdict: 'forwarded' }, s.offloaded);
      put({ verdict: 'declined' }, s.declined ?? 0);
    },
  );
  counter('xdplb_target_packets_total', 'Frames sent to each target, by table index', ['target'], (l, put) => {
    l.targetFrames().forEach((n, i) => {
      if (n > 0) put({ target: String(i) }, n);
    });
  });
  counter(
    'xdplb_drops_total',
    "Frames dropped, by reason (rx_ring_full, rx_dropped, rx_invalid, tx_invalid: the kernel's counts)",
    ['reason'],
    (l, put) => {
      const s = l.stats();
      put({ reason: 'no_target' }, s.noTarget);
      put({ reason: 'parse_error' }, s.malformed);
      put({ reason: 'tx_ring_full' }, s.txRingFull);
      put({ reason: 'rx_ring_full' }, s.kernelRxRingFull ?? 0);
      put({ reason: 'rx_dropped' }, s.kernelRxDropped ?? 0);
      put({ reason: 'rx_invalid' }, s.kernelRxInvalid ?? 0);
      put({ reason: 'tx_invalid' }, s.kernelTxInvalid ?? 0);
    },
  );
  counter('xdplb_fill_ring_empty_total', 'Times the kernel found the fill ring empty (frames then count as rx_dropped)', [], (l, put) => {
    put({}, l.stats().kernelFillRingEmpty ?? 0);
  });
  return () => {
    const l = lb();
    if (l === null || !l.running) return 'not forwarding';
    return existsSync(shmPath(shm)) ? null : `table ${shm} is gone`;
  };
}
