// Maglev consistent hashing (Eisenbud et al., NSDI 2016) exactly as the
// reference nfqlb computes it, so a tier can mix our load-balancers with
// the reference's without moving a single flow.

import { GlibcRandom } from './glibc-random.js';

/** The reference caps M at 997^2 (its prime test only knows primes up to 997). */
export const MAX_M = 994009;

/** The largest prime <= n, capped like the reference (n > 994009 counts as 994009). */
export function primeBelow(n: number): number {
  if (!Number.isFinite(n)) throw new RangeError(`primeBelow: not a finite number: ${n}`);
  let p = Math.min(Math.floor(n), MAX_M);
  if (p < 2) throw new RangeError(`There is no prime below ${n}`);
  if (p < 4) return p;
  if (p % 2 === 0) p--;
  while (!isOddPrime(p)) p -= 2;
  return p;
}

function isOddPrime(n: number): boolean {
  for (let d = 3; d * d <= n; d += 2) {
    if (n % d === 0) return false;
  }
  return true;
}

/**
 * Fill the N x M permutation table (row-major) from a fresh unseeded glibc
 * rand(): row i takes the (2i+1)th output for offset and the (2i+2)th for skip.
 * The reference computes `offset + j * skip` in 32-bit unsigned arithmetic,
 * which wraps once M > 65536 (rows then stop being true permutations); we
 * wrap the same way to stay bit-identical.
 */
export function fillPermutation(perm: Uint32Array, M: number, N: number): void {
  if (perm.length !== N * M) {
    throw new RangeError(`fillPermutation: perm has ${perm.length} entries, expected N*M = ${N * M}`);
  }
  const random = new GlibcRandom();
  const TWO_32 = 2 ** 32;
  // A 32-bit overflow of the sum subtracts 2^32, i.e. `wrap` modulo M.
  const wrap = TWO_32 % M;
  for (let i = 0; i < N; i++) {
    const offset = random.next() % M;
    const skip = (random.next() % (M - 1)) + 1;
    // Step the sum instead of computing (offset + j*skip) % M per entry: no
    // division in the loop (3x faster at M=65537, N=1000).
    let sum = offset; // offset + j*skip as the reference's uint32
    let value = offset; // sum % M
    const row = i * M;
    for (let j = 0; j < M; j++) {
      perm[row + j] = value;
      sum += skip;
      value += skip;
      if (sum >= TWO_32) {
        sum -= TWO_32;
        value -= wrap;
      }
      if (value >= M) value -= M;
      else if (value < 0) value += M;
    }
  }
}

/**
 * Maglev Pseudocode 1: the active slots (active[i] >= 0) take turns, in slot
 * order, claiming the next unclaimed entry of their permutation row until all
 * M lookup entries are claimed. lookup[j] = slot index, or -1 everywhere when
 * no slot is active.
 */
export function populate(lookup: Int32Array, perm: Uint32Array, active: Int32Array, M: number, N: number): void {
  if (lookup.length < M || perm.length !== N * M || active.length < N) {
    throw new RangeError(`populate: arrays do not fit M=${M}, N=${N}`);
  }
  lookup.fill(-1, 0, M);
  // The turn order: indexes of active slots. `cursor[k]` is the flat index in
  // perm of the next candidate of slot order[k]; it only ever moves forward.
  const order = new Int32Array(N);
  let nActive = 0;
  for (let i = 0; i < N; i++) {
    if ((active[i] as number) >= 0) order[nActive++] = i;
  }
  if (nActive === 0) return;
  const cursor = new Int32Array(nActive);
  for (let k = 0; k < nActive; k++) cursor[k] = (order[k] as number) * M;

  const end = perm.length;
  let filled = 0;
  for (;;) {
    for (let k = 0; k < nActive; k++) {
      let at = cursor[k] as number;
      let c: number;
      for (;;) {
        // Only a wrapped row (M > 65536) can run off its end. The reference
        // then reads on into the next row, which we copy; past the last row it
        // reads unrelated memory, where we take the first free entry instead.
        if (at >= end) {
          c = lookup.indexOf(-1);
          break;
        }
        c = perm[at] as number;
        if ((lookup[c] as number) < 0) break;
        at++;
      }
      lookup[c] = order[k] as number;
      cursor[k] = at + 1;
      if (++filled === M) return;
    }
  }
}
