// What the nfqlb data path counts, per queue, for `--metrics` and the "queue closed" log line.
// Each queue's thread writes only its own block of one SharedArrayBuffer (plain typed-array
// increments: no library call, no allocation, no atomics — one writer per word); the main
// thread reads every block lazily, when Prometheus scrapes. Float64 words are exact to 2^53.
//
// Block layout (QueueCounters.BYTES each, queue statsIndex's at statsIndex * BYTES):
//   float64 counters[COUNTER_WORDS]                     QUEUE_COUNTER words, the rest spare
//   uint32  fwmarkKeys[FWMARK_SLOTS]                    fwmark + 1 of each slot, 0 = free
//   float64 fwmarkPackets[FWMARK_SLOTS + 1], fwmarkBytes[FWMARK_SLOTS + 1]   (+1: overflow)

import { CT_STAT } from './conntrack.js';

/**
 * Word of each counter in a block. The names are the keys of the "queue closed" log record.
 * To count something new: add a word here (below COUNTER_WORDS), bump it on the data path,
 * and describe its metric in QUEUE_METRICS (metrics.ts).
 */
export const QUEUE_COUNTER = {
  /** Packets and batches handed to the balancer (counted only with --metrics). */
  packets: 0,
  batches: 1,
  /** Copied from the NfQueue's native counters once a second (they live in the addon). */
  enobufs: 2,
  verdictErrors: 3,
  /** Packets that got the error verdict because the verdict function threw. */
  handlerErrors: 4,
  /** Packets dropped: no active target (without --notargets_fwmark), no flow (without --nolb_fwmark), not IP. */
  noTarget: 5,
  noFlowMatch: 6,
  parseErrors: 7,
  /** Fragments sent to the LB that owns their addresses (--lbshm). */
  fragsToLbTier: 8,
  /** Fragments stored until their first fragment comes (then re-injected through --tun). */
  fragsStored: 9,
  fragsInjected: 10,
  fragsInjectFailed: 11,
  /** Fragments dropped: no verdict and no room to store them, or a stored "drop" verdict. */
  fragsDropped: 12,
  /** 1 while the queue is bound and served (a gauge for /healthz). */
  bound: 13,
} as const;

export type QueueCounterName = keyof typeof QUEUE_COUNTER;

const COUNTER_WORDS = 32;
/** The queue's flow table (--conntrack) counts into its block from this word: CT_STAT (conntrack.ts). */
export const CONNTRACK_COUNTERS_AT = 16;
if (CONNTRACK_COUNTERS_AT + CT_STAT.WORDS > COUNTER_WORDS) throw new Error('counter block too small for the conntrack counters');
/** Distinct fwmarks counted per queue; later ones share the overflow slot (label "other"). */
export const MAX_FWMARKS = 256;
/** Open addressing at most half full, so a lookup probes about one slot. */
const FWMARK_SLOTS = 2 * MAX_FWMARKS;
const FWMARK_SHIFT = 32 - Math.log2(FWMARK_SLOTS);
const OVERFLOW = FWMARK_SLOTS;

/** One queue's block: the queue's thread writes it, anyone may read it. */
export class QueueCounters {
  static readonly BYTES = COUNTER_WORDS * 8 + FWMARK_SLOTS * 4 + 2 * (FWMARK_SLOTS + 1) * 8;

  /** QUEUE_COUNTER words. */
  readonly counters: Float64Array;
  readonly fwmarkKeys: Uint32Array;
  readonly fwmarkPackets: Float64Array;
  readonly fwmarkBytes: Float64Array;
  private fwmarks = 0;

  /** A zeroed buffer with one block per queue (shared with the queues' worker threads). */
  static allocate(queues: number): SharedArrayBuffer {
    return new SharedArrayBuffer(queues * QueueCounters.BYTES);
  }

  constructor(buffer: ArrayBufferLike = new ArrayBuffer(QueueCounters.BYTES), index = 0) {
    let at = index * QueueCounters.BYTES;
    this.counters = new Float64Array(buffer, at, COUNTER_WORDS);
    at += COUNTER_WORDS * 8;
    this.fwmarkKeys = new Uint32Array(buffer, at, FWMARK_SLOTS);
    at += FWMARK_SLOTS * 4;
    this.fwmarkPackets = new Float64Array(buffer, at, FWMARK_SLOTS + 1);
    at += (FWMARK_SLOTS + 1) * 8;
    this.fwmarkBytes = new Float64Array(buffer, at, FWMARK_SLOTS + 1);
  }

  /**
   * A packet accepted with fwmark `fw` (0..2^31-1), `len` bytes long. A small hash table of
   * our own instead of a Map: no allocation, and a reader in another thread can walk it.
   */
  countTarget(fw: number, len: number): void {
    const key = fw + 1;
    const keys = this.fwmarkKeys;
    let i = Math.imul(key, 0x9e3779b1) >>> FWMARK_SHIFT;
    for (;;) {
      const k = keys[i]!;
      if (k === key) break;
      if (k === 0) {
        if (this.fwmarks < MAX_FWMARKS) {
          keys[i] = key;
          this.fwmarks++;
        } else i = OVERFLOW;
        break;
      }
      i = (i + 1) & (FWMARK_SLOTS - 1);
    }
    this.fwmarkPackets[i]!++;
    this.fwmarkBytes[i]! += len;
  }

  /** The named counters, for a log record. */
  /** The words a ConnTrack counts into (its CT_STAT indices). */
  conntrackCounters(): Float64Array {
    return this.counters.subarray(CONNTRACK_COUNTERS_AT, CONNTRACK_COUNTERS_AT + CT_STAT.WORDS);
  }

  record(): Record<QueueCounterName, number> {
    const r = {} as Record<QueueCounterName, number>;
    for (const [name, word] of Object.entries(QUEUE_COUNTER)) r[name as QueueCounterName] = this.counters[word]!;
    return r;
  }
}

/** Packets and bytes per fwmark over all blocks; key -1 is the overflow ("other"). */
export function fwmarkTotals(blocks: readonly QueueCounters[]): Map<number, { packets: number; bytes: number }> {
  const totals = new Map<number, { packets: number; bytes: number }>();
  const add = (fw: number, packets: number, bytes: number): void => {
    const t = totals.get(fw);
    if (t === undefined) totals.set(fw, { packets, bytes });
    else {
      t.packets += packets;
      t.bytes += bytes;
    }
  };
  for (const b of blocks) {
    b.fwmarkKeys.forEach((k, i) => {
      if (k !== 0) add(k - 1, b.fwmarkPackets[i]!, b.fwmarkBytes[i]!);
    });
    if (b.fwmarkPackets[OVERFLOW]! > 0) add(-1, b.fwmarkPackets[OVERFLOW]!, b.fwmarkBytes[OVERFLOW]!);
  }
  return totals;
}
