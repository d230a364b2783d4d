// A BPF map's copy of a shared-memory Maglev table, for the programs that decide in the kernel
// (nfqlb's tc offload, xdplb's XDP forwarder). The lb compares the table with what it last
// published on every tick of its follow timer (activate/deactivate write the shm in place; init
// replaces the file) and publishes a change as a whole new map swapped in at once
// (native/bpf/maglev_table.h), so a packet never sees half a table.
import { log } from './log.js';
import { sameInt32 } from './target-table.js';

/** How often an lb with a program compares: activate and deactivate reach the kernel within 100 ms. */
export const MIRROR_FOLLOW_MS = 20;

export class TableMirror<T> {
  private published = new Int32Array(0);
  private scratch = new Int32Array(0);
  private failing = false;

  /**
   * `fill` writes what the program reads of a table, `words(table)` int32s, and `publish` hands
   * it to the kernel. `what` names the mirror in the log ("offload").
   */
  constructor(
    private readonly what: string,
    private readonly words: (table: T) => number,
    private readonly fill: (table: T, out: Int32Array) => void,
    private readonly publish: (entries: Int32Array) => void,
  ) {}

  /** Publishes `table` when it differs from what was published; throws when publishing fails. */
  sync(table: T): void {
    const n = this.words(table);
    if (this.scratch.length !== n) this.scratch = new Int32Array(n);
    this.fill(table, this.scratch);
    const old = this.published;
    if (sameInt32(old, this.scratch)) return;
    this.publish(this.scratch);
    log.info(`${this.what} table published`);
    // The scratch array becomes the published copy; the old one is the next scratch.
    this.published = this.scratch;
    this.scratch = old.length === n ? old : new Int32Array(n);
  }

  /**
   * sync for a timer tick: a failed publish (e.g. no memory for the map) is logged once and
   * retried on the next tick; meanwhile the program keeps the last table it had.
   */
  follow(table: T): void {
    try {
      this.sync(table);
      if (this.failing) log.info(`${this.what} table published again`);
      this.failing = false;
    } catch (e) {
      if (!this.failing) log.error({ err: (e as Error).message }, `${this.what} table not published: retrying`);
      this.failing = true;
    }
  }
}
