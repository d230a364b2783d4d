// TargetStore over real /dev/shm files: init publishes a whole new file by rename (a reader of
// the old one is never disturbed), every change keeps the drain invariant (a fwmark enters the
// drain list before it leaves the table and leaves the list only once it is back), a whole set
// is applied in one publication, and TableFollower switches to a table that init re-created.

import { existsSync, readdirSync, statSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DrainList } from '../../src/drain-list.js';
import { openShm, shmPath } from '../../src/shm.js';
import { NFQLB_TABLE, TableFollower, TargetStore } from '../../src/target-store.js';
import { TargetTable } from '../../src/target-table.js';
import { XDPLB_TABLE } from '../../src/xdp/table.js';

const NAME = `tts-store-${process.pid}`;
const SHAPE = { M: 101, N: 10, ownFwmark: 0 };

const create = (shape = SHAPE) => TargetStore.create(NFQLB_TABLE, NAME, shape);
const open = () => TargetStore.open(NFQLB_TABLE, NAME, true);
const active = (t: TargetTable): number[] => Array.from(t.active).filter((fw) => fw >= 0);
const draining = (): number[] =>
  open()
    .draining()
    .sort((a, b) => a - b);
const leftovers = (): string[] => readdirSync('/dev/shm').filter((f) => f.startsWith(`.${NAME}`));

afterEach(() => {
  vi.restoreAllMocks();
  TargetStore.delete(NFQLB_TABLE, NAME);
});

describe('TargetStore.create', () => {
  it('publishes a new file by rename: a reader of the old one keeps it whole', () => {
    create().activate([101, 102]);
    const before = statSync(shmPath(NAME)).ino;
    const reader = new TargetTable(openShm(NAME, false));
    const lookup = Array.from(reader.lookup);
    const store = create({ M: 53, N: 4, ownFwmark: 7 });
    expect(statSync(shmPath(NAME)).ino).not.toBe(before);
    expect([store.table.M, store.table.N, store.table.ownFwmark, active(store.table)]).toEqual([53, 4, 7, []]);
    // The old mapping is the old file, untouched (not truncated, not rewritten in place).
    expect([reader.M, reader.N, active(reader)]).toEqual([101, 10, [101, 102]]);
    expect(Array.from(reader.lookup)).toEqual(lookup);
    expect(leftovers()).toEqual([]);
  });

  it('leaves the table as it was when building the new one fails, and no temporary file', () => {
    create().activate([101]);
    const before = statSync(shmPath(NAME)).ino;
    expect(() =>
      TargetStore.create(
        {
          ...NFQLB_TABLE,
          initialize: () => {
            throw new RangeError('no');
          },
        },
        NAME,
        SHAPE,
      ),
    ).toThrow('no');
    expect(statSync(shmPath(NAME)).ino).toBe(before);
    expect(active(open().table)).toEqual([101]);
    expect(leftovers()).toEqual([]);
  });

  it('empties the drain list: a fresh table has no targets to drain', () => {
    create().activate([101, 102]);
    open().deactivate([101]);
    expect(draining()).toEqual([101]);
    create();
    expect(draining()).toEqual([]);
  });

  it('deletes the table and its drain list', () => {
    create().activate([101]);
    open().deactivate([101]);
    TargetStore.delete(NFQLB_TABLE, NAME);
    expect([existsSync(shmPath(NAME)), existsSync(shmPath(`${NAME}-drain`))]).toEqual([false, false]);
    expect(() => open()).toThrow('not found');
  });
});

describe('TargetStore changes keep the drain invariant', () => {
  /**
   * Records, at each drain-list change, whether the fwmark was in the table then: an add must
   * find it still in the table, a remove must find it back in the table (or meant to be dead).
   */
  function watchDrain(table: () => TargetTable): string[] {
    const events: string[] = [];
    const where = (fw: number) => (table().active.includes(fw) ? 'in table' : 'out of table');
    const add = DrainList.prototype.add;
    const remove = DrainList.prototype.remove;
    vi.spyOn(DrainList.prototype, 'add').mockImplementation(function (this: DrainList, fw) {
      events.push(`add ${fw} ${where(fw)}`);
      add.call(this, fw);
    });
    vi.spyOn(DrainList.prototype, 'remove').mockImplementation(function (this: DrainList, fw) {
      events.push(`remove ${fw} ${where(fw)}`);
      remove.call(this, fw);
    });
    return events;
  }

  it('deactivate: into the drain list while still in the table; activate: out of it once back in', () => {
    create().activate([101, 102, 103]);
    const reader = new TargetTable(openShm(NAME, false));
    const events = watchDrain(() => reader);
    expect(open().deactivate([101, 102, 999])).toBe(true);
    expect(events).toEqual(['add 101 in table', 'add 102 in table']);
    expect([active(reader), draining()]).toEqual([[103], [101, 102]]);
    events.length = 0;
    expect(open().activate([102])).toBe(true);
    expect(events).toEqual(['remove 102 in table']);
    expect(draining()).toEqual([101]);
  });

  it("deactivateAt drains the slot's fwmark; with now it is dead at once and no longer draining", () => {
    create().activate([101, 102]);
    const reader = new TargetTable(openShm(NAME, false));
    const events = watchDrain(() => reader);
    open().deactivateAt(1);
    expect(events).toEqual(['add 102 in table']);
    expect(draining()).toEqual([102]);
    events.length = 0;
    open().deactivateAt(0, { now: true });
    expect(events).toEqual(['remove 101 out of table']);
    // A target that is only draining: the table does not change, the list does.
    expect(open().deactivate([102], { now: true })).toBe(false);
    expect([active(reader), draining()]).toEqual([[], []]);
  });

  it('activateAt drains the fwmark it replaces', () => {
    create().activate([101, 102]);
    const reader = new TargetTable(openShm(NAME, false));
    const events = watchDrain(() => reader);
    open().activateAt(0, 105);
    expect(events).toEqual(['add 101 in table', 'remove 105 in table']);
    expect([Array.from(reader.active.subarray(0, 2)), draining()]).toEqual([[105, 102], [101]]);
  });

  it('changes nothing, neither the table nor the list, when the drain list is full', () => {
    const store = create({ M: 4099, N: 2000, ownFwmark: 0 });
    const fwmarks = Array.from({ length: 1025 }, (_, i) => 1000 + i);
    store.activate(fwmarks);
    open().deactivate(fwmarks.slice(0, 1024));
    expect(() => open().deactivate([2024])).toThrow(`drain list of ${NAME} is full: remove drained targets with 'deactivate --now'`);
    expect(open().table.active.includes(2024)).toBe(true);
    expect(draining()).toHaveLength(1024);
  });

  it('refuses a change through a read-only mapping (a write there would be a SIGSEGV)', () => {
    create();
    expect(() => TargetStore.open(NFQLB_TABLE, NAME).activate([101])).toThrow('read-only');
  });
});

describe('TargetStore.apply', () => {
  it('makes the table hold exactly the set, in one publication, draining what leaves', () => {
    create().activate([101, 102, 103]);
    open().deactivate([104]);
    const set = new Map([
      [0, 101],
      [5, 104],
      [6, 105],
    ]);
    const reader = new TargetTable(openShm(NAME, false));
    const events: string[] = [];
    const update = TargetTable.prototype.update;
    vi.spyOn(TargetTable.prototype, 'update').mockImplementation(function (this: TargetTable, change, before) {
      events.push('publish');
      return update.call(this, change, before);
    });
    expect(open().apply(set)).toBe(true);
    expect(events).toEqual(['publish']);
    expect(Array.from(reader.active.subarray(0, 7))).toEqual([101, -1, -1, -1, -1, 104, 105]);
    // 102 and 103 left the table: draining. 104 is back: no longer.
    expect(draining()).toEqual([102, 103]);
    expect(open().apply(set)).toBe(false);
  });

  it('with now, what leaves is dead: not draining', () => {
    create().activate([101, 102]);
    open().deactivate([102]);
    open().apply(new Map([[3, 103]]), { now: true });
    expect(active(open().table)).toEqual([103]);
    expect(draining()).toEqual([]);
  });

  it.each([
    [new Map([[10, 101]]), 'index must be an integer in 0..9, got 10'],
    [new Map([[1, -1]]), 'fwmark must be an integer'],
    [
      new Map([
        [1, 101],
        [2, 101],
      ]),
      'fwmark 101 is given for slots 1 and 2',
    ],
  ])('refuses %j, changing nothing', (slots, message) => {
    create().activate([201, 202]);
    open().deactivate([202]);
    expect(() => open().apply(slots)).toThrow(message);
    expect([active(open().table), draining()]).toEqual([[201], [202]]);
  });
});

describe('TableFollower', () => {
  it('switches to the table init re-created, and keeps the last good one while the name is unreadable', () => {
    create().activate([101]);
    const replaced: TargetTable[] = [];
    const f = new TableFollower(NFQLB_TABLE, NAME, { onReplace: (t) => replaced.push(t), log: false });
    expect(f.check()).toBe(false);
    create({ M: 53, N: 4, ownFwmark: 0 }).activate([102]);
    expect(f.check()).toBe(true);
    expect([f.table.M, active(f.table), replaced]).toEqual([53, [102], [f.table]]);
    TargetStore.delete(NFQLB_TABLE, NAME);
    expect(f.check()).toBe(false);
    expect(f.error).toContain('no such file');
    expect(active(f.table)).toEqual([102]);
    create().activate([103]);
    expect(f.check()).toBe(true);
    expect([f.error, active(f.table)]).toEqual([null, [103]]);
  });

  it('tries the switch again when onReplace throws', () => {
    create();
    let fail = true;
    const f = new TableFollower(NFQLB_TABLE, NAME, {
      onReplace: () => {
        if (fail) throw new Error('not yet');
      },
      log: false,
    });
    const first = f.table;
    create().activate([101]);
    expect(f.check()).toBe(false);
    expect([f.table, f.error]).toEqual([first, 'not yet']);
    fail = false;
    expect(f.check()).toBe(true);
    expect(active(f.table)).toEqual([101]);
  });
});

describe('an xdplb table through the store', () => {
  const XNAME = `tts-xdp-${process.pid}`;
  afterEach(() => TargetStore.delete(XDPLB_TABLE, XNAME));

  it('is created, changed and followed like an nfqlb table, without a drain list', () => {
    const store = TargetStore.create(XDPLB_TABLE, XNAME, { M: 97, N: 5 });
    const f = new TableFollower(XDPLB_TABLE, XNAME, { log: false });
    store.table.activate(2, new Uint8Array([0, 0, 0, 1, 1, 2]));
    TargetStore.open(XDPLB_TABLE, XNAME, true).deactivateAt(2);
    expect(existsSync(shmPath(`${XNAME}-drain`))).toBe(false);
    expect(f.table.isActive(2)).toBe(false);
    TargetStore.create(XDPLB_TABLE, XNAME, { M: 53, N: 3 });
    expect(f.check()).toBe(true);
    expect([f.table.M, f.table.N]).toEqual([53, 3]);
  });
});
