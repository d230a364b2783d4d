// Maglev table build cost: populate runs on every activate/deactivate, so it
// bounds how fast a control plane can churn targets.

import { performance } from 'node:perf_hooks';
import { fillPermutation, populate } from '../maglev.js';

interface Case {
  M: number;
  N: number;
  active: number;
  runs: number;
}

const CASES: Case[] = [
  { M: 997, N: 32, active: 3, runs: 51 },
  { M: 997, N: 32, active: 10, runs: 51 },
  { M: 997, N: 32, active: 32, runs: 51 },
  { M: 65537, N: 1000, active: 1000, runs: 7 },
  { M: 65537, N: 1000, active: 500, runs: 7 },
];

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1] as number;
}

function line(what: string, c: Case, detail: string, ms: number, runs: number): string {
  const shape = `M=${c.M}`.padEnd(8) + `N=${c.N}`.padEnd(7) + detail.padEnd(12);
  return `maglev ${what.padEnd(16)}${shape}${ms.toFixed(3).padStart(9)} ms  (median of ${runs})`;
}

export function benchMaglev(): void {
  let permFor = '';
  let perm = new Uint32Array(0);
  for (const c of CASES) {
    if (permFor !== `${c.M}/${c.N}`) {
      perm = new Uint32Array(c.M * c.N);
      const start = performance.now();
      fillPermutation(perm, c.M, c.N);
      console.log(line('fillPermutation', c, '', performance.now() - start, 1));
      permFor = `${c.M}/${c.N}`;
    }
    const active = new Int32Array(c.N).fill(-1);
    for (let i = 0; i < c.active; i++) active[i] = 100 + i;
    const lookup = new Int32Array(c.M);
    // Let the JIT settle first: the first few hundred calls run unoptimised code.
    for (let r = 0; r < 4 * c.runs; r++) populate(lookup, perm, active, c.M, c.N);
    const times: number[] = [];
    for (let r = 0; r < c.runs; r++) {
      const start = performance.now();
      populate(lookup, perm, active, c.M, c.N);
      times.push(performance.now() - start);
    }
    console.log(line('populate', c, `active=${c.active}`, median(times), c.runs));
  }
}
