// The nfqlb target table: the Maglev state in the reference nfqlb's
// shared-memory layout, so `activate` in one process steers a running lb in
// another, and our /dev/shm files and the reference's are interchangeable.
//
// Layout (little-endian, 4-byte words):
//   int32 ownFwmark; uint32 M, N, len; int32 lookup[M]; uint32 perm[N][M];
//   int32 active[N]; 12 bytes of slack
// `len` counts everything after ownFwmark. The slack exists because the
// reference sizes the region for three header words on top of its own
// three-word header; it stays zero.

import { fillPermutation, MAX_M, populate, primeBelow } from './maglev.js';

const OWN_FWMARK = 0;
const HEADER_M = 4;
const HEADER_N = 8;
const HEADER_LEN = 12;
const HEADER_BYTES = 16;
const SLACK_BYTES = 12;
const MAX_FWMARK = 0x7fffffff; // active[] is int32 and a negative entry means "free"
const SHOWN_LOOKUP_ENTRIES = 25;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  // The views below are host-order typed arrays; the file is little-endian.
  throw new Error('target-table: a big-endian host cannot share the nfqlb table layout');
}

/**
 * A change of a table's active targets:
 *  - activate: each fwmark not yet present goes into the first free slot, in order (the
 *    reference silently skips fwmarks it has no room for: this refuses the whole change);
 *  - deactivate: the first slot holding each fwmark is freed; unknown fwmarks are ignored, as in
 *    the reference;
 *  - activateAt / deactivateAt: slot `index` holds `fwmark` / is freed (`--index`);
 *  - slots: exactly these slots hold these fwmarks and every other slot is free (a whole
 *    desired set, e.g. from a registry); a fwmark may stand in one slot only.
 */
export type TableChange =
  | { activate: readonly number[] }
  | { deactivate: readonly number[] }
  | { activateAt: number; fwmark: number }
  | { deactivateAt: number }
  | { slots: ReadonlyMap<number, number> };

export class TargetTable {
  readonly lookup: Int32Array;
  readonly perm: Uint32Array;
  readonly active: Int32Array;
  private readonly header: DataView;
  // Private copies the next table is computed in, so a reader never sees a
  // half-built one. Allocated on first use: a read-only lb never needs them.
  private nextLookup: Int32Array | undefined;
  private nextActive: Int32Array | undefined;

  /** Total bytes of a table (the /dev/shm file size) for a prime M and N <= M. */
  static byteLength(M: number, N: number): number {
    checkShape(M, N);
    return HEADER_BYTES + 4 * (M + N * M + N) + SLACK_BYTES;
  }

  /** The M the reference `init` uses for a requested M: at least 3, rounded down to a prime. */
  static adjustM(requested: number): number {
    if (!Number.isInteger(requested)) throw new RangeError(`M must be an integer, got ${requested}`);
    return requested < 3 ? 3 : primeBelow(requested);
  }

  /** Views over an existing table; M and N come from its header. */
  constructor(buffer: ArrayBufferLike, byteOffset = 0) {
    if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % 4 !== 0) {
      throw new RangeError(`target table offset must be a non-negative multiple of 4, got ${byteOffset}`);
    }
    if (buffer.byteLength - byteOffset < HEADER_BYTES) {
      throw new RangeError(`target table too small: ${buffer.byteLength - byteOffset} bytes`);
    }
    this.header = new DataView(buffer, byteOffset, HEADER_BYTES);
    const M = this.header.getUint32(HEADER_M, true);
    const N = this.header.getUint32(HEADER_N, true);
    const len = this.header.getUint32(HEADER_LEN, true);
    const size = TargetTable.byteLength(M, N);
    if (len !== size - 4) {
      throw new RangeError(`not an nfqlb target table: len=${len}, expected ${size - 4} for M=${M}, N=${N}`);
    }
    if (buffer.byteLength - byteOffset < size) {
      throw new RangeError(`target table truncated: ${buffer.byteLength - byteOffset} bytes, need ${size}`);
    }
    let at = byteOffset + HEADER_BYTES;
    this.lookup = new Int32Array(buffer, at, M);
    at += 4 * M;
    this.perm = new Uint32Array(buffer, at, N * M);
    at += 4 * N * M;
    this.active = new Int32Array(buffer, at, N);
  }

  /**
   * Write a fresh table (as `nfqlb init` does): header, permutation, every slot
   * free, lookup all -1. M must already be adjusted (see adjustM).
   */
  static initialize(buffer: ArrayBufferLike, M: number, N: number, ownFwmark: number, byteOffset = 0): TargetTable {
    const size = TargetTable.byteLength(M, N);
    if (!Number.isInteger(ownFwmark) || ownFwmark < -0x80000000 || ownFwmark > MAX_FWMARK) {
      throw new RangeError(`own fwmark must be a 32-bit integer, got ${ownFwmark}`);
    }
    if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % 4 !== 0) {
      throw new RangeError(`target table offset must be a non-negative multiple of 4, got ${byteOffset}`);
    }
    if (buffer.byteLength - byteOffset < size) {
      throw new RangeError(`buffer too small for M=${M}, N=${N}: ${buffer.byteLength - byteOffset} < ${size} bytes`);
    }
    new Uint8Array(buffer, byteOffset, size).fill(0);
    const header = new DataView(buffer, byteOffset, HEADER_BYTES);
    header.setInt32(OWN_FWMARK, ownFwmark, true);
    header.setUint32(HEADER_M, M, true);
    header.setUint32(HEADER_N, N, true);
    header.setUint32(HEADER_LEN, size - 4, true);
    const table = new TargetTable(buffer, byteOffset);
    fillPermutation(table.perm, M, N);
    table.active.fill(-1);
    table.lookup.fill(-1);
    return table;
  }

  get M(): number {
    return this.lookup.length;
  }

  get N(): number {
    return this.active.length;
  }

  get ownFwmark(): number {
    return this.header.getInt32(OWN_FWMARK, true);
  }

  /**
   * Applies `change` (see TableChange) and publishes the new active[] so that a concurrent
   * reader never sees a half-made one (see commit). `beforePublish` sees the staged active[]
   * first and may throw to abandon the change: TargetStore fills the drain list there, before a
   * target leaves the table. Returns whether anything changed; throws RangeError, changing
   * nothing, on invalid input or when there are not enough free slots.
   *
   * This changes the memory only: a named table's drain list is kept in step by TargetStore.
   */
  update(change: TableChange, beforePublish?: (next: Int32Array) => void): boolean {
    const next = this.stage(change);
    if (sameInt32(next, this.active)) return false;
    beforePublish?.(next);
    this.commit(next);
    return true;
  }

  /** update({ activate: fwmarks }). */
  activate(fwmarks: readonly number[]): boolean {
    return this.update({ activate: fwmarks });
  }

  /** update({ activateAt: index, fwmark }) (`activate --index`). */
  setIndex(index: number, fwmark: number): boolean {
    return this.update({ activateAt: index, fwmark });
  }

  /** update({ deactivate: fwmarks }). */
  deactivate(fwmarks: readonly number[]): boolean {
    return this.update({ deactivate: fwmarks });
  }

  /** update({ deactivateAt: index }) (`deactivate --index`). */
  clearIndex(index: number): boolean {
    return this.update({ deactivateAt: index });
  }

  /** The lookup entry a flow hash (uint32) selects. */
  lookupIndex(hash: number): number {
    return (hash >>> 0) % this.lookup.length;
  }

  /**
   * The fwmark for a flow hash, or -1 when no target is active. The table may
   * be written by another process at any time, so every index is checked.
   */
  fwmarkOf(hash: number): number {
    return this.slotFwmark(this.lookup[(hash >>> 0) % this.lookup.length] as number);
  }

  /**
   * The fwmark in active slot `slot` (what a lookup entry holds), or -1 when the slot is free or
   * is not one: the table may be written by another process at any time, so a lookup entry is
   * checked before it indexes active[].
   */
  slotFwmark(slot: number): number {
    return slot >= 0 && slot < this.active.length ? (this.active[slot] as number) : -1;
  }

  /** The text of `nfqlb show` for this table: five lines, without the final newline. */
  show(name: string): string {
    let lookup = '';
    const shown = Math.min(SHOWN_LOOKUP_ENTRIES, this.M);
    for (let i = 0; i < shown; i++) lookup += ` ${this.lookup[i]}`;
    let active = '';
    for (let i = 0; i < this.N; i++) {
      const fw = this.active[i] as number;
      if (fw >= 0) active += ` ${fw}(${i})`;
    }
    return (
      `Shm: ${name}\n` +
      `  Fw: own=${this.ownFwmark}\n` +
      `  Maglev: M=${this.M}, N=${this.N}\n` +
      `   Lookup:${lookup}...\n` +
      `   Active:${active}`
    );
  }

  private checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.N) {
      throw new RangeError(`index must be an integer in 0..${this.N - 1}, got ${index}`);
    }
  }

  /** active[] after `change`, staged in the private copy (the live one is untouched). */
  private stage(change: TableChange): Int32Array {
    this.nextActive ??= new Int32Array(this.N);
    const next = this.nextActive;
    next.set(this.active);
    if ('activate' in change) {
      for (const fw of change.activate) checkFwmark(fw);
      for (const fw of change.activate) {
        if (next.indexOf(fw) >= 0) continue;
        const free = firstFree(next);
        if (free < 0) throw new RangeError(`no free slot for fwmark ${fw}: all ${this.N} slots are in use`);
        next[free] = fw;
      }
    } else if ('deactivate' in change) {
      for (const fw of change.deactivate) checkFwmark(fw);
      for (const fw of change.deactivate) {
        const slot = next.indexOf(fw);
        if (slot >= 0) next[slot] = -1;
      }
    } else if ('activateAt' in change) {
      this.checkIndex(change.activateAt);
      checkFwmark(change.fwmark);
      next[change.activateAt] = change.fwmark;
    } else if ('deactivateAt' in change) {
      this.checkIndex(change.deactivateAt);
      next[change.deactivateAt] = -1;
    } else {
      next.fill(-1);
      for (const [index, fw] of change.slots) {
        this.checkIndex(index);
        checkFwmark(fw);
        // Twice in the table would be twice the share of new flows: not what a set of targets means.
        const other = next.indexOf(fw);
        if (other >= 0) throw new RangeError(`fwmark ${fw} is given for slots ${other} and ${index}`);
        next[index] = fw;
      }
    }
    return next;
  }

  /**
   * Publish a staged active[] so that a concurrent reader (which reads
   * lookup[] and then active[]) never finds a free slot behind a lookup entry
   * while any target is active: newly used slots are filled in first, the new
   * lookup is copied in whole (each entry holds the old or the new slot), and
   * only then are vacated slots freed.
   */
  private commit(next: Int32Array): void {
    this.nextLookup ??= new Int32Array(this.M);
    populate(this.nextLookup, this.perm, next, this.M, this.N);
    const active = this.active;
    for (let i = 0; i < next.length; i++) {
      if ((next[i] as number) >= 0) active[i] = next[i] as number;
    }
    this.lookup.set(this.nextLookup);
    for (let i = 0; i < next.length; i++) {
      if ((next[i] as number) < 0) active[i] = next[i] as number;
    }
  }
}

function checkShape(M: number, N: number): void {
  if (!Number.isInteger(M) || M < 3 || M > MAX_M || primeBelow(M) !== M) {
    throw new RangeError(`M must be a prime in 3..${MAX_M}, got ${M}`);
  }
  if (!Number.isInteger(N) || N < 0 || N > M) {
    throw new RangeError(`N must be an integer in 0..M (${M}), got ${N}`);
  }
  // len is a uint32 in the header.
  if (HEADER_BYTES - 4 + 4 * (M + N * M + N) + SLACK_BYTES > 0xffffffff) {
    throw new RangeError(`table for M=${M}, N=${N} exceeds 4 GiB`);
  }
}

function checkFwmark(fwmark: number): void {
  if (!Number.isInteger(fwmark) || fwmark < 0 || fwmark > MAX_FWMARK) {
    throw new RangeError(`fwmark must be an integer in 0..${MAX_FWMARK}, got ${fwmark}`);
  }
}

/** Whether two arrays hold the same values (e.g. active[] now and when last seen). */
export function sameInt32(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function firstFree(active: Int32Array): number {
  for (let i = 0; i < active.length; i++) {
    if ((active[i] as number) < 0) return i;
  }
  return -1;
}
