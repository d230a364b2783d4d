// The LB tier behind BGP, in CI: BIRD on the gateway (the tester) and on two LBs, the VIPs
// learned as one multipath route; an lb stopped gracefully and started again, and an lb
// killed with SIGKILL, under 100 long-lived connections: none may break. Also the ECMP lab
// with a resilient next-hop group (scale-in loses only the removed server's connections).
// Everything is named with the prefix tbg-ci- (namespaces, shared memory, BIRD files).

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bgpUnavailable, birdDir } from '../../src/lab/bgp.js';
import { formatMs, type LabOptions, removeLab, runTest, type TestResult } from '../../src/lab/suite.js';
import { labNamespaces } from '../../src/lab/topology.js';
import { labOptions, ROOT, requireBuild } from './harness.js';

const PREFIX = 'tbg-ci-';
let out: string;

/** The BGP hold time the gateway's sessions use (contrib/bird/gateway.conf), in ms. */
const HOLD_MS = 1000 * Number(/^\s*hold time (\d+);/m.exec(readFileSync(`${ROOT}contrib/bird/gateway.conf`, 'utf8'))![1]);

const options = (o: Partial<LabOptions>): LabOptions => labOptions({ prefix: PREFIX, outDir: out, nvm: 4, nrouters: 2, bgp: true, ...o });

/** Nothing of the lab is left: namespaces, shared memory, BIRD files and processes. */
function expectGone(): void {
  expect(labNamespaces(PREFIX)).toEqual([]);
  expect(readdirSync('/dev/shm').filter((f) => f.startsWith(PREFIX))).toEqual([]);
  expect(existsSync(birdDir(PREFIX))).toBe(false);
  expect(spawnSync('pgrep', ['-f', birdDir(PREFIX)]).status).toBe(1);
}

/**
 * Every LB-tier run: 0 connections lost, and the gateway followed an lb that left by the
 * announcement, not by a timer. An lb stopped with SIGTERM withdraws, then serves on for its
 * drain (2 s): the route must have changed before it exited. One killed with SIGKILL loses its
 * device with the process, and the route must follow well within the BGP hold time: a timer
 * (hold time, BIRD's device scan) would take seconds, the withdrawal takes ~100 ms.
 */
function expectNoLoss(r: TestResult): void {
  expect(r.problems).toEqual([]);
  expect(r.ok).toBe(true);
  for (const run of r.runs) {
    expect(run.report.neverConnected).toBe(0);
    expect(run.report.phases.map((p) => p.lost)).toEqual(run.report.phases.map(() => 0));
    expect(run.convergence.length).toBe(run.report.phases.length);
    for (const c of run.convergence) {
      const lb = c.kind === 'scale-in' ? 'exited' : 'serving';
      console.log(`${c.how}: gateway route changed after ${formatMs(c.ms)}; lb ${lb} after ${c.processMs} ms`);
    }
    for (const c of run.convergence.filter((x) => x.kind === 'scale-in')) {
      const ms = Math.max(c.ms[4], c.ms[6]);
      if (c.how === 'lb SIGTERMed') expect(ms).toBeLessThan(c.processMs);
      else expect(ms).toBeLessThan(HOLD_MS);
    }
  }
}

beforeAll(() => {
  requireBuild();
  // Not a skip: CI installs bird2 (Makefile APT_PACKAGES); a machine without it fails here, clearly.
  const missing = bgpUnavailable();
  if (missing) throw new Error(missing);
  out = mkdtempSync(join(tmpdir(), 'tbg-ci-'));
  removeLab(PREFIX);
});

afterAll(() => {
  removeLab(PREFIX);
  rmSync(out, { recursive: true, force: true });
});

describe('BGP tier', () => {
  test('start_nfqueue --bgp: the gateway learns one multipath route per family, one next-hop per LB', async () => {
    const r = await runTest('start_nfqueue', options({}));
    try {
      expect(r.ok, r.problems.join('; ')).toBe(true);
      const tester = `${PREFIX}vm-221`;
      for (const [family, route] of [
        ['-4', '10.0.0.0/32'],
        ['-6', '1000::/128'],
      ] as const) {
        const [learned] = JSON.parse(execFileSync('ip', ['-n', tester, '-j', family, 'route', 'show', route], { encoding: 'utf8' })) as {
          protocol: string;
          nexthops: unknown[];
        }[];
        expect(learned?.protocol).toBe('bird');
        expect(learned?.nexthops).toHaveLength(2);
      }
      // The lab's static route to the VIP range is gone: nothing but BIRD leads to the VIPs.
      expect(execFileSync('ip', ['-n', tester, 'route', 'show', 'exact', '10.0.0.0/24'], { encoding: 'utf8' }).trim()).toBe('');
      // Each BIRD has its own socket; the gateway's sessions are up, with BFD.
      const show = (what: string): string =>
        execFileSync('birdc', ['-s', join(birdDir(PREFIX), 'gateway.ctl'), 'show', ...what.split(' ')], { encoding: 'utf8' });
      expect(show('protocols').match(/Established/g)).toHaveLength(4);
      expect(show('bfd sessions').match(/ Up /g)).toHaveLength(4);
    } finally {
      expect(spawnSync(process.execPath, [`${ROOT}bin/lblab`, 'down', `--prefix=${PREFIX}`]).status).toBe(0);
    }
    expectGone();
  });

  test('nfqueue_scale_lb --bgp: an lb stopped with SIGTERM (withdraw, drain) and started again loses nothing', async () => {
    const r = await runTest('nfqueue_scale_lb', options({ durationMs: 8000 }));
    expectNoLoss(r);
    expect(r.runs[0]!.convergence.map((c) => c.how)).toEqual(['lb SIGTERMed', 'lb started']);
    expectGone();
  });

  test('nfqueue_crash_lb --bgp, IPv6: an lb killed with SIGKILL loses nothing; the outage is the route change', async () => {
    const r = await runTest('nfqueue_crash_lb', options({ families: [6], durationMs: 6000 }));
    expectNoLoss(r);
    const [crash] = r.runs[0]!.convergence;
    expect(crash!.how).toBe('lb SIGKILLed');
    // The clients' longest wait is the route change plus TCP's backoff to the next retransmission
    // (doubling from ~200 ms: within 2 x the change + 200 ms), and a second for a busy machine.
    // Longer means the surviving lb did not serve the moved flows at once.
    const maxDelay = r.runs[0]!.maxDelay!;
    console.log(`longest wait for an echo: ${maxDelay} ms`);
    expect(maxDelay).toBeLessThan(2 * crash!.ms[6] + 1200);
    expectGone();
  });

  test('nfqlb lb --announce refuses a device that exists (it could not die with the lb)', () => {
    const r = spawnSync(process.execPath, [`${ROOT}bin/nfqlb`, 'lb', '--announce=lo'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe('nfqlb lb: --announce: device lo exists; the lb must create it');
  });
});

describe('lblab refusals', () => {
  test.each([
    [['--nrouters=2', 'nfqueue_crash_lb'], 'nfqueue_crash_lb: needs --bgp'],
    [['--bgp', 'ecmp_scale'], 'ecmp_scale: --bgp is for the nfqueue tests'],
    [['--resilient', 'nfqueue_scale'], 'nfqueue_scale: --resilient is for the ecmp tests'],
    [['--bgp', 'nfqueue_crash_lb'], 'needs --nrouters >= 2'],
  ])('lblab test %j: one line, nothing created', (args, message) => {
    const r = spawnSync(process.execPath, [`${ROOT}bin/lblab`, 'test', `--prefix=${PREFIX}`, ...args], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(message);
    expectGone();
  });
});

describe('resilient ECMP', () => {
  test('ecmp_scale_in --resilient, an edge target: loses no more than the ideal + 5', async () => {
    const r = await runTest('ecmp_scale_in', options({ bgp: false, resilient: true, nvm: 10, nrouters: 1, durationMs: 6000 }));
    expect(r.ok, r.problems.join('; ')).toBe(true);
    const [scaleIn] = r.runs[0]!.report.phases;
    expect(scaleIn!.event).toMatchObject({ kind: 'scale-in', targets: ['vm-001'] });
    expect(scaleIn!.ideal).toBeGreaterThan(0);
    expect(scaleIn!.lost).toBeGreaterThanOrEqual(scaleIn!.ideal - 2);
    expect(scaleIn!.lost).toBeLessThanOrEqual(scaleIn!.ideal + 5);
    expectGone();
  });
});
