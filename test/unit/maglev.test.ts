import { describe, expect, it } from 'vitest';
import { GlibcRandom } from '../../src/glibc-random.js';
import { fillPermutation, populate, primeBelow } from '../../src/maglev.js';

// Golden numbers below come from glibc itself (a small C program calling
// rand()/srand() and doing the reference's unsigned arithmetic), not from
// this implementation.

function fnv1a(values: ArrayLike<number>): number {
  let h = 2166136261;
  for (let i = 0; i < values.length; i++) h = Math.imul(h ^ (values[i] as number), 16777619);
  return h >>> 0;
}

const perms = new Map<string, Uint32Array>();

function table(M: number, N: number, activeSlots: number[]): { lookup: Int32Array; perm: Uint32Array; active: Int32Array } {
  let perm = perms.get(`${M}/${N}`);
  if (!perm) {
    perm = new Uint32Array(N * M);
    fillPermutation(perm, M, N);
    perms.set(`${M}/${N}`, perm);
  }
  const active = new Int32Array(N).fill(-1);
  for (const i of activeSlots) active[i] = 100 + i;
  const lookup = new Int32Array(M);
  populate(lookup, perm, active, M, N);
  return { lookup, perm, active };
}

function ownership(lookup: Int32Array, N: number): number[] {
  const counts = new Array<number>(N).fill(0);
  for (const slot of lookup) counts[slot] = (counts[slot] as number) + 1;
  return counts;
}

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

describe('GlibcRandom', () => {
  const outputs = (seed: number | undefined, n: number): number[] => {
    const r = seed === undefined ? new GlibcRandom() : new GlibcRandom(seed);
    return range(n).map(() => r.next());
  };

  it('reproduces an unseeded glibc rand()', () => {
    expect(outputs(undefined, 5)).toEqual([1804289383, 846930886, 1681692777, 1714636915, 1957747793]);
  });

  it('treats seed 0 as seed 1, like srand()', () => {
    expect(outputs(0, 5)).toEqual(outputs(1, 5));
  });

  it.each([
    [12345, [383100999, 858300821, 357768173, 455528251, 133005921]],
    [0x80000000, [1336741213, 1210407648, 1447044896, 337392383, 82502902]],
    [0xffffffff, [254925627, 1205188300, 366127624, 1401405153, 76053476]],
  ])('reproduces srand(%i)', (seed, expected) => {
    expect(outputs(seed, 5)).toEqual(expected);
  });

  it('stays in 0..2^31-1', () => {
    const r = new GlibcRandom();
    for (let i = 0; i < 100_000; i++) {
      const v = r.next();
      if (!(v >= 0 && v <= 0x7fffffff && Number.isInteger(v))) throw new Error(`bad output ${v} at ${i}`);
    }
  });
});

describe('primeBelow', () => {
  it.each([
    [2, 2],
    [3, 3],
    [4, 3],
    [10, 7],
    [400, 397],
    [900, 887],
    [997, 997],
    [1000, 997],
    [65536, 65521],
    [65537, 65537],
    [994009, 993997],
    [10_000_000, 993997], // the reference caps M at 997^2
  ])('primeBelow(%i) = %i', (n, p) => {
    expect(primeBelow(n)).toBe(p);
  });

  it.each([1, 0, -5, Number.NaN])('throws RangeError for %s', (n) => {
    expect(() => primeBelow(n)).toThrow(RangeError);
  });
});

describe('fillPermutation', () => {
  it('matches the reference rows for M=997, N=32', () => {
    const { perm } = table(997, 32, []);
    expect(Array.from(perm.subarray(0, 2))).toEqual([537, 752]); // offset 537, skip 215
    expect(Array.from(perm.subarray(997 - 2, 997))).toEqual([107, 322]);
    expect(Array.from(perm.subarray(32 * 997 - 2))).toEqual([946, 974]);
    expect(fnv1a(perm)).toBe(590933299);
  });

  it('makes every row a permutation of 0..M-1 when M <= 65536', () => {
    const M = 997;
    const { perm } = table(M, 32, []);
    for (let i = 0; i < 32; i++) {
      const row = Array.from(perm.subarray(i * M, (i + 1) * M)).sort((a, b) => a - b);
      expect(row).toEqual(range(M));
    }
  });

  it('wraps offset + j*skip at 32 bits like the reference when M > 65536', () => {
    const { perm } = table(65537, 1000, []);
    expect(Array.from(perm.subarray(0, 2))).toEqual([55773, 64932]);
    expect(Array.from(perm.subarray(65537 - 2, 65537))).toEqual([37455, 46614]);
    expect(fnv1a(perm)).toBe(3251719769);
  });

  it('rejects a perm array of the wrong size', () => {
    expect(() => fillPermutation(new Uint32Array(10), 997, 32)).toThrow(RangeError);
  });
});

describe('populate', () => {
  it('matches the reference lookup for M=997 with slots 0..2 active', () => {
    const { lookup } = table(997, 32, [0, 1, 2]);
    expect(Array.from(lookup.subarray(0, 25))).toEqual([2, 0, 0, 2, 2, 1, 0, 1, 0, 0, 1, 2, 2, 1, 2, 1, 1, 0, 2, 0, 2, 0, 2, 1, 2]);
    expect(fnv1a(lookup)).toBe(2116734633);
  });

  it('matches the reference for M=65537, N=1000 (all and half active)', () => {
    expect(fnv1a(table(65537, 1000, range(1000)).lookup)).toBe(2636768225);
    expect(fnv1a(table(65537, 1000, range(500)).lookup)).toBe(3948788007);
  });

  it('follows the reference into the next row when a wrapped row runs out (M=993997)', () => {
    // With M this large the reference's rows are far from permutations and
    // its search reads on into the following rows; the result must still match.
    const { lookup, perm } = table(993997, 20, range(20));
    expect(fnv1a(perm)).toBe(3822162316);
    expect(Array.from(lookup.subarray(0, 10))).toEqual([0, 3, 7, 10, 12, 19, 13, 9, 19, 2]);
    expect(fnv1a(lookup)).toBe(4165728999);
  });

  it('gives -1 everywhere when no slot is active', () => {
    const { lookup } = table(997, 32, []);
    expect(lookup.every((v) => v === -1)).toBe(true);
  });

  it('gives every entry to a single active slot', () => {
    const { lookup } = table(997, 32, [7]);
    expect(lookup.every((v) => v === 7)).toBe(true);
  });

  it('balances exactly: each active slot owns floor(M/n) or ceil(M/n) entries', () => {
    const M = 997;
    for (const slots of [[0, 1, 2], [3, 9, 17, 30], range(10, 5), range(32)]) {
      const counts = ownership(table(M, 32, slots).lookup, 32);
      const n = slots.length;
      for (let i = 0; i < 32; i++) {
        if (slots.includes(i)) expect(counts[i]).toBeGreaterThanOrEqual(Math.floor(M / n));
        if (slots.includes(i)) expect(counts[i]).toBeLessThanOrEqual(Math.ceil(M / n));
        else expect(counts[i]).toBe(0);
      }
    }
  });

  it('moves few entries beyond those of a removed target (minimal disruption)', () => {
    // Measured: at M=65537 removing any one of 10 targets moves at most 0.33%
    // of the entries the survivors owned (3.2% at the small M=997).
    const M = 65537;
    const N = 20;
    const before = table(M, N, range(10)).lookup;
    for (const removed of range(10)) {
      const after = table(
        M,
        N,
        range(10).filter((i) => i !== removed),
      ).lookup;
      let moved = 0;
      let survivorsOwned = 0;
      for (let j = 0; j < M; j++) {
        if (before[j] === removed) {
          expect(after[j]).not.toBe(removed);
          continue;
        }
        survivorsOwned++;
        if (after[j] !== before[j]) moved++;
      }
      expect(moved).toBeGreaterThan(0); // Maglev trades a little disruption for balance
      expect(moved / survivorsOwned).toBeLessThan(0.01);
    }
  });

  it('rejects arrays that do not fit M and N', () => {
    const perm = new Uint32Array(997 * 32);
    expect(() => populate(new Int32Array(996), perm, new Int32Array(32), 997, 32)).toThrow(RangeError);
    expect(() => populate(new Int32Array(997), perm, new Int32Array(31), 997, 32)).toThrow(RangeError);
  });
});
