// The drain list of a target table: the fwmarks deactivated from the table whose established
// flows may still reach them. An lb with --conntrack keeps a recorded flow on its target while the
// target is in the table or in this list; a target in neither (removed with `deactivate --now`, or
// by the reference's deactivate) is dead, and its flows go back to Maglev. TargetStore
// (target-store.ts) writes it, in step with the table.
//
// The target table keeps the reference layout byte for byte, so the list is a file of its own
// beside it, `<table>-drain`, that the reference tools never see. An lb without --conntrack
// ignores it: there, deactivate removes a target at once, as in the reference.
//
// Layout (host-order 32-bit words): magic, capacity, count, 0, int32 fwmarks[capacity].
// A fresh (zero) file is an empty list. Writers append (write the fwmark, then the count) and
// remove by moving the last fwmark into the hole before shrinking the count, so a reader
// never misses a fwmark that stays in the list.
import { createShm, deleteShm, openShm } from './shm.js';

const MAGIC = 0x4e514452; // 'NQDR'
const W_MAGIC = 0;
const W_CAPACITY = 1;
const W_COUNT = 2;
const HEADER_WORDS = 4;
/** Draining fwmarks one table can hold; a target leaves the list when activated again or with --now. */
export const DRAIN_CAPACITY = 1024;
/** Size of a drain list file. */
export const DRAIN_BYTES = 4 * (HEADER_WORDS + DRAIN_CAPACITY);

/** The shared memory name of a table's drain list. */
export function drainShmName(table: string): string {
  return `${table}-drain`;
}

export class DrainList {
  private readonly words: Int32Array;

  /** A view over a drain list file (see the layout above). */
  constructor(buffer: ArrayBufferLike) {
    if (buffer.byteLength < DRAIN_BYTES) throw new RangeError(`not a drain list: ${buffer.byteLength} bytes, need ${DRAIN_BYTES}`);
    this.words = new Int32Array(buffer, 0, HEADER_WORDS + DRAIN_CAPACITY);
    const magic = this.words[W_MAGIC]!;
    if (magic !== 0 && (magic !== MAGIC || this.words[W_CAPACITY] !== DRAIN_CAPACITY)) {
      throw new RangeError('not a drain list: bad magic or capacity');
    }
  }

  /** Opens the drain list of `table`, creating an empty one if there is none. */
  static create(table: string): DrainList {
    return new DrainList(createShm(drainShmName(table), DRAIN_BYTES));
  }

  /** The drain list of `table`, or null if nothing ever drained from it. */
  static open(table: string, writable: boolean): DrainList | null {
    try {
      return new DrainList(openShm(drainShmName(table), writable));
    } catch (e) {
      if ((e as Error).message.includes('not found')) return null;
      throw e;
    }
  }

  static delete(table: string): void {
    deleteShm(drainShmName(table));
  }

  /** Fwmarks in the list (the count is clamped: another process may have written anything). */
  get size(): number {
    const n = this.words[W_COUNT]!;
    return n < 0 ? 0 : Math.min(n, DRAIN_CAPACITY);
  }

  /** Whether `fwmark` is draining. Hot only for flows on a target no longer in the table. */
  has(fwmark: number): boolean {
    const w = this.words;
    const end = HEADER_WORDS + this.size;
    for (let i = HEADER_WORDS; i < end; i++) if (w[i] === fwmark) return true;
    return false;
  }

  list(): number[] {
    return Array.from(this.words.subarray(HEADER_WORDS, HEADER_WORDS + this.size));
  }

  /** Whether `fwmarks` fit in the list along with what is there (checked before any change). */
  hasRoomFor(fwmarks: readonly number[]): boolean {
    return this.size + new Set(fwmarks.filter((f) => !this.has(f))).size <= DRAIN_CAPACITY;
  }

  add(fwmark: number): void {
    if (this.has(fwmark)) return;
    const n = this.size;
    if (n >= DRAIN_CAPACITY) throw new RangeError(`drain list full (${DRAIN_CAPACITY}): remove a drained target with 'deactivate --now'`);
    this.words[W_MAGIC] = MAGIC;
    this.words[W_CAPACITY] = DRAIN_CAPACITY;
    this.words[HEADER_WORDS + n] = fwmark;
    this.words[W_COUNT] = n + 1;
  }

  remove(fwmark: number): void {
    const w = this.words;
    for (let n = this.size, i = HEADER_WORDS; i < HEADER_WORDS + n; i++) {
      if (w[i] !== fwmark) continue;
      w[i] = w[HEADER_WORDS + n - 1]!;
      w[W_COUNT] = --n;
      i--; // look at the moved one too
    }
  }

  clear(): void {
    this.words[W_COUNT] = 0;
  }
}
