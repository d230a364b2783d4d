// `nfqlb follow`: one LB's table follows a service in the registry (docs/registry.md). It lists
// the service, applies the desired set to the local table through TargetStore (the same atomic
// publish and drain as `activate`/`deactivate`, so every lb reading the shm follows, the
// reference C nfqlb included), then watches from the listed revision and reads again on each
// change. It also reads again every `relistMs` and after any watch error: the etcd3 client's
// watchers have been seen to go silent after reconnects, and a fresh read is the safety net.
//
// The local table is never cleared for want of etcd: until a read succeeds (at start, or after
// etcd went away) it stays exactly as it was, so lbs restarted meanwhile find the last table.
// Nothing in the registry's content stops the follower: a bad key is left out (and counted),
// a missing or bad config leaves the table as it is.
import { existsSync } from 'node:fs';
import { Counter, Gauge, Histogram, type Registry as MetricsRegistry } from 'prom-client';
import { log } from '../log.js';
import { newRegistry } from '../metrics.js';
import { shmPath } from '../shm.js';
import { NFQLB_TABLE, TargetStore } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import type { EtcdOptions, Registry } from './etcd.js';
import type { DesiredSet, RejectedEntry, RejectKind, ServiceConfig, ServiceKeys } from './model.js';

export interface FollowerOptions {
  keys: ServiceKeys;
  /** The local table's shm name. */
  shm: string;
  etcd: EtcdOptions;
  /** ms between the periodic re-reads (default 30000). */
  relistMs?: number;
  /** ms before the first retry after a failure; doubles up to 1 s (default 250). */
  retryMs?: number;
  /** Where the follower's metrics go (default a new registry with the process metrics). */
  metrics?: MetricsRegistry;
  /** How a client is made (default Registry.connect; a test may give another). */
  connect?: (o: EtcdOptions) => Promise<Registry>;
}

/** What onPublish reports: the table as it now is, and the desired set it came from. */
export interface Publication {
  /** The etcd revision of the read applied. */
  revision: number;
  desired: DesiredSet;
  /** Slots the health check holds down (setDown), applied as draining. */
  down: ReadonlySet<number>;
  /** Whether the table's targets changed. */
  changed: boolean;
  /** tableHash of the published lookup array. */
  hash: number;
  /** Date.now() when the table was published. */
  at: number;
}

/** The table a desired set asks for: slot -> fwmark of the targets that get new flows, and those that drain. */
export interface TableSlots {
  slots: Map<number, number>;
  draining: Set<number>;
}

/**
 * The slots to publish: the active targets whose slot is not held down. Draining targets (the
 * registry's, and the active ones held down) keep their place in the drain list: an lb with
 * --conntrack keeps their flows.
 */
export function tableSlots(desired: DesiredSet, down: ReadonlySet<number>): TableSlots {
  const slots = new Map<number, number>();
  const draining = new Set<number>();
  for (const t of desired.targets) {
    if (t.state === 'active' && !down.has(t.slot)) slots.set(t.slot, t.fwmark);
    else draining.add(t.fwmark);
  }
  return { slots, draining };
}

/** 32-bit FNV-1a over the lookup array's int32 values (little-endian bytes): equal tables, equal hashes. */
export function tableHash(lookup: Int32Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < lookup.length; i++) {
    const v = lookup[i]!;
    for (let b = 0; b < 32; b += 8) {
      h ^= (v >>> b) & 0xff;
      h = Math.imul(h, 0x01000193);
    }
  }
  return h >>> 0;
}

/**
 * Lets through at most one warning per key per `intervalMs`, and at most `burst` per interval
 * in all: a writer that keeps putting bad keys cannot flood the log.
 */
export class WarnLimiter {
  private readonly last = new Map<string, number>();
  private windowStart = Number.NEGATIVE_INFINITY;
  private inWindow = 0;

  constructor(
    private readonly intervalMs = 60_000,
    private readonly burst = 10,
  ) {}

  allow(key: string, now: number): boolean {
    if (now - this.windowStart >= this.intervalMs) {
      this.windowStart = now;
      this.inWindow = 0;
      // Keys not seen for an interval may warn again: forget them (the map stays small).
      for (const [k, t] of this.last) if (now - t >= this.intervalMs) this.last.delete(k);
    }
    const last = this.last.get(key);
    if (last !== undefined && now - last < this.intervalMs) return false;
    if (this.inWindow >= this.burst) return false;
    this.inWindow++;
    this.last.set(key, now);
    return true;
  }
}

const DEFAULT_RELIST_MS = 30_000;
const DEFAULT_RETRY_MS = 250;
const MAX_RETRY_MS = 1000;

interface Metrics {
  connected: Gauge;
  revision: Gauge;
  apply: Histogram;
  hash: Gauge<'service'>;
  rejected: Counter<'reason'>;
}

function registerMetrics(registry: MetricsRegistry): Metrics {
  const registers = [registry];
  const connected = new Gauge({ name: 'nfqlb_registry_connected', help: '1 when the last read or watch of etcd succeeded', registers });
  const revision = new Gauge({ name: 'nfqlb_registry_revision', help: 'The etcd revision of the desired set last applied', registers });
  const apply = new Histogram({
    name: 'nfqlb_registry_apply_seconds',
    help: "Seconds from a target's ts (the writer's clock) to the table published with its change",
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10],
    registers,
  });
  const hash = new Gauge({
    name: 'nfqlb_table_hash',
    help: 'FNV-1a of the published lookup table: equal on every LB of a tier whose tables agree',
    // Followers of several services may share a job: their tables are compared per service.
    labelNames: ['service'],
    registers,
  });
  const rejected = new Counter({
    name: 'nfqlb_registry_rejected_total',
    help: 'Registry keys rejected (each key once per value), by reason',
    labelNames: ['reason'],
    registers,
  });
  return { connected, revision, apply, hash, rejected };
}

export class RegistryFollower {
  /** The registry its metrics are in: serve it on --metrics, add others to it. */
  readonly metrics: MetricsRegistry;
  private readonly m: Metrics;
  private readonly relistMs: number;
  private readonly retryMs: number;
  private readonly connectFn: (o: EtcdOptions) => Promise<Registry>;
  private readonly warnings = new WarnLimiter();
  private readonly listeners: ((p: Publication) => void)[] = [];
  private reg: Registry | null = null;
  private stopWatch: (() => Promise<void>) | null = null;
  private watchGeneration = 0;
  private desiredSet: DesiredSet | null = null;
  /** The revision of the last desired set published to the table (0: none yet). */
  private publishedRevision = 0;
  private down: ReadonlySet<number> = new Set();
  /** The rejected keys of the last read (key, value and reason): each is counted once. */
  private counted = new Set<string>();
  private reading = false;
  /** The watch told of a change since the last read began. */
  private heard = false;
  private again = false;
  private stopped = false;
  private retry: NodeJS.Timeout | null = null;
  private relist: NodeJS.Timeout | null = null;
  private nextRetryMs: number;
  private lastError: string | null = 'not read yet';
  private firstRead: { resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(private readonly o: FollowerOptions) {
    this.metrics = o.metrics ?? newRegistry();
    this.m = registerMetrics(this.metrics);
    this.relistMs = o.relistMs ?? DEFAULT_RELIST_MS;
    this.retryMs = o.retryMs ?? DEFAULT_RETRY_MS;
    this.nextRetryMs = this.retryMs;
    this.connectFn = o.connect ?? (async (e) => (await import('./etcd.js')).Registry.connect(e));
    this.m.connected.set(0);
    // The table as it is (after a restart: the last one) is what lbs use until the first read.
    const t = this.localTable();
    if (t) this.m.hash.set({ service: o.keys.service }, tableHash(t.targets.lookup));
  }

  /** The desired set last applied, or null before the first read. */
  get desired(): DesiredSet | null {
    return this.desiredSet;
  }

  /** The etcd revision last applied (0 before the first read). */
  get revision(): number {
    return this.desiredSet?.revision ?? 0;
  }

  /** Whether the last read or watch of etcd succeeded. */
  get connected(): boolean {
    return this.lastError === null;
  }

  /** Why the follower is not connected (for /healthz), or null. */
  get problem(): string | null {
    return this.lastError;
  }

  /** Calls `cb` after each table publication (also when a read changed nothing). */
  onPublish(cb: (p: Publication) => void): void {
    this.listeners.push(cb);
  }

  /**
   * Holds these slots down (a health check's verdict): their targets are applied as draining, as
   * if the registry said so, until a later setDown leaves them out. Applied at once when the
   * registry has been read.
   */
  setDown(slots: ReadonlySet<number>): void {
    this.down = new Set(slots);
    if (this.desiredSet) this.apply(this.desiredSet);
  }

  /**
   * Starts following. Resolves after the first successful read and apply, or rejects with the
   * error of the first failure (a RegistryError); either way the follower goes on trying until
   * stop(), and until a read succeeds the table stays as it is.
   */
  start(): Promise<void> {
    const first = new Promise<void>((resolve, reject) => {
      this.firstRead = { resolve, reject };
    });
    this.relist = setInterval(() => this.refresh(), this.relistMs);
    this.refresh();
    return first;
  }

  /** Stops watching and closes the client; the table stays as it is. */
  stop(): void {
    this.stopped = true;
    if (this.relist) clearInterval(this.relist);
    if (this.retry) clearTimeout(this.retry);
    this.disconnect();
  }

  /** Reads the service and applies it; coalesces: a change during a read makes one more read. */
  private refresh(): void {
    if (this.stopped || this.retry) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    void this.readLoop();
  }

  private async readLoop(): Promise<void> {
    try {
      do {
        this.again = false;
        const heard = this.heard;
        this.heard = false;
        this.reg ??= await this.connectFn(this.o.etcd);
        const reg = this.reg;
        const d = await reg.read(this.o.keys);
        if (this.stopped) return;
        const before = this.desiredSet;
        this.apply(d);
        if (!this.stopWatch) await this.watch(reg, d.revision);
        else if (before && !heard && differs(before, d)) {
          // The watch did not tell of this change: it may be one of the silent ones. Start anew.
          log.warn({ revision: d.revision }, 'registry read found a change the watch missed: watching anew');
          this.cancelWatch();
          await this.watch(reg, d.revision);
        }
        if (this.lastError !== null) log.info({ revision: d.revision, service: this.o.keys.service }, 'registry connected');
        this.lastError = null;
        this.m.connected.set(1);
        this.nextRetryMs = this.retryMs;
        this.firstRead?.resolve();
        this.firstRead = null;
      } while (this.again && !this.stopped);
    } catch (e) {
      this.failed(e as Error);
    } finally {
      this.reading = false;
    }
  }

  private async watch(reg: Registry, revision: number): Promise<void> {
    // A watch given up (cancelled, its client closed) may still call back: only the current one counts.
    const generation = ++this.watchGeneration;
    const current = () => generation === this.watchGeneration && !this.stopped;
    this.stopWatch = await reg.watch(
      this.o.keys,
      revision,
      () => {
        if (!current()) return;
        this.heard = true;
        this.refresh();
      },
      (e) => {
        if (current()) this.failed(e);
      },
    );
  }

  /** A read or the watch failed: the table stays; a fresh client tries again soon. */
  private failed(e: Error): void {
    if (this.stopped) return;
    if (this.firstRead) {
      const first = this.firstRead;
      this.firstRead = null;
      first.reject(e);
    }
    if (this.lastError === null) log.warn({ err: e.message, shm: this.o.shm }, 'registry unreachable: the table stays as it is');
    this.lastError = e.message;
    this.m.connected.set(0);
    this.disconnect();
    if (this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.refresh();
    }, this.nextRetryMs);
    this.nextRetryMs = Math.min(MAX_RETRY_MS, this.nextRetryMs * 2);
  }

  /** Cancels the watch without waiting for etcd's answer (which a lost connection never sends). */
  private cancelWatch(): void {
    const stop = this.stopWatch;
    this.stopWatch = null;
    this.watchGeneration++;
    stop?.().catch(() => undefined);
  }

  private disconnect(): void {
    const reg = this.reg;
    this.reg = null;
    this.cancelWatch();
    reg?.close();
  }

  /** The local table, or null when there is none or it is not a table. */
  private localTable(): TargetStore<TargetTable> | null {
    if (!existsSync(shmPath(this.o.shm))) return null;
    try {
      return TargetStore.open(NFQLB_TABLE, this.o.shm, true);
    } catch (e) {
      log.warn({ shm: this.o.shm, err: (e as Error).message }, 'local table unreadable: it will be made anew');
      return null;
    }
  }

  /** Applies a desired set (and the slots held down) to the local table, then tells the listeners. */
  private apply(d: DesiredSet): void {
    this.desiredSet = d;
    this.m.revision.set(d.revision);
    this.countRejected(d.rejected);
    // No config (or a bad one): nothing says what the table should be; keep it.
    if (d.config === null) return;
    let published: { store: TargetStore<TargetTable>; changed: boolean };
    try {
      published = this.publish(d.config, tableSlots(d, this.down));
    } catch (e) {
      // /dev/shm full, a full drain list: the table stays as it is; the next read tries again.
      if (this.warnings.allow('\0apply', Date.now())) {
        log.warn({ shm: this.o.shm, err: (e as Error).message }, 'cannot apply the registry to the table');
      }
      return;
    }
    const at = Date.now();
    const hash = tableHash(published.store.targets.lookup);
    this.m.hash.set({ service: this.o.keys.service }, hash);
    // Changed since the last publication (not on the first: those changes are old news).
    if (this.publishedRevision > 0) {
      for (const t of d.targets) {
        if (t.modRevision > this.publishedRevision && t.ts !== null) this.m.apply.observe(Math.max(0, at - t.ts) / 1000);
      }
    }
    this.publishedRevision = d.revision;
    const p: Publication = { revision: d.revision, desired: d, down: this.down, changed: published.changed, hash, at };
    for (const cb of this.listeners) {
      try {
        cb(p);
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'publish listener failed');
      }
    }
  }

  /** Makes the local table hold `slots` (made anew for another M or N), and the drain list `draining`. */
  private publish(config: ServiceConfig, { slots, draining }: TableSlots): { store: TargetStore<TargetTable>; changed: boolean } {
    const { M, N } = config;
    let store = this.localTable();
    if (store === null || store.targets.M !== M || store.targets.N !== N) {
      const ownFwmark = store?.targets.ownFwmark ?? 0;
      if (store) log.info({ shm: this.o.shm, from: { M: store.targets.M, N: store.targets.N }, to: { M, N } }, 'table re-created');
      else log.info({ shm: this.o.shm, M, N }, 'table created');
      // As `nfqlb init` does: a new file renamed over the name; running lbs switch to it.
      store = TargetStore.create(NFQLB_TABLE, this.o.shm, { M, N, ownFwmark });
    }
    const changed = store.apply(slots);
    // What leaves the table drains only while the registry (or the health check) says so:
    // a deleted target is gone, its flows go back to Maglev.
    const inTable = new Set(slots.values());
    const dead = store.draining().filter((fw) => !draining.has(fw) && !inTable.has(fw));
    if (dead.length > 0) store.deactivate(dead, { now: true });
    return { store, changed };
  }

  /** Counts each rejected key once per value, and warns (rate-limited) naming it. */
  private countRejected(rejected: readonly RejectedEntry[]): void {
    const now = Date.now();
    const seen = new Set<string>();
    for (const r of rejected) {
      const id = `${r.key}\n${r.value}\n${r.reason}`;
      seen.add(id);
      if (this.counted.has(id)) continue;
      this.m.rejected.inc({ reason: r.kind satisfies RejectKind });
      if (this.warnings.allow(r.key, now)) log.warn({ key: r.key, reason: r.reason, value: r.value }, 'registry key rejected: ignored');
    }
    this.counted = seen;
  }
}

/** Whether two reads ask for different tables (revision aside). */
function differs(a: DesiredSet, b: DesiredSet): boolean {
  const t = (d: DesiredSet) => JSON.stringify([d.config, d.targets.map((x) => [x.slot, x.fwmark, x.state])]);
  return t(a) !== t(b);
}
