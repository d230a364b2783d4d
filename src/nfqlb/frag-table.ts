// The fragment table: IP fragments after the first carry no ports, so they cannot be hashed
// like the rest of their flow. The first fragment's verdict (its fwmark) is stored under
// (source, destination, fragment id) and later fragments look it up. A later fragment that
// arrives before the first is copied into a preallocated slot (the original is dropped) and
// handed back when the first arrives, to be re-injected through a tun device.
//
// Sizing and counters follow the reference nfqlb's fragment table (--ft_size, --ft_buckets,
// --ft_frag, --ft_ttl and its `nfqlb stats` fields). Entries are never removed explicitly:
// they time out `ttlMs` after the first fragment (or stored fragment) created them, and are
// reclaimed when their bucket is next used or by sweep(). Everything is preallocated; no
// method allocates.
import { addressWords, type PacketInfo } from '../packet.js';

export interface FragTableOptions {
  /** Hash buckets (--ft_size, default 500). */
  size: number;
  /** Extra entries for hash collisions (--ft_buckets, default 500). */
  buckets: number;
  /** Later fragments that may wait for their first one (--ft_frag, default 100; 0 without --tun). */
  maxFragments: number;
  /** Largest fragment stored (--mtu, default 1500). */
  mtu: number;
  /** Entry lifetime in milliseconds (--ft_ttl, default 200). */
  ttlMs: number;
}

/**
 * The counters, as 32-bit words in the reference's `struct fragStats` layout (72 bytes, so a
 * stats file holds one such block per queue and the reference's `nfqlb stats` reads the first).
 */
export const FRAG_STAT = {
  TTL_NANOS_LO: 0,
  TTL_NANOS_HI: 1,
  SIZE: 2,
  ACTIVE: 3,
  COLLISIONS: 4,
  INSERTS: 5,
  REJECTED: 6,
  LOOKUPS: 7,
  OBJ_GC: 8,
  MTU: 10,
  BUCKETS_MAX: 11,
  BUCKETS_ALLOCATED: 12,
  BUCKETS_USED: 13,
  FRAGS_MAX: 14,
  FRAGS_DISCARDED: 15,
  FRAGS_ALLOCATED: 16,
  RE_ASSEMBLED: 17,
  WORDS: 18,
} as const;
export const FRAG_STATS_BYTES = FRAG_STAT.WORDS * 4;

/** lookupOrStore: the fragment was copied and waits for its first fragment (drop the original). */
export const FRAG_STORED = -2;
/** lookupOrStore: no verdict and no room to store it (drop). Also a stored verdict of "drop". */
export const FRAG_DROP = -1;

/** Receives each stored fragment when its first fragment arrives: pool[off, off + len). */
export type InjectFn = (pool: Uint8Array, off: number, len: number) => void;

const FREE = 0;
const STORING = 1; // no first fragment yet: later fragments are stored
const VALID = 2; // the first fragment's verdict is known
const POISONED = 3; // a fragment was lost: the datagram is dropped

const KEY_WORDS = 9; // src[4], dst[4], id
const NONE = -1;

export class FragTable {
  readonly size: number;
  readonly mtu: number;
  readonly ttlMs: number;
  /** The counters (FRAG_STAT words); a view of shared memory when the caller passes one. */
  readonly stats: Uint32Array;

  // Entry e: buckets' heads are entries 0..size-1; collision entries follow, chained by next[].
  private readonly state: Uint8Array;
  private readonly value: Int32Array;
  private readonly expires: Float64Array;
  private readonly next: Int32Array;
  private readonly keys: Uint32Array;
  private readonly fragHead: Int32Array;
  private readonly fragTail: Int32Array;
  private freeEntry: number;

  // Stored fragments: slot s is pool[s * mtu, s * mtu + fragLen[s]).
  readonly pool: Uint8Array;
  private readonly fragLen: Int32Array;
  private readonly fragNext: Int32Array;
  private freeFrag: number;

  private readonly key = new Uint32Array(KEY_WORDS);

  constructor(o: FragTableOptions, stats?: Uint32Array) {
    const size = count('size', o.size, 1);
    const buckets = count('buckets', o.buckets, 0);
    const maxFragments = count('maxFragments', o.maxFragments, 0);
    const mtu = count('mtu', o.mtu, 68);
    const ttlMs = count('ttlMs', o.ttlMs, 1);
    if (stats !== undefined && stats.length < FRAG_STAT.WORDS) throw new RangeError(`frag table: stats needs ${FRAG_STAT.WORDS} words`);
    this.size = size;
    this.mtu = mtu;
    this.ttlMs = ttlMs;
    const entries = size + buckets;
    this.state = new Uint8Array(entries);
    this.value = new Int32Array(entries);
    this.expires = new Float64Array(entries);
    this.next = new Int32Array(entries).fill(NONE);
    this.keys = new Uint32Array(entries * KEY_WORDS);
    this.fragHead = new Int32Array(entries).fill(NONE);
    this.fragTail = new Int32Array(entries).fill(NONE);
    // Collision entries form the free list through next[].
    for (let e = size; e < entries - 1; e++) this.next[e] = e + 1;
    this.freeEntry = buckets > 0 ? size : NONE;

    this.pool = new Uint8Array(maxFragments * mtu);
    this.fragLen = new Int32Array(maxFragments);
    this.fragNext = new Int32Array(maxFragments);
    for (let s = 0; s < maxFragments - 1; s++) this.fragNext[s] = s + 1;
    if (maxFragments > 0) this.fragNext[maxFragments - 1] = NONE;
    this.freeFrag = maxFragments > 0 ? 0 : NONE;

    this.stats = stats ?? new Uint32Array(FRAG_STAT.WORDS);
    this.stats.fill(0, 0, FRAG_STAT.WORDS);
    const ttlNanos = ttlMs * 1e6;
    this.stats[FRAG_STAT.TTL_NANOS_LO] = ttlNanos % 2 ** 32;
    this.stats[FRAG_STAT.TTL_NANOS_HI] = Math.floor(ttlNanos / 2 ** 32);
    this.stats[FRAG_STAT.SIZE] = size;
    this.stats[FRAG_STAT.MTU] = mtu;
    this.stats[FRAG_STAT.BUCKETS_MAX] = buckets;
    this.stats[FRAG_STAT.FRAGS_MAX] = maxFragments;
  }

  /**
   * A first fragment (p parsed from it) gets verdict `fwmark` (negative = drop). Stored later
   * fragments of its datagram go to `inject`, in arrival order. Returns how many were
   * injected, or -1 when the first fragment must be dropped: no room for an entry, or the
   * datagram already lost a fragment. A repeated first fragment keeps the first verdict.
   */
  insertFirst(buf: Uint8Array, p: PacketInfo, fwmark: number, nowMs: number, inject: InjectFn): number {
    this.makeKey(buf, p);
    const e = this.find(nowMs, true);
    if (e === NONE || this.state[e] === POISONED) return -1;
    if (this.state[e] === VALID) return 0;
    this.value[e] = fwmark;
    this.state[e] = VALID;
    let n = 0;
    for (let s = this.fragHead[e]!; s !== NONE; ) {
      const following = this.fragNext[s]!;
      inject(this.pool, s * this.mtu, this.fragLen[s]!);
      this.releaseFrag(s);
      n++;
      s = following;
    }
    this.fragHead[e] = NONE;
    this.fragTail[e] = NONE;
    return n;
  }

  /**
   * A later fragment buf[off, off + len): its datagram's verdict (a fwmark, or FRAG_DROP) if
   * the first fragment was seen; otherwise it is copied and FRAG_STORED is returned, or
   * FRAG_DROP when it cannot be (no slot: the datagram is then poisoned, its stored
   * fragments discarded, because it can never be delivered whole).
   */
  lookupOrStore(buf: Uint8Array, off: number, len: number, p: PacketInfo, nowMs: number): number {
    this.makeKey(buf, p);
    const e = this.find(nowMs, true);
    if (e === NONE) return FRAG_DROP;
    const state = this.state[e]!;
    if (state === VALID) return this.value[e]! < 0 ? FRAG_DROP : this.value[e]!;
    if (state === POISONED) return FRAG_DROP;
    const s = this.freeFrag;
    if (s === NONE || len > this.mtu || len <= 0) {
      this.discardFrags(e);
      this.state[e] = POISONED;
      return FRAG_DROP;
    }
    this.freeFrag = this.fragNext[s]!;
    const base = s * this.mtu;
    const pool = this.pool;
    for (let i = 0; i < len; i++) pool[base + i] = buf[off + i]!;
    this.fragLen[s] = len;
    this.fragNext[s] = NONE;
    if (this.fragTail[e] === NONE) this.fragHead[e] = s;
    else this.fragNext[this.fragTail[e]!] = s;
    this.fragTail[e] = s;
    this.count(FRAG_STAT.FRAGS_ALLOCATED, 1);
    return FRAG_STORED;
  }

  /** Reclaims every timed-out entry (and its stored fragments); keeps ACTIVE exact. */
  sweep(nowMs: number): void {
    for (let b = 0; b < this.size; b++) {
      let prev = b;
      for (let e = this.next[b]!; e !== NONE; ) {
        const following = this.next[e]!;
        if (this.expires[e]! <= nowMs) this.unlinkExtra(prev, e);
        else prev = e;
        e = following;
      }
      if (this.state[b] !== FREE && this.expires[b]! <= nowMs) this.reclaim(b);
    }
  }

  /** Number of stored fragments waiting for their first fragment. */
  storedFragments(): number {
    let n = 0;
    for (let s = this.freeFrag; s !== NONE; s = this.fragNext[s]!) n++;
    return this.fragLen.length - n;
  }

  // The key of a parsed fragment: addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d), then the id.
  private makeKey(buf: Uint8Array, p: PacketInfo): void {
    addressWords(buf, p, this.key);
    this.key[8] = p.fragId;
  }

  private bucketOf(): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < KEY_WORDS; i++) {
      h = Math.imul(h ^ this.key[i]!, 0x01000193);
      h ^= h >>> 15;
    }
    return (h >>> 0) % this.size;
  }

  private matches(e: number): boolean {
    const base = e * KEY_WORDS;
    for (let i = 0; i < KEY_WORDS; i++) if (this.keys[base + i] !== this.key[i]) return false;
    return true;
  }

  /** The live entry for this.key, created (STORING) if `create`; NONE when there is no room. */
  private find(nowMs: number, create: boolean): number {
    this.count(FRAG_STAT.LOOKUPS, 1);
    const b = this.bucketOf();
    if (this.state[b] !== FREE && this.expires[b]! <= nowMs) this.reclaim(b);
    if (this.state[b] !== FREE && this.matches(b)) return b;
    let prev = b;
    for (let e = this.next[b]!; e !== NONE; ) {
      const following = this.next[e]!;
      if (this.expires[e]! <= nowMs) {
        this.unlinkExtra(prev, e);
      } else {
        if (this.matches(e)) return e;
        prev = e;
      }
      e = following;
    }
    if (!create) return NONE;
    let e = b;
    if (this.state[b] !== FREE) {
      e = this.freeEntry;
      if (e === NONE) {
        this.count(FRAG_STAT.REJECTED, 1);
        return NONE;
      }
      this.freeEntry = this.next[e]!;
      this.next[e] = this.next[b]!;
      this.next[b] = e;
      this.count(FRAG_STAT.BUCKETS_ALLOCATED, 1);
      this.count(FRAG_STAT.BUCKETS_USED, 1);
      this.count(FRAG_STAT.COLLISIONS, 1);
    }
    this.keys.set(this.key, e * KEY_WORDS);
    this.state[e] = STORING;
    this.value[e] = FRAG_DROP;
    this.expires[e] = nowMs + this.ttlMs;
    this.fragHead[e] = NONE;
    this.fragTail[e] = NONE;
    this.count(FRAG_STAT.INSERTS, 1);
    this.count(FRAG_STAT.ACTIVE, 1);
    return e;
  }

  /** Frees entry e's content (a timed-out entry: counted as garbage-collected). */
  private reclaim(e: number): void {
    this.discardFrags(e);
    this.state[e] = FREE;
    this.count(FRAG_STAT.OBJ_GC, 1);
    this.count(FRAG_STAT.ACTIVE, -1);
  }

  private unlinkExtra(prev: number, e: number): void {
    this.reclaim(e);
    this.next[prev] = this.next[e]!;
    this.next[e] = this.freeEntry;
    this.freeEntry = e;
    this.count(FRAG_STAT.BUCKETS_USED, -1);
    this.count(FRAG_STAT.COLLISIONS, -1);
  }

  private discardFrags(e: number): void {
    for (let s = this.fragHead[e]!; s !== NONE; ) {
      const following = this.fragNext[s]!;
      this.releaseFrag(s);
      this.count(FRAG_STAT.FRAGS_DISCARDED, 1);
      s = following;
    }
    this.fragHead[e] = NONE;
    this.fragTail[e] = NONE;
  }

  private count(word: number, delta: number): void {
    this.stats[word] = this.stats[word]! + delta;
  }

  private releaseFrag(s: number): void {
    this.fragNext[s] = this.freeFrag;
    this.freeFrag = s;
  }
}

function count(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min || v > 1 << 24)
    throw new RangeError(`frag table: ${name} must be an integer in ${min}..${1 << 24}, got ${v}`);
  return v;
}

/** The `nfqlb stats` JSON of one or more stats blocks (one per queue), summed. Valid JSON. */
export function formatFragStats(blocks: readonly Uint32Array[]): string {
  const sum = (w: number): number => blocks.reduce((s, b) => s + (b[w] ?? 0), 0);
  const first = blocks[0] ?? new Uint32Array(FRAG_STAT.WORDS);
  const ttlNanos = (first[FRAG_STAT.TTL_NANOS_HI] ?? 0) * 2 ** 32 + (first[FRAG_STAT.TTL_NANOS_LO] ?? 0);
  const fields: [string, number][] = [
    ['hsize', sum(FRAG_STAT.SIZE)],
    ['ttlMillis', Math.floor(ttlNanos / 1e6)],
    ['collisions', sum(FRAG_STAT.COLLISIONS)],
    ['inserts', sum(FRAG_STAT.INSERTS)],
    ['rejected', sum(FRAG_STAT.REJECTED)],
    ['lookups', sum(FRAG_STAT.LOOKUPS)],
    ['objGC', sum(FRAG_STAT.OBJ_GC)],
    ['active', sum(FRAG_STAT.ACTIVE)],
    ['mtu', first[FRAG_STAT.MTU] ?? 0],
    ['bucketsMax', sum(FRAG_STAT.BUCKETS_MAX)],
    ['bucketsAllocated', sum(FRAG_STAT.BUCKETS_ALLOCATED)],
    ['bucketsUsed', sum(FRAG_STAT.BUCKETS_USED)],
    ['fragsMax', sum(FRAG_STAT.FRAGS_MAX)],
    ['fragsAllocated', sum(FRAG_STAT.FRAGS_ALLOCATED)],
    ['fragsDiscarded', sum(FRAG_STAT.FRAGS_DISCARDED)],
    ['reAssembled', sum(FRAG_STAT.RE_ASSEMBLED)],
  ];
  const width = Math.max(...fields.map(([k]) => k.length)) + 3;
  return `{\n${fields.map(([k, v]) => `  ${`"${k}":`.padEnd(width)} ${v}`).join(',\n')}\n}`;
}
