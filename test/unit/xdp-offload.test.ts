// What `xdplb lb --offload` publishes (targetEntries) and how a TableMirror publishes it.

import { describe, expect, it } from 'vitest';
import { TableMirror } from '../../src/table-mirror.js';
import { ENTRY_WORDS, targetEntries } from '../../src/xdp/offload.js';
import { parseMac, XdpTable } from '../../src/xdp/table.js';

function table(): XdpTable {
  return XdpTable.initialize(new ArrayBuffer(XdpTable.byteLength(7, 3)), 7, 3);
}

describe('targetEntries', () => {
  it('gives each lookup entry its slot and that target MAC as struct target_entry bytes, -1 without a target', () => {
    const t = table();
    const out = new Int32Array(7 * ENTRY_WORDS).fill(99);
    targetEntries(t, out);
    expect(Array.from(out)).toEqual(new Array(7).fill([-1, 0, 0]).flat());
    t.activate(0, parseMac('0a:0b:0c:0d:0e:0f'));
    t.activate(2, parseMac('02:00:00:00:00:02'));
    targetEntries(t, out);
    const bytes = new Uint8Array(out.buffer);
    for (let i = 0; i < 7; i++) {
      const slot = t.targets.lookup[i]!;
      expect(out[i * ENTRY_WORDS]).toBe(slot);
      expect(Array.from(bytes.subarray(12 * i + 4, 12 * i + 10))).toEqual(Array.from(t.macs.subarray(slot * 8, slot * 8 + 6)));
    }
    expect(new Set(Array.from({ length: 7 }, (_, i) => out[i * ENTRY_WORDS]))).toEqual(new Set([0, 2]));
    // A writer in another process may leave anything in the shm: a slot out of range is no target.
    t.targets.lookup[3] = 17;
    targetEntries(t, out);
    expect(Array.from(out.subarray(9, 12))).toEqual([-1, 0, 0]);
  });
});

describe('TableMirror', () => {
  it('publishes a table only when what the program reads changed, and retries a failed publish', () => {
    const published: number[][] = [];
    let fail = false;
    const mirror = new TableMirror<XdpTable>(
      'test',
      (t) => t.M * ENTRY_WORDS,
      targetEntries,
      (e) => {
        if (fail) throw new Error('no memory');
        published.push(Array.from(e));
      },
    );
    const t = table();
    mirror.sync(t);
    mirror.sync(t);
    expect(published).toHaveLength(1);
    t.activate(1, parseMac('02:00:00:00:00:01'));
    fail = true;
    mirror.follow(t); // logged, not thrown
    expect(published).toHaveLength(1);
    fail = false;
    mirror.follow(t);
    expect(published).toHaveLength(2);
    expect(published[1]!.filter((w, i) => i % ENTRY_WORDS === 0 && w === 1)).toHaveLength(7);
  });
});
