// Connection tracking for `nfqlb lb|flowlb --conntrack=SIZE`: a per-queue table that remembers
// the target Maglev chose for each flow, so a change of the target set moves no established
// flow (the Maglev paper §3.3; Katran's LRU and Cilium's conntrack do the same in front of
// Maglev). New flows are placed by Maglev and recorded; later packets go to the recorded target
// while it is in the target table or in its drain list (drain.ts), else back to Maglev.
//
// The state is per load-balancer: in a tier, a flow that ECMP moves to another LB finds no
// entry there and falls back to consistent hashing (the same target unless the set changed).
//
// The table is allocated once: SIZE entries in buckets of WAYS, one Int32Array of 16-word
// (64-byte, one cache line's worth) entries, so a lookup touches one or two lines of a large
// table rather than one per field; keyed on the same 40-byte flow key the hash covers and
// indexed by the flow hash. A full bucket evicts its least recently seen entry, unless even that one was
// seen within MIN_EVICT_AGE_MS: then the packet is balanced statelessly (counted), so a flood
// of new flows cannot push out active ones. The table never drops a packet and never allocates
// per packet.
//
// Only one direction is seen (the servers answer directly), so the TCP state comes from the
// client's flags: SYN without ACK opens (SYN-seen), anything else establishes, FIN or RST
// closes. Time is a millisecond clock modulo 2^32 set by tick(); an age (now - seen) is exact
// as an int32 because entries are swept within seconds of their timeout (at most 2^31 ms).

import type { DrainList } from '../drain-list.js';
import { HASH_KEY_BYTES, HASH_MODE_SCTP_PORTS } from '../hash.js';
import { addressWords, IPPROTO_SCTP, IPPROTO_TCP, type PacketInfo } from '../packet.js';
import type { TargetTable } from '../target-table.js';

/** Entries per bucket: one bucket is a few cache lines of each array. */
export const CT_WAYS = 8;
const KEY_WORDS = HASH_KEY_BYTES / 4;
// Entry words: the flow hash, state, last seen, fwmark, the target's active[] slot when last
// checked (the fast "still in the table" test), the key; one word spare.
const E_HASH = 0;
const E_STATE = 1;
const E_SEEN = 2;
const E_FWMARK = 3;
const E_SLOT = 4;
const E_KEY = 5;
const ENTRY_WORDS = 16;
/** Bytes per entry. */
export const CT_BYTES_PER_ENTRY = 4 * ENTRY_WORDS;
/** An entry seen this recently is never evicted: its flow is alive. */
export const MIN_EVICT_AGE_MS = 1000;

/** Entry states (TCP from the client's flags; OTHER for every other protocol). */
export const CT_STATE = { FREE: 0, SYN_SEEN: 1, ESTABLISHED: 2, CLOSING: 3, OTHER: 4 } as const;

/**
 * Counters, by index into ConnTrack.counters. ENTRIES is a gauge; the rest count packets
 * (every packet the table sees, all but later fragments, cut headers and ICMP errors without
 * an entry, is exactly one of HITS..MISS_OTHER) or entries.
 */
export const CT_STAT = {
  /** Entries in use (expired ones count until swept, within a few seconds). */
  ENTRIES: 0,
  /** Packets sent to their flow's recorded target. */
  HITS: 1,
  /** New TCP connections (SYN without ACK) placed by Maglev. */
  MISS_SYN: 2,
  /** TCP packets of a flow the table did not know (evicted, timed out, LB restarted, moved by ECMP). */
  MISS_NON_SYN: 3,
  /** New flows of other protocols. */
  MISS_OTHER: 4,
  /** Hits whose target is draining (deactivated, not removed). */
  DRAINING: 5,
  /** Recorded flows whose target was removed (`deactivate --now`): placed again by Maglev. */
  REPLACED: 6,
  /** Live entries evicted for a new flow (the least recently seen of a full bucket). */
  EVICTIONS: 7,
  /** Entries that timed out. */
  EXPIRED: 8,
  /** Misses not recorded because their bucket was full of active flows: balanced statelessly. */
  NO_ROOM: 9,
  WORDS: 10,
} as const;

export const CT_STAT_NAMES = [
  'entries',
  'hits',
  'missSyn',
  'missNonSyn',
  'missOther',
  'draining',
  'replaced',
  'evictions',
  'expired',
  'noRoom',
] as const;

export interface ConnTrackTimeouts {
  synMs: number;
  establishedMs: number;
  closeMs: number;
  otherMs: number;
}

/** Cilium's defaults: TCP SYN-seen 60 s, established 300 s idle, after FIN/RST 10 s, others 30 s. */
export const CT_DEFAULT_TIMEOUTS: Readonly<ConnTrackTimeouts> = { synMs: 60_000, establishedMs: 300_000, closeMs: 10_000, otherMs: 30_000 };

export interface ConnTrackOptions {
  /** Entries (rounded up to a multiple of CT_WAYS). */
  size: number;
  timeouts?: ConnTrackTimeouts;
  /** The clock at start (milliseconds, e.g. performance.now()). */
  now?: number;
  /** Where to count (CT_STAT.WORDS long), e.g. a view of shared memory; else a private array. */
  counters?: Float64Array;
}

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_ACK = 0x10;

export class ConnTrack {
  readonly capacity: number;
  readonly counters: Float64Array;
  /** The clock (milliseconds modulo 2^32, as an int32), advanced by tick(). */
  now: number;
  private readonly buckets: number;
  /** ENTRY_WORDS per entry; entry i of bucket b is b * CT_WAYS + i. */
  private readonly table: Int32Array;
  /** Timeout per state (index CT_STATE). */
  private readonly timeouts = new Int32Array(5);
  private readonly key = new Int32Array(KEY_WORDS);
  private readonly drains = new WeakMap<TargetTable, DrainList>();
  private sweepCursor = 0;

  constructor(o: ConnTrackOptions) {
    if (!Number.isInteger(o.size) || o.size < 1) throw new RangeError(`conntrack size must be a positive integer, got ${o.size}`);
    this.buckets = Math.ceil(o.size / CT_WAYS);
    const n = this.buckets * CT_WAYS;
    this.capacity = n;
    this.table = new Int32Array(n * ENTRY_WORDS);
    const t = o.timeouts ?? CT_DEFAULT_TIMEOUTS;
    for (const ms of [t.synMs, t.establishedMs, t.closeMs, t.otherMs]) {
      if (!Number.isInteger(ms) || ms < 1 || ms > 0x7fffffff) throw new RangeError(`conntrack timeout must be 1..2^31-1 ms, got ${ms}`);
    }
    this.timeouts.set([0, t.synMs, t.establishedMs, t.closeMs, t.otherMs]);
    if (o.counters !== undefined && o.counters.length < CT_STAT.WORDS) {
      throw new RangeError(`conntrack counters need ${CT_STAT.WORDS} words`);
    }
    this.counters = o.counters ?? new Float64Array(CT_STAT.WORDS);
    this.now = Math.floor(o.now ?? 0) | 0;
  }

  /** Bytes the table holds for `size` entries. */
  static byteLength(size: number): number {
    return Math.ceil(size / CT_WAYS) * CT_WAYS * CT_BYTES_PER_ENTRY;
  }

  /** Flows of targets deactivated from `table` stay on them while they are in `drain`. */
  attachDrain(table: TargetTable, drain: DrainList): void {
    this.drains.set(table, drain);
  }

  /**
   * Advances the clock and frees the timed-out entries of the next slice of the table (an
   * eighth per call: a whole pass every 8 s at the runner's one tick a second), so the work
   * per tick stays small and ENTRIES stays close to the truth.
   */
  tick(nowMs: number): void {
    this.now = Math.floor(nowMs) | 0;
    this.sweep(Math.ceil(this.capacity / 8));
  }

  /** Frees the timed-out entries among the next `count`. */
  sweep(count: number): void {
    const { table: t, timeouts, counters } = this;
    const now = this.now;
    let i = this.sweepCursor;
    for (let k = 0; k < count; k++) {
      const e = i * ENTRY_WORDS;
      const s = t[e + E_STATE]!;
      if (s !== CT_STATE.FREE && ((now - t[e + E_SEEN]!) | 0) > timeouts[s]!) {
        this.free(e);
        counters[CT_STAT.EXPIRED]!++;
      }
      if (++i === this.capacity) i = 0;
    }
    this.sweepCursor = i;
  }

  /** Entries in use, counted (O(capacity), for checks; the ENTRIES counter is the cheap gauge). */
  countInUse(): number {
    let n = 0;
    for (let e = E_STATE; e < this.table.length; e += ENTRY_WORDS) if (this.table[e] !== CT_STATE.FREE) n++;
    return n;
  }

  /**
   * The fwmark for a whole packet (or first fragment) of a flow selected into `table`, or -1
   * when no target is active. `hash` is the flow hash the stateless path would use;
   * `addressOnly` and `hashMode` say which key bytes it covers, and so which the entry keys on.
   */
  fwmarkOf(buf: Uint8Array, p: PacketInfo, hash: number, table: TargetTable, addressOnly: boolean, hashMode: number): number {
    // Later fragments and cut headers have no full key: stateless, as without the table.
    if (p.truncated || (p.isFragment && !p.firstFragment)) return table.fwmarkOf(hash);
    this.buildKey(buf, p, addressOnly, hashMode);
    const tcpHeader = p.proto === IPPROTO_TCP && !p.icmpError && p.l4Proto === IPPROTO_TCP && p.l4Off >= 0 && p.l4Off + 14 <= p.end;
    const flags = tcpHeader ? buf[p.l4Off + 13]! : -1;
    const bareSyn = flags >= 0 && (flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN;
    const { table: t, counters } = this;
    const now = this.now;
    const base = this.bucketOf(hash) * CT_WAYS;
    let e = this.find(base, hash | 0);
    if (e >= 0) {
      const state = t[e + E_STATE]!;
      const live = ((now - t[e + E_SEEN]!) | 0) <= this.timeouts[state]!;
      // A SYN on an entry past its handshake is a new connection on the same ports.
      const reopened = bareSyn && state !== CT_STATE.SYN_SEEN;
      if (live && !reopened) {
        const fw = t[e + E_FWMARK]!;
        if (this.reachable(table, e, fw)) {
          // An ICMP error follows its flow's target but is not the flow's own packet.
          if (!p.icmpError) {
            t[e + E_SEEN] = now;
            t[e + E_STATE] = nextState(state, flags);
          }
          counters[CT_STAT.HITS]!++;
          return fw;
        }
      }
      if (p.icmpError) return table.fwmarkOf(hash);
      if (!live) counters[CT_STAT.EXPIRED]!++;
      else if (!reopened) counters[CT_STAT.REPLACED]!++;
    } else if (p.icmpError) {
      return table.fwmarkOf(hash); // errors follow flows, never start one
    }
    counters[flags < 0 ? CT_STAT.MISS_OTHER : bareSyn ? CT_STAT.MISS_SYN : CT_STAT.MISS_NON_SYN]!++;
    const slot = table.lookup[table.lookupIndex(hash)]!;
    const fw = table.slotFwmark(slot);
    if (fw < 0) {
      if (e >= 0) this.free(e);
      return -1;
    }
    if (e < 0) {
      e = this.room(base);
      if (e < 0) {
        counters[CT_STAT.NO_ROOM]!++;
        return fw;
      }
    }
    if (t[e + E_STATE] === CT_STATE.FREE) counters[CT_STAT.ENTRIES]!++;
    t.set(this.key, e + E_KEY);
    t[e + E_HASH] = hash | 0;
    t[e + E_FWMARK] = fw;
    t[e + E_SLOT] = slot;
    t[e + E_SEEN] = now;
    t[e + E_STATE] = nextState(CT_STATE.FREE, flags);
    return fw;
  }

  /** Entries in use (the gauge; see CT_STAT.ENTRIES). */
  get entries(): number {
    return this.counters[CT_STAT.ENTRIES]!;
  }

  /** The counters by name (for logs; allocation is fine off the hot path). */
  stats(): Record<(typeof CT_STAT_NAMES)[number], number> {
    return Object.fromEntries(CT_STAT_NAMES.map((n, k) => [n, this.counters[k]!])) as Record<(typeof CT_STAT_NAMES)[number], number>;
  }

  /**
   * The fields of the 40-byte flow key the hash covers, as 10 words (the same fields, packed
   * for comparison rather than hashing): addresses (IPv4 as ::ffff:a.b.c.d), echo id and
   * protocol, ports. Address-only flows keep the addresses; SCTP hashed on its ports (a
   * multihomed association changes addresses, never ports) keeps protocol and ports.
   */
  private buildKey(buf: Uint8Array, p: PacketInfo, addressOnly: boolean, hashMode: number): void {
    const key = this.key;
    if (!addressOnly && hashMode === HASH_MODE_SCTP_PORTS && p.proto === IPPROTO_SCTP) {
      key.fill(0, 0, 8);
    } else {
      addressWords(buf, p, key);
    }
    if (addressOnly) {
      key[8] = 0;
      key[9] = 0;
    } else {
      key[8] = (p.echoId << 16) | Math.max(p.proto, 0);
      key[9] = p.hasPorts ? (p.sport << 16) | p.dport : 0;
    }
  }

  /**
   * The bucket of the key just built. djb2 is linear: related flows get related hashes and
   * different flows often the same one (a third of a /16 of sources times ports collide), so
   * the source and port words are folded in and the result mixed (murmur3's finalizer).
   */
  private bucketOf(hash: number): number {
    const key = this.key;
    let h = hash ^ Math.imul(key[0]! ^ key[1]! ^ key[2]! ^ key[3]! ^ key[9]!, 0x9e3779b1);
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h = (h ^ (h >>> 16)) >>> 0;
    return Math.floor((h * this.buckets) / 4294967296);
  }

  /** The word offset of the entry holding the key just built, or -1. */
  private find(base: number, hash: number): number {
    const { table: t, key } = this;
    for (let e = base * ENTRY_WORDS, end = e + CT_WAYS * ENTRY_WORDS; e < end; e += ENTRY_WORDS) {
      if (t[e + E_HASH] !== hash || t[e + E_STATE] === CT_STATE.FREE) continue;
      const k = e + E_KEY;
      if (
        t[k + 9] === key[9] &&
        t[k] === key[0] &&
        t[k + 1] === key[1] &&
        t[k + 2] === key[2] &&
        t[k + 3] === key[3] &&
        t[k + 4] === key[4] &&
        t[k + 5] === key[5] &&
        t[k + 6] === key[6] &&
        t[k + 7] === key[7] &&
        t[k + 8] === key[8]
      )
        return e;
    }
    return -1;
  }

  /**
   * A place (word offset) for a new entry in the bucket: free, timed out, or the least recently
   * seen (evicted); -1 if all are active.
   */
  private room(base: number): number {
    const { table: t, timeouts, counters } = this;
    const now = this.now;
    let oldest = -1;
    let oldestAge = -1;
    for (let e = base * ENTRY_WORDS, end = e + CT_WAYS * ENTRY_WORDS; e < end; e += ENTRY_WORDS) {
      const s = t[e + E_STATE]!;
      if (s === CT_STATE.FREE) return e;
      const age = (now - t[e + E_SEEN]!) | 0;
      if (age > timeouts[s]!) {
        counters[CT_STAT.EXPIRED]!++;
        return e;
      }
      if (age > oldestAge) {
        oldestAge = age;
        oldest = e;
      }
    }
    if (oldestAge < MIN_EVICT_AGE_MS) return -1;
    counters[CT_STAT.EVICTIONS]!++;
    return oldest;
  }

  /** Whether recorded target `fw` may still take the flow: in the table (anywhere) or draining. */
  private reachable(table: TargetTable, e: number, fw: number): boolean {
    const active = table.active;
    if (active[this.table[e + E_SLOT]!] === fw) return true;
    const at = active.indexOf(fw);
    if (at >= 0) {
      this.table[e + E_SLOT] = at; // re-activated in another slot
      return true;
    }
    if (this.drains.get(table)?.has(fw) === true) {
      this.counters[CT_STAT.DRAINING]!++;
      return true;
    }
    return false;
  }

  private free(e: number): void {
    if (this.table[e + E_STATE] === CT_STATE.FREE) return;
    this.table[e + E_STATE] = CT_STATE.FREE;
    this.counters[CT_STAT.ENTRIES]!--;
  }
}

/** The entry state after a packet with these TCP flags (-1: not TCP). */
function nextState(state: number, flags: number): number {
  if (flags < 0) return CT_STATE.OTHER;
  if ((flags & (TCP_FIN | TCP_RST)) !== 0 || state === CT_STATE.CLOSING) return CT_STATE.CLOSING;
  if ((flags & (TCP_SYN | TCP_ACK)) === TCP_SYN) return CT_STATE.SYN_SEEN;
  return CT_STATE.ESTABLISHED;
}
