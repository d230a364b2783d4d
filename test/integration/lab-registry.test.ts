// The lab's registry tests (lblab --registry: a 3-member etcd with TLS and users, an
// `nfqlb follow` per LB, an `nfqlb register --lease` sidecar per server), short versions that
// still hold the goals: propagation p99 <= 100 ms to every LB with identical tables and hashes;
// a crashed target out of every table within the lease + 1 s; nothing lost while all of etcd is
// down, and the LBs converged within 1 s of its return; nothing lost over an LB's restart; and
// a rolling restart through the registry with --conntrack losing nothing. IPv4 and IPv6 run together.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type LabOptions, removeLab, runTest, type TestResult } from '../../src/lab/suite.js';
import { labNamespaces } from '../../src/lab/topology.js';
import { labOptions, ROOT } from './harness.js';

const PREFIX = 'trl-';
let out: string;

const options = (o: Partial<LabOptions>): LabOptions =>
  labOptions({ prefix: PREFIX, outDir: out, nvm: 4, nrouters: 2, families: [4, 6], ...o });

/** A figure a test printed: the numbers the pattern's groups match, in order. */
function figure(r: TestResult, re: RegExp): number[] {
  const line = r.figures.find((f) => re.test(f));
  expect(line, `a figure matching ${re} in ${JSON.stringify(r.figures)}`).toBeDefined();
  return re.exec(line!)!.slice(1).map(Number);
}

/** Prints a test's figures (the report copies them) and checks that it passed and left nothing. */
function expectPassed(r: TestResult): void {
  console.log(`${r.test}:\n  ${r.figures.join('\n  ')}`);
  expect(r.unavailable).toBeUndefined();
  expect(r.problems).toEqual([]);
  expect(r.ok).toBe(true);
  expect(labNamespaces(PREFIX)).toEqual([]);
  expect(readdirSync('/dev/shm').filter((f) => f.startsWith(PREFIX))).toEqual([]);
}

beforeAll(() => {
  if (!existsSync(`${ROOT}dist/src/lab/registry-writer.js`)) throw new Error('run `make build` first: the lab runs bin/nfqlb');
  out = mkdtempSync(join(tmpdir(), 'trl-'));
  removeLab(PREFIX);
});

afterAll(() => {
  removeLab(PREFIX);
  rmSync(out, { recursive: true, force: true });
  expect(labNamespaces(PREFIX)).toEqual([]);
  expect(existsSync(`/tmp/${PREFIX}etcd`)).toBe(false);
});

test.each([
  [['--registry', 'ecmp_scale'], 'ecmp_scale: --registry is for the nfqueue tests (nfqlb follow)'],
  [['--nrouters=1', 'registry_propagation'], 'registry_propagation: needs --nrouters >= 2 (LBs to compare)'],
])('lblab test %j: one line, nothing created', (args, message) => {
  const r = spawnSync(process.execPath, [`${ROOT}bin/lblab`, 'test', `--prefix=${PREFIX}`, ...args], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stderr).toBe(`lblab test: ${message}\n`);
  expect(labNamespaces(PREFIX)).toEqual([]);
});

test('registry_propagation: 200 changes, 4 LBs, 32 targets: p99 <= 100 ms, identical tables and hashes after each', async () => {
  const r = await runTest('registry_propagation', options({ nrouters: 4 }));
  expectPassed(r);
  const [n, lbs, targets, p50, p99, max] = figure(
    r,
    /^(\d+) changes, (\d+) LBs, (\d+) targets: .* p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms/,
  );
  expect([n, lbs, targets]).toEqual([200, 4, 32]);
  expect(p50).toBeLessThanOrEqual(p99!);
  expect(p99).toBeLessThanOrEqual(100);
  expect(max).toBeGreaterThanOrEqual(p99!);
  const [spread] = figure(r, /tables identical on all LBs after every change; first to last LB: max (\d+) ms/);
  expect(spread).toBeLessThanOrEqual(1000);
}, 120_000);

test('registry_target_crash: a SIGKILLed sidecar and server leave every table within the lease + 1 s', async () => {
  const r = await runTest('registry_target_crash', options({ scale: [2] }));
  expectPassed(r);
  const [ms, lease, goal] = figure(r, /out of all 2 LBs' tables in (\d+) ms \(lease (\d+) s, goal <= (\d+) ms\)/);
  expect(lease).toBeLessThanOrEqual(10);
  expect(goal).toBe(lease! * 1000 + 1000);
  // The key goes when the lease runs out: not before the sidecar's last renewal had lapsed.
  expect(ms).toBeGreaterThan(lease! * 1000 * (2 / 3) - 500);
  expect(ms).toBeLessThanOrEqual(goal!);
  for (const f of [4, 6]) expect(figure(r, new RegExp(`^IPv${f}: mconnect (\\d+) connections, failed (\\d+)`))).toEqual([100, 0]);
}, 90_000);

test('registry_etcd_faults: a change with 2 of 3 members; 0 lost with none; converged within 1 s of the restart', async () => {
  const r = await runTest('registry_etcd_faults', options({ durationMs: 10_000 }));
  expectPassed(r);
  expect(r.figures.some((f) => /^1\. all 3 members killed .*kept its table: yes$/.test(f))).toBe(true);
  const [, converged] = figure(r, /^2\. members restarted \(serving after (\d+) ms\): every LB converged (\d+) ms after etcd answered/);
  figure(r, /^3\. leader etcd\d killed: an undrain applied on every LB (\d+) ms after its write/);
  expect(converged).toBeLessThanOrEqual(1000);
  expect(r.runs.map((run) => run.family)).toEqual([4, 6]);
  for (const run of r.runs) {
    expect(run.report.neverConnected).toBe(0);
    const down = run.report.phases.find((p) => p.event.targets[0] === 'etcd-all-killed');
    expect(down?.lost).toBe(0);
  }
}, 120_000);

test('registry_lb_restart: an LB and its follower SIGKILLed, restarted: 0 lost, the table there before the first watch event', async () => {
  const r = await runTest('registry_lb_restart', options({ durationMs: 6000 }));
  expectPassed(r);
  figure(r, /the lb serves again after (\d+) ms, its table there at once: yes/);
  expect(figure(r, /connected in \d+ ms; samples without the registry's table meanwhile: (\d+)/)).toEqual([0]);
  for (const run of r.runs) expect(run.report.phases.reduce((n, p) => n + p.lost, 0)).toBe(0);
}, 120_000);

test('registry_scale --conntrack: servers 1 and 2 restarted by their sidecars take over their draining registrations: 0 lost', async () => {
  const r = await runTest('registry_scale', options({ nvm: 10, nrouters: 1, scale: [1, 2], durationMs: 6000, conntrack: 65536 }));
  expectPassed(r);
  // The sidecars drain for the whole run: the started ones find them draining and take over.
  const [drain] = figure(r, /^sidecars drain (\d+) ms; started again while draining \(took over\): vm-001 vm-002$/);
  expect(drain).toBeGreaterThanOrEqual(6000);
  expect(r.runs.map((run) => run.family)).toEqual([4, 6]);
  for (const run of r.runs) {
    const [scaleIn, scaleOut] = run.report.phases;
    expect([scaleIn!.event.kind, scaleIn!.event.targets, scaleOut!.event.kind]).toEqual(['scale-in', ['vm-001', 'vm-002'], 'scale-out']);
    // Connections to the leaving servers were there to lose, and none was.
    expect(scaleIn!.ideal).toBeGreaterThan(0);
    expect([scaleIn!.lost, scaleOut!.lost]).toEqual([0, 0]);
  }
}, 120_000);
