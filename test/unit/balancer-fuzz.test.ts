// Property test of the whole decision path (parser, flows, LB tier, fragment table with stored
// fragments): over random and mutated packets from the fixtures, nothing throws, every verdict is
// a drop or a fwmark the configuration can produce, and stored fragments stay within bounds.
import { describe, expect, it } from 'vitest';
import type { TargetTable } from '../../src/target-table.js';
import { buildTable, FIXTURE_M, fixtureBalancer, fixtureGroups, LB_TIER, TABLES, type TableName } from '../fixtures/nfqlb-fixtures.js';
import { prng } from '../fixtures/prng.js';

const ROUNDS = 300_000;

const tables: Record<TableName, TargetTable> = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') };
const isTableFwmark = (fw: number) => Object.values(TABLES).some((base) => fw >= base && fw < base + FIXTURE_M);

describe.each(fixtureGroups().map((g) => [g.name, g] as const))('Balancer fuzz: %s', (_name, group) => {
  it(`gives ${ROUNDS} mutated packets a valid verdict`, () => {
    const rnd = prng(0xba1a);
    const corpus = group.fixtures.flatMap((f) => f.packets);
    const injected: Uint8Array[] = [];
    let clock = 0;
    const b = fixtureBalancer(group.config, tables, injected, () => clock);
    const buf = new Uint8Array(4096);
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS && failures.length < 5; round++) {
      const src = corpus[rnd() % corpus.length]!;
      buf.set(src);
      let len = src.length;
      for (let flips = rnd() % 4; flips > 0; flips--) buf[rnd() % Math.min(len, 80)] = rnd() & 0xff;
      if (rnd() % 4 === 0) len = rnd() % (len + 1);
      clock += rnd() % 20; // fragment entries time out now and then (ttl 200 ms)
      const verdicts: number[] = [];
      try {
        verdicts.push(b.fwmarkOf(buf, 0, len));
        // Stored fragments come back through the queue when their first fragment arrives.
        for (const again of injected.splice(0)) {
          if (again.length > 1500) failures.push(`round ${round}: injected ${again.length} bytes`);
          verdicts.push(b.fwmarkOf(again, 0, again.length));
        }
      } catch (e) {
        failures.push(`round ${round}: threw ${(e as Error).stack}`);
        continue;
      }
      for (const fw of verdicts) {
        const valid = fw < 0 || isTableFwmark(fw) || fw === LB_TIER.other || fw === group.config.nolbFwmark;
        if (!Number.isInteger(fw) || !valid)
          failures.push(`round ${round}: fwmark ${fw} for ${Buffer.from(buf.subarray(0, len)).toString('hex')}`);
      }
    }
    expect(failures).toEqual([]);
  });
});
