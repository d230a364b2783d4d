// The lab's health tests (lblab --registry --health: `nfqlb follow --health` on every LB of a
// registry tier), the four on one lab, IPv4 and IPv6 together: a crashed server's listening
// process is out of every table within 3.5 s and no new connection fails after that, and it comes
// back; one LB's broken path to one target changes no table and that LB alone reports it; with
// every server down the tables stay (fail open) and every LB says all down; a restarted checker
// takes nothing out during its warm-up.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { DETECTION_GOAL_MS } from '../../src/lab/health-tests.js';
import { removeLab, runHealthTests, type TestResult } from '../../src/lab/suite.js';
import { labNamespaces } from '../../src/lab/topology.js';
import { labOptions, ROOT } from './harness.js';

const PREFIX = 'thl-';
const TESTS = ['health_target_crash', 'health_partition', 'health_all_down', 'health_restart'];
let out: string;
let results: TestResult[];

/** A figure a test printed: the numbers the pattern's groups match, in order. */
function figure(r: TestResult, re: RegExp): number[] {
  const line = r.figures.find((f) => re.test(f));
  expect(line, `a figure matching ${re} in ${JSON.stringify(r.figures)}`).toBeDefined();
  return re.exec(line!)!.slice(1).map(Number);
}

/** Prints a test's figures (the report copies them) and checks that it passed. */
function passed(test: string): TestResult {
  const r = results.find((x) => x.test === test)!;
  console.log(`${r.test}:\n  ${r.figures.join('\n  ')}`);
  expect(r.unavailable).toBeUndefined();
  expect(r.problems).toEqual([]);
  expect(r.ok).toBe(true);
  return r;
}

beforeAll(async () => {
  if (!existsSync(`${ROOT}dist/src/lab/health-tests.js`)) throw new Error('run `make build` first: the lab runs bin/nfqlb');
  out = mkdtempSync(join(tmpdir(), 'thl-'));
  removeLab(PREFIX);
  results = await runHealthTests(
    TESTS,
    labOptions({
      prefix: PREFIX,
      outDir: out,
      nrouters: 2,
      scale: [3],
      families: [4, 6],
      rate: 100,
      log: (line) => console.log(`${new Date().toISOString().slice(11, 23)} ${line}`),
    }),
  );
  expect(results.map((r) => r.test)).toEqual(TESTS);
  // The lab is gone, also its shared memory.
  expect(labNamespaces(PREFIX)).toEqual([]);
  expect(readdirSync('/dev/shm').filter((f) => f.startsWith(PREFIX))).toEqual([]);
}, 150_000);

afterAll(() => {
  removeLab(PREFIX);
  rmSync(out, { recursive: true, force: true });
  expect(labNamespaces(PREFIX)).toEqual([]);
});

test('lblab test --health without --registry: one line, nothing created', () => {
  const r = spawnSync(process.execPath, [`${ROOT}bin/lblab`, 'test', `--prefix=${PREFIX}`, '--health', 'nfqueue'], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stderr).toBe('lblab test: nfqueue: --health goes with --registry (nfqlb follow --health)\n');
  expect(labNamespaces(PREFIX)).toEqual([]);
});

test('health_target_crash: out of every table within 3.5 s, 0 failed connects after that, back when restarted', () => {
  const r = passed('health_target_crash');
  const [detection, goal, back] = figure(
    r,
    /out of all 2 LBs' tables in (\d+) ms \(goal <= (\d+) ms\); restarted -> back in every table in (\d+) ms/,
  );
  expect(goal).toBe(DETECTION_GOAL_MS);
  // fall 3 at a 1 s interval: not before the third failed probe could have been sent.
  expect(detection).toBeGreaterThan(1500);
  expect(detection).toBeLessThanOrEqual(DETECTION_GOAL_MS);
  // rise 2: two passed probes.
  expect(back).toBeGreaterThan(500);
  expect(back).toBeLessThanOrEqual(5000);
  for (const f of [4, 6]) {
    const [n, before, after] = figure(
      r,
      new RegExp(`^IPv${f}: (\\d+) new connections at 100/s: failed (\\d+) before the detection, (\\d+) after it`),
    );
    expect(n).toBe(900);
    // Until the detection the dead server's share of new connections fails: the crash was seen.
    expect(before).toBeGreaterThan(0);
    expect(after).toBe(0);
  }
});

test('health_partition: one LB cut from one target: no table changes, that LB alone reports the disagreement', () => {
  const r = passed('health_partition');
  const [ms, goal, lb1, lb2] = figure(
    r,
    /disagreement reported in (\d+) ms \(goal <= (\d+) ms\); nfqlb_health_disagreement per LB: (\d+) (\d+)/,
  );
  expect(ms).toBeLessThanOrEqual(goal!);
  expect([lb1, lb2]).toEqual([0, 1]);
  expect(figure(r, /table samples that changed meanwhile: (\d+)/)).toEqual([0]);
});

test('health_all_down: every server down: tables unchanged, nfqlb_service_all_down = 1 on every LB', () => {
  const r = passed('health_all_down');
  const [ms, changed] = figure(r, /nfqlb_service_all_down = 1 on all 2 LBs in (\d+) ms; table samples that changed: (\d+)/);
  expect(ms).toBeLessThanOrEqual(DETECTION_GOAL_MS + 1000);
  expect(changed).toBe(0);
});

test('health_restart: a checker restarted under traffic takes nothing out during its warm-up', () => {
  const r = passed('health_restart');
  const [, warm, changed] = figure(r, /following in (\d+) ms, warm-up over after (\d+) ms\); table samples that changed: (\d+)/);
  expect(warm).toBeGreaterThanOrEqual(5000);
  expect(changed).toBe(0);
  for (const f of [4, 6]) expect(figure(r, new RegExp(`^IPv${f}: (\\d+) new connections at 100/s: failed (\\d+)`))).toEqual([800, 0]);
});
