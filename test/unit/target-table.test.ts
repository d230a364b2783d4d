import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { TargetTable } from '../../src/target-table.js';
import { waitFor } from '../wait.js';

function fresh(M = 997, N = 32, ownFwmark = 0, shared = false): TargetTable {
  const size = TargetTable.byteLength(M, N);
  return TargetTable.initialize(shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size), M, N, ownFwmark);
}

const bytesOf = (t: TargetTable): Uint8Array => new Uint8Array(t.lookup.buffer).slice();

/** Every lookup entry points at an active slot (or all are -1 when none is). */
function consistent(t: TargetTable): boolean {
  const anyActive = t.active.some((fw) => fw >= 0);
  return t.lookup.every((slot) => (anyActive ? slot >= 0 && (t.active[slot] as number) >= 0 : slot === -1));
}

describe('TargetTable layout', () => {
  it('initializes the header, permutation and empty slots', () => {
    const t = fresh(887, 20, 201);
    const header = new DataView(t.lookup.buffer);
    expect([header.getInt32(0, true), header.getUint32(4, true), header.getUint32(8, true)]).toEqual([201, 887, 20]);
    expect(header.getUint32(12, true)).toBe(TargetTable.byteLength(887, 20) - 4);
    expect([t.M, t.N, t.ownFwmark]).toEqual([887, 20, 201]);
    expect(t.lookup.every((v) => v === -1)).toBe(true);
    expect(t.active.every((v) => v === -1)).toBe(true);
    expect(t.perm.length).toBe(887 * 20);
  });

  it('reopens an existing table from its header, at an offset too', () => {
    const size = TargetTable.byteLength(397, 10);
    const buffer = new ArrayBuffer(size + 64);
    const a = TargetTable.initialize(buffer, 397, 10, 7, 64);
    a.activate([201, 202]);
    const b = new TargetTable(buffer, 64);
    expect([b.M, b.N, b.ownFwmark]).toEqual([397, 10, 7]);
    expect(Array.from(b.active.subarray(0, 3))).toEqual([201, 202, -1]);
    expect(Array.from(b.lookup)).toEqual(Array.from(a.lookup));
  });

  it('adjusts a requested M like `nfqlb init`', () => {
    expect(TargetTable.adjustM(900)).toBe(887);
    expect(TargetTable.adjustM(997)).toBe(997);
    expect(TargetTable.adjustM(2)).toBe(3);
    expect(TargetTable.adjustM(-4)).toBe(3);
  });

  it.each([
    [900, 20, 'not a prime'],
    [887, 888, 'N > M'],
    [1, 1, 'M < 3'],
    [994013, 1, 'M above the reference maximum'],
    [887, 1.5, 'fractional N'],
  ])('refuses M=%s, N=%s (%s)', (M, N) => {
    expect(() => TargetTable.byteLength(M, N)).toThrow(RangeError);
  });

  it.each([
    ['a truncated buffer', (b: ArrayBuffer) => b.slice(0, b.byteLength - 4)],
    [
      'a wrong len word',
      (b: ArrayBuffer) => {
        new DataView(b).setUint32(12, 5, true);
        return b;
      },
    ],
    [
      'a wrong N',
      (b: ArrayBuffer) => {
        new DataView(b).setUint32(8, 31, true);
        return b;
      },
    ],
    ['an all-zero buffer', (b: ArrayBuffer) => new ArrayBuffer(b.byteLength)],
  ])('rejects %s', (_, spoil) => {
    const buffer = fresh().lookup.buffer as ArrayBuffer;
    expect(() => new TargetTable(spoil(buffer))).toThrow(RangeError);
  });

  it('rejects a misaligned offset and a short buffer for initialize', () => {
    expect(() => TargetTable.initialize(new ArrayBuffer(1 << 20), 997, 32, 0, 2)).toThrow(RangeError);
    expect(() => TargetTable.initialize(new ArrayBuffer(1000), 997, 32, 0)).toThrow(RangeError);
  });
});

describe('TargetTable activate/deactivate', () => {
  it('puts each new fwmark in the first free slot and skips present ones', () => {
    const t = fresh();
    expect(t.activate([101, 102, 103])).toBe(true);
    expect(t.deactivate([102])).toBe(true);
    expect(t.activate([104, 101, 104, 105])).toBe(true);
    expect(Array.from(t.active.subarray(0, 5))).toEqual([101, 104, 103, 105, -1]);
    expect(consistent(t)).toBe(true);
  });

  it('reports no change and leaves the table alone when nothing changes', () => {
    const t = fresh();
    t.activate([101, 102]);
    // A stray lookup value survives only if no re-population happened.
    t.lookup[0] = 1;
    t.lookup[1] = 1;
    const before = bytesOf(t);
    expect(t.activate([102, 101])).toBe(false);
    expect(t.activate([])).toBe(false);
    expect(t.deactivate([999])).toBe(false);
    expect(t.setIndex(1, 102)).toBe(false);
    expect(t.clearIndex(5)).toBe(false);
    expect(bytesOf(t)).toEqual(before);
  });

  it('refuses to activate more fwmarks than free slots, changing nothing', () => {
    const t = fresh(397, 4);
    t.activate([1, 2, 3]);
    const before = bytesOf(t);
    expect(() => t.activate([4, 5])).toThrow(/no free slot for fwmark 5/);
    expect(bytesOf(t)).toEqual(before);
    expect(t.activate([4, 1])).toBe(true);
    expect(Array.from(t.active)).toEqual([1, 2, 3, 4]);
  });

  it('deactivates the first slot holding each fwmark', () => {
    const t = fresh(397, 10);
    t.setIndex(2, 7);
    t.setIndex(5, 7);
    t.setIndex(3, 8);
    expect(t.deactivate([7])).toBe(true);
    expect(Array.from(t.active.subarray(0, 6))).toEqual([-1, -1, -1, 8, -1, 7]);
    expect(t.deactivate([7, 8])).toBe(true);
    expect(t.active.every((v) => v === -1)).toBe(true);
    expect(t.lookup.every((v) => v === -1)).toBe(true);
  });

  it('setIndex replaces a slot and clearIndex frees it', () => {
    const t = fresh(887, 20);
    t.setIndex(1, 101);
    expect(t.lookup.every((v) => v === 1)).toBe(true);
    t.setIndex(2, 102);
    const owners = new Set(t.lookup);
    expect(owners).toEqual(new Set([1, 2]));
    expect(t.setIndex(1, 111)).toBe(true); // same slot, new target: lookup keeps its slot numbers
    expect(new Set(t.lookup)).toEqual(owners);
    expect(t.active[1]).toBe(111);
    expect(t.clearIndex(1)).toBe(true);
    expect(t.lookup.every((v) => v === 2)).toBe(true);
  });

  it.each([
    ['setIndex(-1, 101)', (t: TargetTable) => t.setIndex(-1, 101), /index must be an integer in 0\.\.31, got -1/],
    ['setIndex(32, 101)', (t: TargetTable) => t.setIndex(32, 101), /0\.\.31, got 32/],
    ['setIndex(1.5, 101)', (t: TargetTable) => t.setIndex(1.5, 101), /index/],
    ['setIndex(NaN, 101)', (t: TargetTable) => t.setIndex(Number.NaN, 101), /index/],
    ['setIndex(3, -1)', (t: TargetTable) => t.setIndex(3, -1), /fwmark must be an integer in 0\.\.2147483647, got -1/],
    ['setIndex(3, 2^31)', (t: TargetTable) => t.setIndex(3, 2 ** 31), /fwmark/],
    ['clearIndex(32)', (t: TargetTable) => t.clearIndex(32), /index/],
    ['activate([104, 1.5])', (t: TargetTable) => t.activate([104, 1.5]), /fwmark/],
    ['activate([104, "105"])', (t: TargetTable) => t.activate([104, '105' as unknown as number]), /fwmark/],
    ['deactivate([101, -3])', (t: TargetTable) => t.deactivate([101, -3]), /fwmark/],
  ])('%s throws RangeError and leaves the buffer byte-identical', (_, call, message) => {
    const t = fresh();
    t.activate([101, 102, 103]);
    const before = bytesOf(t);
    expect(() => call(t)).toThrow(RangeError);
    expect(() => call(t)).toThrow(message);
    expect(bytesOf(t)).toEqual(before);
  });
});

describe('TargetTable concurrent readers', () => {
  it('publishes a new lookup in one copy: new slots before it, freed slots after it', () => {
    const t = fresh();
    t.activate([101, 102, 103]);
    const publishes: boolean[] = [];
    const realSet = t.lookup.set.bind(t.lookup);
    // At the moment the new lookup lands, both the old and the new entries must
    // point at active slots, and the new lookup must not contain -1.
    t.lookup.set = ((source: Int32Array) => {
      publishes.push(consistent(t) && !source.includes(-1) && source.every((slot) => (t.active[slot] as number) >= 0));
      realSet(source);
    }) as typeof t.lookup.set;
    t.activate([104, 105]);
    t.deactivate([101, 103]);
    t.setIndex(0, 106);
    t.clearIndex(1);
    expect(publishes).toEqual([true, true, true, true]);
    expect(consistent(t)).toBe(true);
  });

  it('never shows another thread a -1 lookup entry while targets are active', async () => {
    const t = fresh(997, 32, 0, true);
    t.activate([100]);
    // [done, reading, passes]: the reader says it is reading and counts its passes over
    // lookup[], so the writer can run only while it reads and until it read enough.
    const sync = new Int32Array(new SharedArrayBuffer(12));
    // The reader spins over lookup[] the way an lb would, counting entries that
    // are not a valid slot, until the writer says it is done.
    const reader = new Worker(
      `const { workerData: { buffer, sync, M } } = require('node:worker_threads');
       const lookup = new Int32Array(buffer, 16, M);
       let bad = 0, reads = 0;
       Atomics.store(sync, 1, 1);
       while (Atomics.load(sync, 0) === 0) {
         for (let j = 0; j < M; j++) { const s = lookup[j]; if (s < 0 || s >= 32) bad++; }
         reads += M;
         Atomics.add(sync, 2, 1);
       }
       require('node:worker_threads').parentPort.postMessage({ bad, reads });`,
      { eval: true, workerData: { buffer: t.lookup.buffer, sync, M: t.M } },
    );
    const result = new Promise<{ bad: number; reads: number }>((resolve, reject) => {
      reader.once('message', resolve);
      reader.once('error', reject);
    });
    await waitFor('the reader to start reading', () => Atomics.load(sync, 1) === 1);
    const passesBefore = Atomics.load(sync, 2);
    // At least 300 rounds, and on until the reader made 1000 passes while they ran.
    const deadline = Date.now() + 10_000;
    for (let round = 0; round < 300 || Atomics.load(sync, 2) - passesBefore < 1000; round++) {
      if (Date.now() > deadline) throw new Error(`the reader made ${Atomics.load(sync, 2) - passesBefore} passes in 10 s of writing`);
      t.activate([101, 102, 103, 104, 105, 106, 107, 108]);
      t.deactivate([101, 103, 105, 107]);
      t.deactivate([102, 104, 106, 108]);
    }
    Atomics.store(sync, 0, 1);
    const { bad, reads } = await result;
    await reader.terminate();
    expect(reads).toBeGreaterThanOrEqual(1000 * t.M);
    expect(bad).toBe(0);
  });
});

describe('TargetTable lookups', () => {
  it('maps a uint32 hash to lookup index and fwmark', () => {
    const t = fresh();
    t.activate([101, 102, 103]);
    expect(t.lookupIndex(4284380250)).toBe(4284380250 % 997);
    expect(t.lookupIndex(-1)).toBe(4294967295 % 997); // as uint32
    const slot = t.lookup[4284380250 % 997] as number;
    expect(t.fwmarkOf(4284380250)).toBe(t.active[slot]);
  });

  it('returns -1 for no target and never reads out of bounds on a corrupt lookup', () => {
    const t = fresh();
    expect(t.fwmarkOf(12345)).toBe(-1);
    t.activate([101]);
    t.lookup[5] = 32; // one past the last slot
    t.lookup[6] = -7;
    t.lookup[7] = 0x7fffffff;
    expect([t.fwmarkOf(5), t.fwmarkOf(6), t.fwmarkOf(7), t.fwmarkOf(8)]).toEqual([-1, -1, -1, 101]);
  });
});

describe('TargetTable show', () => {
  it('prints the reference `nfqlb show` text', () => {
    const t = fresh();
    t.activate([101, 102, 103]);
    expect(t.show('nfqlb')).toBe(
      'Shm: nfqlb\n' +
        '  Fw: own=0\n' +
        '  Maglev: M=997, N=32\n' +
        '   Lookup: 2 0 0 2 2 1 0 1 0 0 1 2 2 1 2 1 1 0 2 0 2 0 2 1 2...\n' +
        '   Active: 101(0) 102(1) 103(2)',
    );
  });

  it('shows an empty table, gaps in the slots and a small M', () => {
    const t = fresh(17, 5, 201);
    expect(t.show('lb')).toBe(
      'Shm: lb\n  Fw: own=201\n  Maglev: M=17, N=5\n' + '   Lookup: -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1...\n   Active:',
    );
    t.setIndex(3, 203);
    expect(t.show('lb').split('\n')[4]).toBe('   Active: 203(3)');
  });
});
