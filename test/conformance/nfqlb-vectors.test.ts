// Replays every CLI step recorded from the reference nfqlb on our TargetTable
// and compares the result bit for bit (see README.md beside this file).
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { TargetTable } from '../../src/target-table.js';

interface State {
  after: string;
  fileBytes?: number;
  ownFwmark?: number;
  M?: number;
  N?: number;
  len?: number;
  lookup: number[];
  active: number[];
  permutation?: { offset: number; skip: number }[];
}
interface Query {
  proto: 'tcp' | 'udp' | 'sctp' | null;
  src: string;
  dst: string;
  hashMode: number;
  expect: { hash: number; lookupindex: number; activeindex: number; fwmark: number };
}
interface Scenario {
  name: string;
  initArgs: string[];
  states: State[];
  queries: Query[];
}

const vectorsUrl = new URL('./nfqlb-vectors.json', import.meta.url);
const { scenarios } = JSON.parse(readFileSync(vectorsUrl, 'utf8')) as { scenarios: Scenario[] };

/** Split a recorded step such as `activate --index=2 102` into command, options and operands. */
function parseStep(step: string): { command: string; options: Map<string, string>; operands: number[] } {
  const [command = '', ...words] = step.trim().split(/\s+/);
  const options = new Map<string, string>();
  const operands: number[] = [];
  for (const word of words) {
    const option = /^--([^=]+)=(.*)$/.exec(word);
    if (option) options.set(option[1] as string, option[2] as string);
    else operands.push(Number(word));
  }
  return { command, options, operands };
}

/** Apply one step the way the nfqlb CLI maps it onto TargetTable. */
function applyStep(table: TargetTable | undefined, step: string): TargetTable {
  const { command, options, operands } = parseStep(step);
  const index = options.get('index');
  if (command === 'init') {
    const M = TargetTable.adjustM(Number(options.get('M') ?? 997));
    const N = Number(options.get('N') ?? 32);
    const ownFwmark = Number(options.get('ownfw') ?? 0);
    return TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(M, N)), M, N, ownFwmark);
  }
  if (!table) throw new Error(`step before init: ${step}`);
  if (command === 'activate') {
    if (index === undefined) table.activate(operands);
    else table.setIndex(Number(index), operands[0] as number);
  } else if (command === 'deactivate') {
    if (index === undefined) table.deactivate(operands);
    else table.clearIndex(Number(index));
  } else {
    throw new Error(`unknown step kind: ${step}`);
  }
  return table;
}

/** The whole file the reference would hold, built from a recorded state. */
function expectedFile(init: State, state: State): Uint8Array {
  const { fileBytes = 0, M = 0, N = 0, permutation = [] } = init;
  const bytes = new ArrayBuffer(fileBytes);
  const view = new DataView(bytes);
  view.setInt32(0, init.ownFwmark ?? 0, true);
  view.setUint32(4, M, true);
  view.setUint32(8, N, true);
  view.setUint32(12, init.len ?? 0, true);
  let at = 16;
  for (const v of state.lookup) {
    view.setInt32(at, v, true);
    at += 4;
  }
  for (const { offset, skip } of permutation) {
    for (let j = 0; j < M; j++) {
      view.setUint32(at, (offset + j * skip) % M, true);
      at += 4;
    }
  }
  for (const v of state.active) {
    view.setInt32(at, v, true);
    at += 4;
  }
  return new Uint8Array(bytes);
}

function replay(scenario: Scenario): TargetTable {
  let table: TargetTable | undefined;
  for (const state of scenario.states) table = applyStep(table, state.after);
  if (!table) throw new Error(`${scenario.name}: no states`);
  return table;
}

describe('nfqlb conformance: target tables', () => {
  it('has the step kinds this runner understands', () => {
    const kinds = new Set(scenarios.flatMap((s) => s.states.map((st) => parseStep(st.after).command)));
    expect([...kinds].sort()).toEqual(['activate', 'deactivate', 'init']);
  });

  for (const scenario of scenarios) {
    describe(scenario.name, () => {
      const init = scenario.states[0] as State;

      it('init adjusts M and sizes the file like the reference', () => {
        const { options } = parseStep(init.after);
        const requested = Number(options.get('M') ?? 997);
        expect(TargetTable.adjustM(requested)).toBe(init.M);
        expect(TargetTable.byteLength(init.M as number, init.N as number)).toBe(init.fileBytes);
        expect((init.len as number) + 4).toBe(init.fileBytes);
      });

      it('refuses N > M', () => {
        const M = init.M as number;
        expect(() => TargetTable.byteLength(M, M + 1)).toThrow(RangeError);
        expect(() => TargetTable.initialize(new ArrayBuffer(1 << 22), M, M + 1, 0)).toThrow(RangeError);
      });

      it('reproduces every state bit for bit', () => {
        let table: TargetTable | undefined;
        for (const state of scenario.states) {
          table = applyStep(table, state.after);
          const buffer = new Uint8Array(table.lookup.buffer);
          expect(buffer.length, state.after).toBe(init.fileBytes);
          expect(table.ownFwmark, state.after).toBe(init.ownFwmark);
          expect([table.M, table.N], state.after).toEqual([init.M, init.N]);
          expect(new DataView(buffer.buffer).getUint32(12, true), state.after).toBe(init.len);
          expect(Array.from(table.lookup), state.after).toEqual(state.lookup);
          expect(Array.from(table.active), state.after).toEqual(state.active);
          // Whole file, including the permutation rows and the zeroed slack.
          expect(Buffer.compare(buffer, expectedFile(init, state)), state.after).toBe(0);
        }
      });

      it('permutation rows are (offset + j*skip) % M with the recorded offset and skip', () => {
        const table = applyStep(undefined, init.after);
        const M = table.M;
        const rows = Array.from({ length: table.N }, (_, i) => {
          const offset = table.perm[i * M] as number;
          const skip = ((table.perm[i * M + 1] as number) - offset + M) % M;
          return { offset, skip };
        });
        expect(rows).toEqual(init.permutation);
      });

      it('maps the recorded hashes to the recorded lookup index, slot and fwmark', () => {
        const table = replay(scenario);
        for (const q of scenario.queries) {
          const { hash, lookupindex, activeindex, fwmark } = q.expect;
          expect(table.lookupIndex(hash)).toBe(lookupindex);
          expect(table.lookup[lookupindex]).toBe(activeindex);
          expect(table.fwmarkOf(hash)).toBe(fwmark);
        }
      });
    });
  }
});

// The flow hash is H3's module; imported dynamically so the table checks above
// still run while src/hash.ts is missing.
describe('nfqlb conformance: flow hash to fwmark', () => {
  type HashTuple = (t: { proto: 'tcp' | 'udp' | 'sctp' | null; src: string; dst: string }, hashMode: number) => number;
  let hashTuple: HashTuple;
  beforeAll(async () => {
    const hashModule = '../../src/hash.js';
    ({ hashTuple } = (await import(/* @vite-ignore */ hashModule)) as { hashTuple: HashTuple });
  });

  for (const scenario of scenarios) {
    it(`${scenario.name}: hashTuple + TargetTable give the reference's \`nfqlb fwmark\` answer`, () => {
      const table = replay(scenario);
      for (const q of scenario.queries) {
        const hash = hashTuple({ proto: q.proto, src: q.src, dst: q.dst }, q.hashMode);
        const lookupindex = table.lookupIndex(hash);
        const got = { hash, lookupindex, activeindex: table.lookup[lookupindex], fwmark: table.fwmarkOf(hash) };
        expect(got, `${q.proto} ${q.src} -> ${q.dst} mode ${q.hashMode}`).toEqual(q.expect);
      }
    });
  }
});
