// The lab's nfqueue scale tests with `nfqlb lb --conntrack` (lblab test --conntrack): servers
// that leave drain, so neither the scale-in nor the scale-out loses a connection; with
// --stop-servers the scale-in loses exactly the connections on the stopped servers.

import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type LabOptions, removeLab, runTest } from '../../src/lab/suite.js';
import { labNamespaces } from '../../src/lab/topology.js';
import { labOptions, ROOT } from './harness.js';

const PREFIX = 'tct-l';
let out: string;

const options = (o: Partial<LabOptions>): LabOptions => labOptions({ prefix: PREFIX, outDir: out, conntrack: 65536, ...o });

beforeAll(() => {
  if (!existsSync(`${ROOT}dist/src/cli/nfqlb.js`)) throw new Error('run `make build` first: the lab runs bin/nfqlb');
  out = mkdtempSync(join(tmpdir(), 'tct-l'));
  removeLab(PREFIX);
});

afterAll(() => {
  removeLab(PREFIX);
  rmSync(out, { recursive: true, force: true });
  expect(labNamespaces(PREFIX)).toEqual([]);
  expect(readdirSync('/dev/shm').filter((f) => f.startsWith(PREFIX))).toEqual([]);
});

test('nfqueue_scale --conntrack: servers 1 and 2 drain and come back, 0 of 100 lost', async () => {
  const r = await runTest('nfqueue_scale', options({ scale: [1, 2], durationMs: 8000 }));
  expect(r.ok, r.problems.join('; ')).toBe(true);
  const run = r.runs[0]!;
  expect(run.report.neverConnected).toBe(0);
  expect(run.report.phases.map((p) => [p.event.kind, p.lost])).toEqual([
    ['scale-in', 0],
    ['scale-out', 0],
  ]);
  expect(run.report.phases[0]!.ideal).toBeGreaterThan(0);
});

test('nfqueue_scale_in --conntrack --stop-servers: loses exactly the connections on the stopped servers', async () => {
  const r = await runTest('nfqueue_scale_in', options({ scale: [1, 2], durationMs: 5000, stopServers: true }));
  expect(r.ok, r.problems.join('; ')).toBe(true);
  const [phase] = r.runs[0]!.report.phases;
  expect(phase!.ideal).toBeGreaterThan(0);
  expect(phase!.lost).toBe(phase!.ideal);
  for (const host of Object.keys(phase!.lostByHost)) expect(['vm-001', 'vm-002']).toContain(host);
});
