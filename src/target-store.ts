// The one owner of a named target table's life in /dev/shm: creating, opening, changing,
// following and deleting it. The nfqlb and xdplb commands, the lb runners, the offload and the
// metrics come through here, and so does anything that applies whole target sets (apply), so
// these rules hold for every one of them:
//  - `init` builds a table whole under a temporary name and renames it over the old one: a
//    running lb keeps the old file mapped, never truncated or half-written under its feet,
//    until its TableFollower sees the name stand for a new inode and switches;
//  - a fwmark enters the drain list (drain-list.ts) before it leaves the table, and leaves the
//    list only once it is back in the table or is meant to be dead (`now`): an lb with
//    --conntrack never finds a draining target in neither, which would move its flows.
// The file formats are the callers' (TableKind): nfqlb's TargetTable here, xdplb's XdpTable in
// xdp/table.ts. Only nfqlb's targets drain: xdplb keeps no flow state.
import { DrainList } from './drain-list.js';
import { log } from './log.js';
import { deleteShm, mapShm, openShm, publishShm, shmInode } from './shm.js';
import { type TableChange, TargetTable } from './target-table.js';

/** A kind of table file: how to view, size and initialize one, and whether its targets drain. */
export interface TableKind<T, Shape> {
  /** Views over a mapped file; throws RangeError when the file does not hold such a table. */
  view(buffer: ArrayBuffer): T;
  /** The Maglev part, whose active targets the store changes. */
  targets(table: T): TargetTable;
  /** Bytes of a fresh table of this shape. */
  byteLength(shape: Shape): number;
  /** Writes a fresh table of this shape into `buffer`. */
  initialize(buffer: ArrayBuffer, shape: Shape): T;
  /** Deactivated targets drain: the store keeps `<name>-drain` in step with the table. */
  drains: boolean;
}

/** What `nfqlb init` makes: M already adjusted (TargetTable.adjustM). */
export interface TargetTableShape {
  M: number;
  N: number;
  ownFwmark: number;
}

/** nfqlb's table, in the reference's layout (the reference's nfqlb reads ours). */
export const NFQLB_TABLE: TableKind<TargetTable, TargetTableShape> = {
  view: (buffer) => new TargetTable(buffer),
  targets: (table) => table,
  byteLength: ({ M, N }) => TargetTable.byteLength(M, N),
  initialize: (buffer, { M, N, ownFwmark }) => TargetTable.initialize(buffer, M, N, ownFwmark),
  drains: true,
};

export interface DrainOptions {
  /**
   * Targets that leave the table are dead rather than draining: their flows go back to Maglev
   * at once, and the fwmarks the change names also leave the drain list (`deactivate --now`).
   */
  now?: boolean;
}

/**
 * A named table, mapped. Map one for each change (it is cheap): a handle kept across an `init`
 * would go on changing the old, unlinked file.
 */
export class TargetStore<T> {
  private constructor(
    private readonly kind: TableKind<T, never>,
    readonly name: string,
    readonly table: T,
    private readonly writable: boolean,
  ) {}

  /**
   * Creates table `name` afresh (`init`), atomically (see publishShm), and returns it writable.
   * A fresh table has no targets, so its drain list is emptied.
   */
  static create<T, S>(kind: TableKind<T, S>, name: string, shape: S): TargetStore<T> {
    // Opened before anything changes: a broken list fails init instead of outliving it.
    const drain = kind.drains ? DrainList.open(name, true) : null;
    const table = publishShm(name, kind.byteLength(shape), (buffer) => kind.initialize(buffer, shape));
    drain?.clear();
    return new TargetStore(kind, name, table, true);
  }

  /** Maps table `name`; throws when there is none or the file does not hold one. */
  static open<T>(kind: TableKind<T, never>, name: string, writable = false): TargetStore<T> {
    return new TargetStore(kind, name, kind.view(openShm(name, writable)), writable);
  }

  /** Removes table `name` and its drain list; missing ones are not an error, mappings stay valid. */
  static delete(kind: TableKind<unknown, never>, name: string): void {
    deleteShm(name);
    if (kind.drains) DrainList.delete(name);
  }

  /**
   * The drain list of nfqlb table `name` for a reader (an lb with --conntrack), created empty
   * when missing so that a later deactivate writes into the very file the reader maps.
   */
  static drainList(name: string): DrainList {
    return DrainList.create(name);
  }

  get targets(): TargetTable {
    return this.kind.targets(this.table);
  }

  /** The fwmarks draining from this table: deactivated, while an lb may still hold their flows. */
  draining(): number[] {
    return (this.kind.drains ? DrainList.open(this.name, false)?.list() : undefined) ?? [];
  }

  /** Activates `fwmarks` (TableChange `activate`); none of them drains any more. */
  activate(fwmarks: readonly number[]): boolean {
    return this.change({ activate: fwmarks }, {}, fwmarks);
  }

  /** Puts `fwmark` into slot `index`; it stops draining, and a fwmark it replaces drains. */
  activateAt(index: number, fwmark: number): boolean {
    return this.change({ activateAt: index, fwmark }, {}, [fwmark]);
  }

  /** Deactivates `fwmarks` (TableChange `deactivate`): they drain, or with `now` are dead. */
  deactivate(fwmarks: readonly number[], o: DrainOptions = {}): boolean {
    return this.change({ deactivate: fwmarks }, o, o.now ? fwmarks : []);
  }

  /** Frees slot `index`: its fwmark drains, or with `now` is dead. */
  deactivateAt(index: number, o: DrainOptions = {}): boolean {
    const fw = this.targets.active[index] ?? -1;
    return this.change({ deactivateAt: index }, o, o.now && fw >= 0 ? [fw] : []);
  }

  /**
   * Makes the table hold exactly `slots` (index -> fwmark), every other slot free, in one
   * publication: what a registry follower applies. Fwmarks in the set stop draining; those that
   * leave the table drain. With `now` nothing drains afterwards: what is not in the set is dead.
   */
  apply(slots: ReadonlyMap<number, number>, o: DrainOptions = {}): boolean {
    return this.change({ slots }, o, [...(o.now ? this.draining() : []), ...slots.values()]);
  }

  /**
   * Every change of the active targets: whatever leaves the table goes into the drain list
   * before the table is published without it (unless `now`); `settled` (the fwmarks now back in
   * the table, or meant to be dead) leave the list only after, also when the table did not
   * change (e.g. `deactivate --now` of a target that is only draining).
   */
  private change(change: TableChange, o: DrainOptions, settled: readonly number[]): boolean {
    // A read-only mapping written to is a SIGSEGV, not an exception.
    if (!this.writable) throw new Error(`table ${this.name} is open read-only`);
    const t = this.targets;
    if (!this.kind.drains) return t.update(change);
    // Opened before anything changes: a broken list fails the whole change.
    let drain = DrainList.open(this.name, true);
    let leaving: number[] = [];
    const changed = t.update(change, (next) => {
      leaving = leavers(t.active, next);
      if (o.now || leaving.length === 0) return;
      drain ??= DrainList.create(this.name);
      if (!drain.hasRoomFor(leaving)) {
        throw new RangeError(`drain list of ${this.name} is full: remove drained targets with 'deactivate --now'`);
      }
      for (const fw of leaving) drain.add(fw);
    });
    for (const fw of new Set([...settled, ...(o.now ? leaving : [])])) drain?.remove(fw);
    return changed;
  }
}

/** The fwmarks `before` has and `next` has not. */
function leavers(before: Int32Array, next: Int32Array): number[] {
  const staying = new Set(next);
  return [...new Set(before)].filter((fw) => fw >= 0 && !staying.has(fw));
}

export interface FollowOptions<T> {
  /**
   * Called with a new table before the follower switches to it; if it throws, the switch is
   * tried again at the next check (the lb runner attaches the drain list here).
   */
  onReplace?: (table: T) => void;
  /** Log each switch and the first failure (default true; the metrics report through /healthz). */
  log?: boolean;
}

/**
 * Follows table `name` across `init`, which renames a new file over the name: when the name
 * stands for another inode, check() maps the new file and switches to it. Until the new file can
 * be read, the last good table stays in use.
 */
export class TableFollower<T> {
  /** The table in use (mapped read-only). */
  table: T;
  /** Why the name could not be followed at the last check; null when it could. */
  error: string | null = null;
  private ino: number;

  /** Maps the table now; throws when there is none or the file does not hold one. */
  constructor(
    private readonly kind: TableKind<T, never>,
    readonly name: string,
    private readonly o: FollowOptions<T> = {},
  ) {
    ({ table: this.table, ino: this.ino } = this.map());
  }

  /** Switches to the file `init` put in place, if it has; returns whether it switched. */
  check(): boolean {
    const logs = this.o.log ?? true;
    try {
      if (shmInode(this.name) === this.ino) {
        this.error = null;
        return false;
      }
      const { table, ino } = this.map();
      this.o.onReplace?.(table);
      this.table = table;
      this.ino = ino;
      this.error = null;
      if (logs) log.info({ shm: this.name }, 'table re-created by init: using the new one');
      return true;
    } catch (e) {
      const err = (e as Error).message;
      if (logs && this.error === null) log.warn({ shm: this.name, err }, 'table unreadable: keeping the last good one');
      this.error = err;
      return false;
    }
  }

  /** The table and the inode it was read from (one descriptor: no other file in between). */
  private map(): { table: T; ino: number } {
    const { buffer, ino } = mapShm(this.name, false);
    return { table: this.kind.view(buffer), ino };
  }
}
