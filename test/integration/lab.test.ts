// The lab end to end: short versions of the original's nfqueue_scale and ecmp_scale_in runs
// (real nfqlb and kernel ECMP, 100 real TCP connections, servers removed and added back),
// the lblab CLI's list, refusals, IPVS detection and start/down, the IPVS and XDP labs where the
// kernel has them, and that nothing is left.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ipvsUnavailable, xdpUnavailable } from '../../src/lab/lb-setup.js';
import { type LabOptions, removeLab, runTest, type ScaleRun } from '../../src/lab/suite.js';
import { labNamespaces, vmName } from '../../src/lab/topology.js';
import { labOptions, ROOT } from './harness.js';

const PREFIX = 'tlbl-';
const NVM = 10;
const ALL_SERVERS = Array.from({ length: NVM }, (_, k) => vmName(k + 1));
let out: string;

function lblab(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [`${ROOT}bin/lblab`, ...args], { encoding: 'utf8', env: { ...process.env, __nvm: '', __scale: '' } });
}

const options = (o: Partial<LabOptions>): LabOptions => labOptions({ prefix: PREFIX, outDir: out, nvm: NVM, ...o });

const labShm = (): string[] => readdirSync('/dev/shm').filter((f) => f.startsWith(PREFIX));

// The lab needs /proc/net/ip_vs, which a modular kernel has once ip_vs is loaded. Without
// modules or IPVS modprobe fails: the IPVS lab test is then skipped, saying why.
if (!existsSync('/proc/net/ip_vs')) spawnSync('modprobe', ['ip_vs'], { stdio: 'ignore' });
const kernelIpvs = existsSync('/proc/net/ip_vs');
const noIpvs = kernelIpvs ? ipvsUnavailable() : 'IPVS not in this kernel';
if (noIpvs !== null) console.warn(`lab.test.ts: the ipvs lab test is skipped: ${noIpvs}`);
const ipvsSkipped = noIpvs === null ? '' : ` (skipped: ${noIpvs})`;

/** What every scale run must show: all servers reached, nothing lost before scaling, a plot. */
function expectHealthyRun(run: ScaleRun): void {
  expect(Object.keys(run.report.before).sort()).toEqual(ALL_SERVERS);
  expect(Object.values(run.report.before).reduce((a, b) => a + b, 0)).toBe(100);
  expect(run.report.neverConnected).toBe(0);
  expect(run.report.lostBefore).toBe(0);
  const svg = readFileSync(run.plotFile, 'utf8');
  expect(svg).toMatch(/^<svg /);
  expect(svg).toContain('class="scale-event"');
}

beforeAll(() => {
  if (!existsSync(`${ROOT}dist/src/cli/nfqlb.js`)) throw new Error('run `make build` first: the lab runs bin/nfqlb and bin/lblab');
  out = mkdtempSync(join(tmpdir(), 'tlbl-'));
  removeLab(PREFIX);
});

afterAll(() => {
  removeLab(PREFIX);
  rmSync(out, { recursive: true, force: true });
});

describe('lblab CLI', () => {
  test('test --list lists the original test names', () => {
    const r = lblab('test', '--list');
    expect(r.status).toBe(0);
    const names = r.stdout.trim().split('\n');
    for (const t of [
      'nfqueue',
      'nfqueue_scale',
      'nfqueue_scale_in',
      'nfqueue_scale_out',
      'nfqueue_scale_lb',
      'ecmp',
      'ecmp_scale',
      'ecmp_scale_in',
      'ecmp_scale_out',
      'ecmp_scale_lb',
      'ipvs',
      'ipvs_scale',
      'xdp',
      'start_nfqueue',
      'start_ecmp',
      'start_xdp',
    ]) {
      expect(names).toContain(t);
    }
  });

  test.each([
    [['test', `--prefix=${PREFIX}`, 'nosuch'], "unknown test 'nosuch'"],
    [['test', `--prefix=${PREFIX}`, '--nvm=0', 'ecmp'], '--nvm: 0 is out of range'],
    [['test', `--prefix=${PREFIX}`, '--nvm=10', '--scale=1 11', 'ecmp_scale'], '--scale 11 is not a server (1..10)'],
    [['test', `--prefix=${PREFIX}`, '--nvm=2', '--scale=1 2', 'ecmp_scale_in'], 'would remove every server'],
    [['test', `--prefix=${PREFIX}`, 'nfqueue_scale_lb'], 'needs --nrouters >= 2'],
    [['test', `--prefix=${PREFIX}`, '--family=5', 'ecmp'], "--family: '5'"],
  ])('refuses %j with one line, creating nothing', (args, message) => {
    const r = lblab(...args);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(message);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  // Only a kernel without IPVS shows the message; one with it runs the IPVS lab (scale tests).
  test.skipIf(kernelIpvs)('ipvs stops with a clear message on a kernel without IPVS', () => {
    const r = lblab('test', `--prefix=${PREFIX}`, 'ipvs', 'ipvs_scale');
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('NOT RUN ipvs: IPVS is not available in this kernel');
    expect(r.stdout).toContain('NOT RUN ipvs_scale: IPVS is not available in this kernel');
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  test('start_ecmp leaves a working lab up; down removes it', () => {
    const r = lblab('test', `--prefix=${PREFIX}`, '--nvm=2', `--out=${out}`, 'start_ecmp');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`ip netns exec ${PREFIX}vm-221 bash`);
    expect(r.stdout).toContain(`down --prefix=${PREFIX}`);
    // The servers outlived lblab: mconnect from the tester reaches both.
    const m = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        `${PREFIX}vm-221`,
        process.execPath,
        `${ROOT}dist/src/lab/traffic/mconnect.js`,
        '--address=[1000::]:5001',
        '--nconn=40',
        '--srccidr=2000::/112',
        '--output=json',
      ],
      { encoding: 'utf8' },
    );
    expect(m.status, m.stderr).toBe(0);
    expect(Object.keys(JSON.parse(m.stdout).hosts).sort()).toEqual(['vm-001', 'vm-002']);
    expect(lblab('down', `--prefix=${PREFIX}`).status).toBe(0);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });
});

describe('scale tests', () => {
  test('nfqueue_scale, IPv4 and IPv6: servers 1 and 2 out and back; loss near the ideal', async () => {
    const r = await runTest('nfqueue_scale', options({ scale: [1, 2], families: [4, 6], durationMs: 8000 }));
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.runs.map((run) => run.family)).toEqual([4, 6]);
    for (const run of r.runs) {
      expectHealthyRun(run);
      const [scaleIn, scaleOut] = run.report.phases;
      expect(scaleIn!.event).toMatchObject({ kind: 'scale-in', targets: ['vm-001', 'vm-002'] });
      expect(scaleOut!.event.kind).toBe('scale-out');
      // The connections on vm-001/002 must go; Maglev disturbs a few more (0-9 in a dozen runs).
      expect(scaleIn!.ideal).toBeGreaterThan(0);
      expect(scaleIn!.lost).toBeGreaterThanOrEqual(scaleIn!.ideal - 2);
      // At most 35 of 100; the random sources sometimes put more than 25 on vm-001/002 alone
      // (a few % of runs), then at most 10 beyond the ideal.
      expect(scaleIn!.lost).toBeLessThanOrEqual(Math.max(35, scaleIn!.ideal + 10));
      // Counted from the lost connections' own hosts: every one vm-001/002 served at the event is
      // lost. vm-002 leaves a moment after vm-001 (an nfqlb deactivate each), so it may also lose
      // connections that moved to it from vm-001 in between (12 for its 7 in one run).
      expect(scaleIn!.lostByHost['vm-001'] ?? 0).toBe(run.report.before['vm-001'] ?? 0);
      expect(scaleIn!.lostByHost['vm-002'] ?? 0).toBeGreaterThanOrEqual(run.report.before['vm-002'] ?? 0);
      // Back in: the table is the original again, so only moved connections can break.
      expect(scaleOut!.lost).toBeLessThanOrEqual(scaleIn!.lost);
    }
    expect(labNamespaces(PREFIX)).toEqual([]);
    expect(labShm()).toEqual([]);
  });

  test('ecmp_scale_in, IPv6, a middle target: hash-threshold moves more than the ideal', async () => {
    const r = await runTest('ecmp_scale_in', options({ scale: [5], families: [6], durationMs: 6000 }));
    expect(r.ok, r.problems.join('; ')).toBe(true);
    const [run] = r.runs;
    expectHealthyRun(run!);
    const [scaleIn] = run!.report.phases;
    expect(scaleIn!.event).toMatchObject({ kind: 'scale-in', targets: ['vm-005'] });
    expect(scaleIn!.lost).toBeGreaterThanOrEqual(scaleIn!.ideal - 2);
    // About 28% in theory for 10 next-hops (an edge target: 50%).
    expect(scaleIn!.lost).toBeLessThanOrEqual(50);
    expect(Object.keys(scaleIn!.lostByHost).length).toBeGreaterThan(1);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  test('nfqueue_scale_in, SYN-only: conntrack keeps established connections on their server', async () => {
    const r = await runTest('nfqueue_scale_in', options({ scale: [1, 2], synOnly: true, durationMs: 5000 }));
    expect(r.ok, r.problems.join('; ')).toBe(true);
    const run = r.runs[0]!;
    expectHealthyRun(run);
    // Removed from nfqlb's table, vm-001/002 get no new connections, but keep their old ones.
    expect(run.report.phases[0]).toMatchObject({ lost: 0 });
    expect(run.report.phases[0]!.ideal).toBeGreaterThan(0);
    expect(run.report.after).toEqual(run.report.before);
  });

  test('nfqueue_scale_lb: two nfqlb routers behind ECMP agree on every flow, so none is lost', async () => {
    const r = await runTest('nfqueue_scale_lb', options({ nrouters: 2, scale: [201], durationMs: 5000 }));
    expect(r.ok, r.problems.join('; ')).toBe(true);
    const run = r.runs[0]!;
    expectHealthyRun(run);
    expect(run.report.phases.map((p) => [p.event.kind, p.event.targets, p.lost, p.ideal])).toEqual([
      ['scale-in', ['vm-201'], 0, 0],
      ['scale-out', ['vm-201'], 0, 0],
    ]);
    expect(labNamespaces(PREFIX)).toEqual([]);
    expect(labShm()).toEqual([]);
  });

  test('ecmp_scale_lb: ECMP routers hash each with a secret of their own, so moved flows break', async () => {
    const r = await runTest('ecmp_scale_lb', options({ nrouters: 2, scale: [201], durationMs: 5000 }));
    expect(r.ok, r.problems.join('; ')).toBe(true);
    const run = r.runs[0]!;
    expectHealthyRun(run);
    // About half the flows came through vm-201; vm-202 sends ~90% of them to another server.
    expect(run.report.phases[0]!.lost).toBeGreaterThanOrEqual(20);
    expect(run.report.phases[0]!.lost).toBeLessThanOrEqual(75);
  });

  test.skipIf(noIpvs !== null)(`ipvs: IPVS on the router reaches every server over IPv4 and IPv6${ipvsSkipped}`, async () => {
    const r = await runTest('ipvs', options({ nvm: 4 }));
    expect(r.unavailable).toBeUndefined();
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    const reached = r.mconnect.map((m) => [m.family, Object.keys(m.result.hosts).sort()]);
    expect(reached).toEqual([4, 6].map((f) => [f, ALL_SERVERS.slice(0, 4)]));
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  test.skipIf(xdpUnavailable() !== null)('xdp: xdplb on the router reaches every server over IPv4 and IPv6', async () => {
    const r = await runTest('xdp', options({ nvm: 4 }));
    expect(r.problems).toEqual([]);
    expect(r.mconnect.map((m) => [m.family, Object.keys(m.result.hosts).sort()])).toEqual([4, 6].map((f) => [f, ALL_SERVERS.slice(0, 4)]));
    expect(labNamespaces(PREFIX)).toEqual([]);
  });
});
