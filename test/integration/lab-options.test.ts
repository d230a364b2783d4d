// Two promises of the README's lab sections that no other test checks:
// - `nfqlb lb --announce --drain=ms` (the BGP tier): on SIGTERM the lb withdraws at once but
//   keeps serving for the drain time (connections pinned to it by a policy route still work),
//   then exits; long-lived connections over the tier lose nothing meanwhile;
// - `lblab test --resilient ecmp_scale_out`: with a kernel resilient next-hop group, servers
//   added back get only idle buckets, so no established connection moves (hash-threshold ECMP,
//   run as the control, moves about half of them).

import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bgpUnavailable } from '../../src/lab/bgp.js';
import { inNs } from '../../src/lab/netns.js';
import { removeLab, runTest } from '../../src/lab/suite.js';
import { labNamespaces, routerAddr, VIP, vmName } from '../../src/lab/topology.js';
import type { MconnectResult } from '../../src/lab/traffic/mconnect.js';
import type { CtrafficStats } from '../../src/lab/traffic/stats.js';
import { toolArgv } from '../../src/lab/traffic/tools.js';
import { waitFor } from '../wait.js';
import { establishedTo, labOptions, NFQLB, ROOT, requireBuild } from './harness.js';

let out: string;

beforeAll(() => {
  requireBuild();
  out = mkdtempSync(join(tmpdir(), 'tmo-lab-'));
});

afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('nfqlb lb --announce --drain (BGP tier)', () => {
  const PREFIX = 'tmo-dr-';
  const DRAIN_MS = 3000;
  const tester = `${PREFIX}${vmName(221)}`;
  const lb1 = `${PREFIX}${vmName(201)}`;
  // Sources in this range always go through LB 1 (a policy route on the gateway), whatever
  // BGP says: they see whether that lb still serves once it has withdrawn.
  const PINNED = '50.0.99.0/24';
  const NCONN = 20;
  const mine: ChildProcess[] = [];

  /** Next-hops of the gateway's learned IPv4 VIP route (0: none). */
  const nexthops = (): number => {
    const [r] = JSON.parse(inNs(tester, ['ip', '-j', '-4', 'route', 'show', `${VIP[4]}/32`]) || '[]') as { nexthops?: unknown[] }[];
    return r === undefined ? 0 : (r.nexthops?.length ?? 1);
  };
  const pinnedMconnect = (): MconnectResult => {
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        tester,
        ...toolArgv('mconnect'),
        `--address=${VIP[4]}:5001`,
        '--nconn=40',
        `--srccidr=${PINNED}`,
        '--timeout=1s',
        '--output=json',
      ],
      { encoding: 'utf8' },
    );
    return JSON.parse(r.stdout) as MconnectResult;
  };

  beforeAll(async () => {
    const missing = bgpUnavailable();
    if (missing) throw new Error(missing);
    removeLab(PREFIX);
    const r = await runTest('start_nfqueue', labOptions({ prefix: PREFIX, outDir: out, nvm: 2, nrouters: 2, rate: 100, bgp: true }));
    if (!r.ok) throw new Error(`start_nfqueue --bgp: ${r.unavailable ?? r.problems.join('; ')}`);
  });

  afterAll(() => {
    for (const p of mine) p.kill('SIGKILL');
    removeLab(PREFIX);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  test(`SIGTERM with --drain=${DRAIN_MS}: withdrawn at once, serves its flows ${DRAIN_MS} ms more, then exits`, async () => {
    // The lab's lb of vm-201 gives way to one started here with --drain (same arguments).
    const [labLb] = execFileSync('ip', ['netns', 'pids', lb1], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map(Number)
      .filter((pid) => /\bnfqlb\0lb\0/.test(readFileSync(`/proc/${pid}/cmdline`, 'latin1')));
    expect(labLb).toBeDefined();
    const args = readFileSync(`/proc/${labLb}/cmdline`, 'latin1')
      .split('\0')
      .filter((a) => a.startsWith('--'));
    expect(args).toContain('--announce=vip0');
    process.kill(labLb!, 'SIGKILL');
    await waitFor("the killed lb's device to go", () => !inNs(lb1, ['ip', 'link']).includes('vip0'));
    await waitFor('the gateway to drop LB 1', () => nexthops() === 1);

    let output = '';
    const lb = spawn('ip', ['netns', 'exec', lb1, process.execPath, NFQLB, 'lb', ...args, `--drain=${DRAIN_MS}`]);
    mine.push(lb);
    lb.stdout.on('data', (d: Buffer) => (output += d.toString()));
    lb.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number>((r) => lb.once('exit', () => r(Date.now())));
    // 'close': the last lines may still be in the pipe at the exit.
    const closed = new Promise((r) => lb.once('close', r));
    await waitFor('the lb to announce', () => output.includes('announcing'));
    await waitFor('the gateway to learn LB 1 again', () => nexthops() === 2);
    execFileSync('ip', ['-n', tester, '-4', 'rule', 'add', 'from', PINNED, 'table', '777', 'pref', '100']);
    execFileSync('ip', ['-n', tester, '-4', 'route', 'add', `${VIP[4]}/32`, 'via', routerAddr(1, 2, 4), 'table', '777']);
    const before = pinnedMconnect();
    expect(before.failed_connects + before.failed_reads, JSON.stringify(before)).toBe(0);
    // Long-lived connections over the whole tier (not pinned) across the stop: none may break.
    const statsFile = join(out, 'drain-ctraffic.json');
    const ctraffic = spawn(
      'ip',
      [
        'netns',
        'exec',
        tester,
        ...toolArgv('ctraffic'),
        `--address=${VIP[4]}:5003`,
        `--nconn=${NCONN}`,
        '--rate=200',
        `--timeout=${DRAIN_MS + 4000}ms`,
        '--srccidr=50.0.1.0/24',
        `--stats-file=${statsFile}`,
      ],
      { stdio: 'ignore' },
    );
    mine.push(ctraffic);
    const ctrafficDone = new Promise<number | null>((r) => ctraffic.once('close', r));
    await waitFor('every ctraffic connection to be up', () => establishedTo(tester, 5003) === NCONN);

    const t0 = Date.now();
    lb.kill('SIGTERM');
    await waitFor('the lb to delete its device', () => !inNs(lb1, ['ip', 'link']).includes('vip0'), { interval: 5 });
    await waitFor('the gateway to withdraw LB 1', () => nexthops() === 1, { interval: 5 });
    const withdrawnMs = Date.now() - t0;
    // Withdrawn, but still serving: the pinned connections through LB 1 all reach a server.
    const during = pinnedMconnect();
    const stillUp = lb.exitCode === null && lb.signalCode === null;
    const duringMs = Date.now() - t0;
    expect(stillUp, `the lb exited ${duringMs} ms after SIGTERM: ${output}`).toBe(true);
    expect(during.failed_connects + during.failed_reads, JSON.stringify(during)).toBe(0);
    expect(Object.keys(during.hosts).sort()).toEqual([vmName(1), vmName(2)]);
    expect(withdrawnMs).toBeLessThan(DRAIN_MS / 2);

    const exitMs = (await exited) - t0;
    await closed;
    expect(output).toContain(`"drainMs":${DRAIN_MS},"msg":"withdrawn: draining"`);
    expect(lb.exitCode, output).toBe(0);
    expect(exitMs).toBeGreaterThanOrEqual(DRAIN_MS);
    expect(exitMs).toBeLessThan(DRAIN_MS + 2000);
    // The control: with the lb gone, the same pinned connections fail (nothing serves the queue).
    const after = pinnedMconnect();
    expect(after.failed_connects).toBe(40);

    expect(await ctrafficDone).toBe(0);
    const stats = JSON.parse(readFileSync(statsFile, 'utf8')) as CtrafficStats;
    expect(stats.failedConnects).toBe(0);
    expect(stats.lostEvents).toBe(0);
    expect(stats.connections.filter((c) => c.events.some((e) => e.type === 'lost'))).toEqual([]);
    // They carried traffic the whole time: about rate x duration echoes came back.
    expect(stats.received).toBeGreaterThan((0.8 * 200 * (DRAIN_MS + 4000)) / 1000);
  });
});

describe('lblab test --resilient ecmp_scale_out (as the README runs it)', () => {
  const PREFIX = 'tmo-ec-';

  /** Runs lblab test; returns its output and, per family, the scale-out's lost / ideal connections. */
  async function lblab(args: string[]): Promise<{ text: string; scaleOut: Record<string, { lost: number; ideal: number }> }> {
    const p = spawn(process.execPath, [
      `${ROOT}bin/lblab`,
      'test',
      `--prefix=${PREFIX}`,
      `--out=${out}`,
      '--nvm=10',
      ...args,
      'ecmp_scale_out',
    ]);
    let text = '';
    p.stdout.on('data', (d: Buffer) => (text += d.toString()));
    p.stderr.on('data', (d: Buffer) => (text += d.toString()));
    const code = await new Promise<number | null>((r) => p.once('close', r));
    expect(code, text).toBe(0);
    const scaleOut: Record<string, { lost: number; ideal: number }> = {};
    let family = '';
    for (const line of text.split('\n')) {
      family = /^ecmp_scale_out (IPv[46]): \d+ connections$/.exec(line)?.[1] ?? family;
      const m = /^\s+scale-out\s+[\d.]+s\s+vm-001\s+(\d+)\s+(\d+)$/.exec(line);
      if (m) scaleOut[family] = { lost: Number(m[1]), ideal: Number(m[2]) };
    }
    return { text, scaleOut };
  }

  beforeAll(() => {
    removeLab(PREFIX);
    // Resilient groups came with Linux 5.13: say so plainly on a kernel without them.
    const probe = `${PREFIX}probe`;
    execFileSync('ip', ['netns', 'add', probe]);
    try {
      const r = spawnSync('ip', ['-n', probe, '-batch', '-'], {
        input: 'link set lo up\nnexthop add id 1 dev lo\nnexthop add id 2 group 1 type resilient buckets 8\n',
        encoding: 'utf8',
      });
      if (r.status !== 0) {
        throw new Error(`this kernel has no resilient next-hop groups (ip nexthop ... type resilient): ${r.stderr.trim()}`);
      }
    } finally {
      execFileSync('ip', ['netns', 'del', probe]);
    }
  });

  afterAll(() => {
    removeLab(PREFIX);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  test('--resilient: server 1 added back moves no established connection (IPv4 and IPv6)', async () => {
    const { text, scaleOut } = await lblab(['--family=4,6', '--resilient']);
    expect(text).toContain('PASS ecmp_scale_out');
    expect(scaleOut, text).toEqual({ IPv4: { lost: 0, ideal: 0 }, IPv6: { lost: 0, ideal: 0 } });
  });

  test('control, hash-threshold ECMP: the same scale-out moves many connections', async () => {
    const { text, scaleOut } = await lblab(['--family=4']);
    // A tenth of the hash space changes hands at each of ~10 boundaries: ~45 of 100 in the README.
    expect(scaleOut.IPv4?.lost, text).toBeGreaterThan(10);
  });
});
