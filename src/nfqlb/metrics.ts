// The Prometheus metrics of `nfqlb lb|flowlb --metrics`: prom-client collectors over the
// queues' counter blocks (counters.ts), the kernel's view of the queues
// (/proc/net/netfilter/nfnetlink_queue), the target tables and flowlb's flows. Everything is
// read when Prometheus scrapes; the data path only bumps typed-array words.
import { readFileSync } from 'node:fs';
import type { Registry } from 'prom-client';
import { type HealthCheck, type Put, scrapeMetric } from '../metrics.js';
import { kernelQueueStats } from '../nfqueue.js';
import { NFQLB_TABLE, TableFollower } from '../target-store.js';
import { sameInt32, type TargetTable } from '../target-table.js';
import { CT_STAT } from './conntrack.js';
import { CONNTRACK_COUNTERS_AT, fwmarkTotals, QUEUE_COUNTER as QC, QueueCounters } from './counters.js';

/** A metric made of counter-block words: each series sums its words (over the queues, or per queue). */
export interface QueueMetric {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  /** One series per queue (label `queue`) instead of the sum over all queues. */
  perQueue?: boolean;
  /** Label of the series below; without one, the only series is ''. */
  label?: string;
  series: Record<string, readonly number[]>;
}

/** The metrics read from the counter blocks; a new counter needs a word in QUEUE_COUNTER and a row here. */
export const QUEUE_METRICS: readonly QueueMetric[] = [
  { name: 'nfqlb_packets_total', help: 'Packets received from the queue', type: 'counter', perQueue: true, series: { '': [QC.packets] } },
  {
    name: 'nfqlb_batches_total',
    help: 'Batches received from the queue (one recvmmsg and one verdict send each)',
    type: 'counter',
    perQueue: true,
    series: { '': [QC.batches] },
  },
  {
    name: 'nfqlb_queue_bound',
    help: '1 while the queue is bound and served by the lb',
    type: 'gauge',
    perQueue: true,
    series: { '': [QC.bound] },
  },
  {
    name: 'nfqlb_enobufs_total',
    help: 'Socket receive-buffer overflows (the kernel dropped packets for us; updated every second)',
    type: 'counter',
    perQueue: true,
    series: { '': [QC.enobufs] },
  },
  {
    name: 'nfqlb_drops_total',
    help: 'Packets the lb dropped, by reason',
    type: 'counter',
    label: 'reason',
    series: {
      no_target: [QC.noTarget],
      no_flow_match: [QC.noFlowMatch],
      parse_error: [QC.parseErrors],
      frag_discarded: [QC.fragsDropped, QC.fragsInjectFailed],
      verdict_error: [QC.handlerErrors, QC.verdictErrors],
    },
  },
  {
    name: 'nfqlb_fragments_total',
    help: 'IP fragments, by what the lb did with them',
    type: 'counter',
    label: 'result',
    series: {
      stored: [QC.fragsStored],
      reinjected: [QC.fragsInjected],
      discarded: [QC.fragsDropped, QC.fragsInjectFailed],
      to_lb_tier: [QC.fragsToLbTier],
    },
  },
];

const CT = (stat: number): number => CONNTRACK_COUNTERS_AT + stat;

/** The flow table's metrics (--conntrack), from its CT_STAT words in each block. */
export const CONNTRACK_METRICS: readonly QueueMetric[] = [
  {
    name: 'nfqlb_conntrack_entries',
    help: 'Flow table entries in use (--conntrack)',
    type: 'gauge',
    perQueue: true,
    series: { '': [CT(CT_STAT.ENTRIES)] },
  },
  {
    name: 'nfqlb_conntrack_lookups_total',
    help:
      'Flow table lookups by result: hit (recorded target), miss_syn (new TCP connection), ' +
      'miss_non_syn (TCP flow not in the table), miss_other (new flow of another protocol)',
    type: 'counter',
    label: 'result',
    series: {
      hit: [CT(CT_STAT.HITS)],
      miss_syn: [CT(CT_STAT.MISS_SYN)],
      miss_non_syn: [CT(CT_STAT.MISS_NON_SYN)],
      miss_other: [CT(CT_STAT.MISS_OTHER)],
    },
  },
  {
    name: 'nfqlb_conntrack_draining_total',
    help: 'Packets sent to a draining (deactivated) target by their flow entry',
    type: 'counter',
    series: { '': [CT(CT_STAT.DRAINING)] },
  },
  {
    name: 'nfqlb_conntrack_evictions_total',
    help: 'Live flow entries evicted for a new flow (full bucket)',
    type: 'counter',
    series: { '': [CT(CT_STAT.EVICTIONS)] },
  },
  { name: 'nfqlb_conntrack_expired_total', help: 'Flow entries that timed out', type: 'counter', series: { '': [CT(CT_STAT.EXPIRED)] } },
  {
    name: 'nfqlb_conntrack_no_room_total',
    help: 'New flows not recorded (bucket full of recent flows): balanced statelessly',
    type: 'counter',
    series: { '': [CT(CT_STAT.NO_ROOM)] },
  },
];

export interface NfqlbMetricsSources {
  /** Queue numbers; queue i's counters are block i of `counters`. */
  queues: readonly number[];
  counters: SharedArrayBuffer;
  /** The target tables in use now, by shm name (lb: --tshm and --lbshm; flowlb: the flows' targets). */
  tables: () => string[];
  /** flowlb: the flows and how many packets each matched. */
  flows?: () => { name: string; matches: number }[];
  /** The queues keep a flow table (--conntrack). */
  conntrack?: boolean;
}

const TABLE_POLL_MS = 1000;

/** Registers the nfqlb metrics; returns the /healthz check and a stop for the table poll. */
export function registerNfqlbMetrics(registry: Registry, src: NfqlbMetricsSources): { health: HealthCheck; stop: () => void } {
  const blocks = src.queues.map((_, i) => new QueueCounters(src.counters, i));
  const sum = (words: readonly number[], only?: QueueCounters) => {
    let n = 0;
    for (const b of only === undefined ? blocks : [only]) for (const w of words) n += b.counters[w]!;
    return n;
  };
  for (const m of [...QUEUE_METRICS, ...(src.conntrack ? CONNTRACK_METRICS : [])]) {
    const labelNames = [...(m.perQueue ? ['queue'] : []), ...(m.label === undefined ? [] : [m.label])];
    const fill = (put: (labels: Record<string, string>, v: number) => void) => {
      for (const [value, words] of Object.entries(m.series)) {
        const labels: Record<string, string> = m.label === undefined ? {} : { [m.label]: value };
        if (!m.perQueue) put(labels, sum(words));
        else for (const [i, b] of blocks.entries()) put({ ...labels, queue: String(src.queues[i]) }, sum(words, b));
      }
    };
    scrapeMetric(m.type, registry, m.name, m.help, labelNames, fill);
  }

  const targets = (what: 'packets' | 'bytes') => (put: Put) => {
    for (const [fw, t] of fwmarkTotals(blocks)) put({ fwmark: fw < 0 ? 'other' : String(fw) }, t[what]);
  };
  scrapeMetric(
    'counter',
    registry,
    'nfqlb_target_packets_total',
    'Packets sent to each target, by the fwmark set',
    ['fwmark'],
    targets('packets'),
  );
  const bytes = 'Bytes sent to each target (the IP packet length the kernel reported), by fwmark';
  scrapeMetric('counter', registry, 'nfqlb_target_bytes_total', bytes, ['fwmark'], targets('bytes'));

  const kernel = () => {
    const text = readProc();
    return src.queues.map((q) => ({ queue: String(q), k: text === null ? undefined : kernelQueueStats(q, text) }));
  };
  const dropped = 'Packets the kernel dropped before they reached the lb (queue_full: --qlength; user: socket buffer full)';
  scrapeMetric('counter', registry, 'nfqlb_nfqueue_dropped_total', dropped, ['queue', 'reason'], (put) => {
    for (const { queue, k } of kernel()) {
      if (k === undefined) continue;
      put({ queue, reason: 'queue_full' }, k.queueDropped);
      put({ queue, reason: 'user' }, k.userDropped);
    }
  });
  scrapeMetric('gauge', registry, 'nfqlb_nfqueue_queue_length', 'Packets waiting in the kernel for a verdict', ['queue'], (put) => {
    for (const { queue, k } of kernel()) if (k !== undefined) put({ queue }, k.queued);
  });

  if (src.flows !== undefined) {
    const flows = src.flows;
    scrapeMetric('counter', registry, 'nfqlb_flow_matches_total', 'Packets that matched each flow (flowlb)', ['flow'], (put) => {
      for (const f of flows()) put({ flow: f.name }, f.matches);
    });
  }

  const watch = new TableWatch(src.tables);
  const perTable = (value: (t: WatchedTable) => number | null) => (put: Put) => {
    watch.poll();
    for (const [table, t] of watch.tables) {
      const v = value(t);
      if (v !== null) put({ table }, v);
    }
  };
  const activeCount = (t: TargetTable) => t.active.reduce((n, fw) => n + (fw >= 0 ? 1 : 0), 0);
  scrapeMetric(
    'gauge',
    registry,
    'nfqlb_targets_active',
    'Active targets in the table',
    ['table'],
    perTable((t) => (t.follower ? activeCount(t.follower.table) : null)),
  );
  scrapeMetric(
    'gauge',
    registry,
    'nfqlb_table_size',
    'Maglev lookup table size M',
    ['table'],
    perTable((t) => t.follower?.table.M ?? null),
  );
  scrapeMetric(
    'counter',
    registry,
    'nfqlb_table_changes_total',
    'Changes of the active targets seen (polled every second; init counts as one)',
    ['table'],
    perTable((t) => t.changes),
  );
  scrapeMetric(
    'gauge',
    registry,
    'nfqlb_table_last_change_seconds',
    'Unix time of the last change seen (or when the lb first read the table)',
    ['table'],
    perTable((t) => t.lastChange),
  );
  const timer = setInterval(() => watch.poll(), TABLE_POLL_MS);
  timer.unref();

  const health: HealthCheck = () => {
    const text = readProc();
    const problems: string[] = [];
    blocks.forEach((b, i) => {
      const q = src.queues[i]!;
      if (b.counters[QC.bound] !== 1 || text === null || kernelQueueStats(q, text) === undefined) problems.push(`queue ${q} not bound`);
    });
    watch.poll();
    for (const [name, t] of watch.tables) if (t.error !== null) problems.push(`table ${name}: ${t.error}`);
    return problems.length === 0 ? null : problems.join('; ');
  };
  return { health, stop: () => clearInterval(timer) };
}

function readProc(): string | null {
  try {
    return readFileSync('/proc/net/netfilter/nfnetlink_queue', 'utf8');
  } catch {
    return null;
  }
}

interface WatchedTable {
  /** Null until the table could be read once. */
  follower: TableFollower<TargetTable> | null;
  /** active[] when last looked at, to see changes made by `activate`/`deactivate`. */
  active: Int32Array;
  changes: number;
  lastChange: number;
  error: string | null;
}

/** The tables the lb uses, followed across `init` (which counts as a change), with the changes seen. */
class TableWatch {
  readonly tables = new Map<string, WatchedTable>();

  constructor(private readonly names: () => string[]) {}

  poll(): void {
    const names = new Set(this.names());
    for (const name of this.tables.keys()) if (!names.has(name)) this.tables.delete(name);
    const now = Date.now() / 1000;
    for (const name of names) {
      const known = this.tables.get(name);
      const t = known ?? { follower: null, active: new Int32Array(0), changes: 0, lastChange: now, error: null };
      if (known === undefined) this.tables.set(name, t);
      if (!this.check(t, name)) continue;
      // Counting starts at the first read of a table.
      if (known !== undefined) t.changes++;
      t.active = t.follower!.table.active.slice();
      t.lastChange = now;
    }
  }

  /** Whether t's table changed since the last look: re-created, its targets changed, or first read. */
  private check(t: WatchedTable, name: string): boolean {
    if (t.follower === null) {
      try {
        // Reported through /healthz, not logged: the lb's own followers log.
        t.follower = new TableFollower(NFQLB_TABLE, name, { log: false });
      } catch (e) {
        t.error = (e as Error).message;
        return false;
      }
      t.error = null;
      return true;
    }
    const replaced = t.follower.check();
    t.error = t.follower.error;
    return replaced || !sameInt32(t.follower.table.active, t.active);
  }
}
