// The README's own command blocks ("Using nfqlb", "Using xdplb"), extracted from README.md and
// run exactly as written, so the documentation cannot drift from the code. They run on the
// router of a one-server lab, where `via 192.168.1.1` is the server, in a mount namespace with
// a private /dev/shm: the blocks use the default table names (nfqlb, ftshm, xdplb), and a real
// user's tables of those names must not be touched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createTopology, labNamespaces, type Topology } from '../../src/lab/topology.js';
import { keyHash } from '../fixtures/nfqlb-fixtures.js';
import { mconnect, requireBuild, ROOT, startDaemon, startServers } from './harness.js';

const PREFIX = 'tfc-rd-';

/** The ```sh blocks of the README section with this heading, each as its lines. */
function readmeBlocks(readme: string, heading: string): string[][] {
  const start = readme.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`README.md has no section '## ${heading}'`);
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!.split('\n').filter((l) => l.trim() !== ''));
}

/** The lines of the ```sh blocks of the README section with this heading. */
export function readmeCommands(readme: string, heading: string): string[] {
  return readmeBlocks(readme, heading).flat();
}

/** A long-running command: started, checked, stopped by the test. */
const daemonLine = (line: string): boolean => /^bin\/(nfqlb|xdplb) lb\b/.test(line);

/** The machine's files of the names the blocks use: they must be left as they were. */
const machineShm = (): (string | null)[] =>
  ['nfqlb', 'ftshm', 'xdplb'].map((n) => (existsSync(`/dev/shm/${n}`) ? `${n} ${statSync(`/dev/shm/${n}`).mtimeMs}` : null));
const machineShmBefore = machineShm();

let topo: Topology;
let router: string;
let holder: ChildProcess;
const procs: ChildProcess[] = [];
const readme = readFileSync(`${ROOT}README.md`, 'utf8');

/** argv that runs a README line in the router's namespaces (private /dev/shm), from the checkout. */
function inRouter(line: string): string[] {
  return ['nsenter', '-t', String(holder.pid), '-m', '-n', 'sh', '-c', `cd ${ROOT} && ${line}`];
}

function runLine(line: string): { stdout: string; stderr: string; status: number | null } {
  const argv = inRouter(line);
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 30_000 });
}

/**
 * Runs every line of a block; a failing one fails the test with its output. Each check runs on
 * the output of the lines that include its key, and every check must find a line: one that
 * no line matches (the README changed) fails instead of passing unchecked.
 */
function runBlock(lines: string[], check: Record<string, (out: string) => void> = {}): string[] {
  const daemons: string[] = [];
  const ran = new Set<string>();
  for (const line of lines) {
    if (/^make build\b/.test(line)) {
      // The checkout is built already; the target must still exist as documented.
      expect(spawnSync('make', ['-n', 'build'], { cwd: ROOT }).status).toBe(0);
      continue;
    }
    if (daemonLine(line)) {
      daemons.push(line);
      continue;
    }
    const r = runLine(line);
    expect({ line, status: r.status, stderr: r.stderr }).toEqual({ line, status: 0, stderr: '' });
    for (const [key, f] of Object.entries(check)) {
      if (!line.includes(key)) continue;
      f(r.stdout);
      ran.add(key);
    }
  }
  expect([...ran].sort(), 'the checks that found their line').toEqual(Object.keys(check).sort());
  return daemons;
}

/** Runs README lb line `lb` while `check` runs; it must exit 0 on SIGTERM. */
async function withLb(lb: string, check: () => void): Promise<void> {
  const argv = inRouter(`exec ${lb}`);
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(proc);
  const daemon = await startDaemon(proc);
  try {
    check();
  } finally {
    await daemon.stop('SIGTERM');
  }
  expect(proc.exitCode).toBe(0);
}

/** 20 connections to the VIP all reach the lab's one server. */
function expectBalanced(): void {
  const r = mconnect(topo, 4, { nconn: 20 });
  expect(r.failed_connects + r.failed_reads).toBe(0);
  expect(r.hosts).toEqual({ 'vm-001': 20 });
}

beforeAll(async () => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  router = topo.ns.router(1);
  procs.push(...startServers(topo, 1));
  // Holds a mount namespace with an empty /dev/shm of its own; README lines run inside it.
  holder = topo.spawn(router, ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs tfc-rd-shm /dev/shm && echo ready && exec sleep 3600']);
  procs.push(holder);
  await startDaemon(holder, 'ready');
});

afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  topo?.destroy();
  expect(machineShm()).toEqual(machineShmBefore);
  expect(labNamespaces(PREFIX)).toEqual([]);
});

describe('README.md', () => {
  it('has command blocks for nfqlb and xdplb, each with one lb command', () => {
    for (const [heading, cmd] of [['Using nfqlb', 'nfqlb'], ['Using xdplb', 'xdplb']] as const) {
      const lines = readmeCommands(readme, heading);
      expect(lines.length).toBeGreaterThan(3);
      expect(lines.filter(daemonLine)).toEqual([expect.stringMatching(new RegExp(`^bin/${cmd} lb `))]);
    }
  });

  it('runs "Using nfqlb" as written, and the lb it starts balances connections', async () => {
    const lines = readmeCommands(readme, 'Using nfqlb');
    const [lb] = runBlock(lines, {
      'nfqlb init': (out) => expect(out).toBe('M adjusted; 900 -> 887\n'),
      'nfqlb show': (out) => expect(out).toMatch(/Active: 101\(0\) 102\(1\) 103\(2\)/),
      // The reference nfqlb gives 103 for the README's example; the hash is the reference's
      // key layout written out independently (test/fixtures), M 887 after init's adjustment.
      'nfqlb fwmark': (out) => {
        const hash = keyHash({ src: '50.0.0.1', dst: '10.0.0.0', proto: 6, sport: 4711, dport: 5001 });
        expect(JSON.parse(out)).toEqual({ hash, lookupindex: hash % 887, activeindex: 2, fwmark: 103 });
      },
    });
    // The "per target" line for the other two targets.
    const perTarget = lines.find((l) => l.includes('fwmark 101'))!;
    for (const fw of ['102', '103']) expect(runLine(perTarget.replaceAll('101', fw)).status).toBe(0);
    // The table was made in the private /dev/shm, not the machine's.
    expect(runLine('test -e /dev/shm/nfqlb').status).toBe(0);
    expect(machineShm()).toEqual(machineShmBefore);

    await withLb(lb!, expectBalanced);
  });

  // Sections whose one lb runs while the other lines of its block act on it, in the table
  // "Using nfqlb" made (a section's lab runs, in blocks of their own, are the lab tests' part).
  it.each([
    ['Connection tracking and drain (`--conntrack`)', 'bin/nfqlb show', /Active: 101\(0\) 102\(1\)\n/],
    ['Metrics', 'curl -s http://127.0.0.1:9110/metrics', /^nfqlb_packets_total\{queue="2"\} \d+$/m],
    ['nfqlb offload: the same table in the kernel (`lb --offload`)', 'bin/nfqlb show', /Active: 101\(0\) 102\(1\)\n/],
  ])('runs "%s" as written, with its lb serving', async (heading, probe, want) => {
    const lines = readmeBlocks(readme, heading).find((b) => b.some(daemonLine)) ?? [];
    const [lb, ...more] = lines.filter(daemonLine);
    expect(more).toEqual([]);
    await withLb(lb!, () => {
      runBlock(lines);
      expect(runLine(probe).stdout).toMatch(want);
      expectBalanced();
    });
  });

  it('runs "Using xdplb" as written, and the lb attaches XDP to eth2 until stopped', async () => {
    const [lb] = runBlock(readmeCommands(readme, 'Using xdplb'), {
      'xdplb vip-add': () => expect(runLine('bin/xdplb vip-list').stdout).toBe('10.0.0.0\n1000::\n'),
    });
    const argv = inRouter(`exec ${lb}`);
    const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(proc);
    const daemon = await startDaemon(proc, 'xdplb forwarding');
    try {
      expect(topo.exec(router, ['ip', '-d', 'link', 'show', 'eth2'])).toMatch(/prog\/xdp id \d+/);
    } finally {
      await daemon.stop('SIGTERM');
    }
    expect(proc.exitCode).toBe(0);
    expect(topo.exec(router, ['ip', '-d', 'link', 'show', 'eth2'])).not.toMatch(/prog\/xdp/);
  });
});
