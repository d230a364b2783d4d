// What a traffic run of a lab test gives: the loss report per family, with its plot and stats.
import type { LossReport, ScaleEvent } from './report.js';
import type { Family } from './topology.js';

export interface ScaleRun {
  family: Family;
  events: ScaleEvent[];
  report: LossReport;
  /** Servers of the lab (the loss report's denominator for "k of N backends"). */
  nservers: number;
  statsFile: string;
  plotFile: string;
  /** --bgp LB tests: lb stopped/started -> gateway route changed, per event. */
  convergence: Convergence[];
  /** Longest wait for an echo in the run (ms): the outage the clients saw. */
  maxDelay?: number;
}

export interface Convergence {
  kind: ScaleEvent['kind'];
  how: string;
  /** ms from the signal (or start) to the gateway's IPv4 and IPv6 VIP routes having changed. */
  ms: Record<Family, number>;
  /** ms from the signal (or start) to the lb process having exited (or logged that it serves). */
  processMs: number;
}
