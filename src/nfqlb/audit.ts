// The control channels' audit trail: every accepted change (flow-set, flow-delete,
// trace-flow-*, a trace session, a log level change) at info with its origin, and every
// malformed or refused message at warn. The audit logger keeps level info whatever
// `nfqlb loglevel` does to the rest, so a change is never lost to a quiet log level; the
// warnings go through a token bucket so a flood of bad messages cannot fill the disk.
import { pino } from 'pino';
import { log } from '../log.js';
import type { Peer } from './control-auth.js';

// Its own logger (same name, same stdout): a child would follow the parent's level changes.
const audit = pino({ name: 'tslb', base: { pid: process.pid, audit: true }, level: log.levelVal > 30 ? log.level : 'info' });

/**
 * A token bucket: `burst` lines at once, then `perSecond`. What it holds back is counted
 * and reported with the next line let through (or by `flush`).
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  suppressed = 0;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Takes a token; false (and one more suppressed) when there is none. */
  take(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    this.suppressed++;
    return false;
  }

  /** The count held back since the last call, reset. */
  drain(): number {
    const n = this.suppressed;
    this.suppressed = 0;
    return n;
  }
}

const warnings = new TokenBucket(2, 20);
const flushTimer = setInterval(() => {
  const n = warnings.drain();
  if (n > 0) audit.warn({ suppressed: n }, 'control channel: warnings suppressed');
}, 10_000);
flushTimer.unref();

/** An accepted change. */
export function auditChange(peer: Peer, fields: Record<string, unknown>, msg: string): void {
  audit.info({ peer, ...fields }, msg);
}

/** A malformed or refused message: rate-limited. */
export function auditRefusal(peer: Peer, fields: Record<string, unknown>, msg: string): void {
  if (!warnings.take()) return;
  const suppressed = warnings.drain();
  audit.warn({ peer, ...fields, ...(suppressed > 0 ? { suppressed } : {}) }, msg);
}
