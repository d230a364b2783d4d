// The systemd units in contrib/systemd: `systemd-analyze verify` accepts them without a warning,
// and each unit's ExecStart, run with exactly its CapabilityBoundingSet (setpriv) in a test
// namespace, serves, needs every one of those capabilities, and stops cleanly on SIGTERM
// before the unit's TimeoutStopSec (when systemd would SIGKILL it).

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, ipBatch, removeNs } from '../../src/lab/netns.js';
import { nfqlb, ROOT, requireBuild, startDaemon } from './harness.js';

const NS = 'tfc-sd';
const SHM = 'tfc-sd-targets';
const XDP_SHM = 'tfc-sd-xdp';
const FT_SHM = 'tfc-sd-ftshm';
const UNITS = `${ROOT}contrib/systemd`;
// systemd's default RLIMIT_MEMLOCK for services (DefaultLimitMEMLOCK), which the units keep.
const SERVICE_MEMLOCK = 8 << 20;

interface Case {
  unit: string;
  instance: string;
  /** The value of the unit's options variable for this test. */
  options: string;
  env?: Record<string, string>;
  ready: string;
}

const cases: Case[] = [
  { unit: 'nfqlb-lb@.service', instance: '2', options: `--tshm=${SHM} --ft_shm=${FT_SHM}`, ready: 'serving queue' },
  {
    unit: 'nfqlb-flowlb@.service',
    instance: '3',
    options: `--ft_shm=${FT_SHM}`,
    env: { NFQLB_FLOW_ADDRESS: 'unix:tfc-sd-flow' },
    ready: 'serving queue',
  },
  { unit: 'xdplb-lb@.service', instance: 'eth2', options: `--edev=eth1 --shm=${XDP_SHM}`, ready: 'xdplb forwarding' },
  { unit: 'nfqlb-health@.service', instance: SHM, options: '--vip=10.0.0.0,1000:: --health=tcp:80', ready: 'health checking' },
  // No etcd: with a table in place the follower keeps it and runs, trying to reach etcd.
  { unit: 'nfqlb-follow@.service', instance: 'web', options: `--shm=${SHM} --etcd=http://127.0.0.1:2999`, ready: '"msg":"following"' },
];

/** The values of a directive in a unit file (every occurrence, in order). */
function directive(text: string, key: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

/** The capabilities a unit keeps (none: an empty list). */
function capabilities(text: string): string[] {
  return directive(text, 'CapabilityBoundingSet')[0]!
    .split(' ')
    .filter((c) => c !== '');
}

/** ExecStart as argv: the command from the checkout, %i and $VAR (word-split) filled in. */
function execStart(text: string, c: Case): string[] {
  const [line] = directive(text, 'ExecStart');
  const [cmd, ...words] = line!.split(/\s+/);
  return [`${ROOT}bin/${cmd}`, ...words.flatMap((w) => (w.startsWith('$') ? c.options.split(' ') : [w.replaceAll('%i', c.instance)]))];
}

/** A systemd time span of the form the units use (`2s`, `500ms`) in ms. */
function timeSpanMs(span: string): number {
  const m = /^(\d+)(ms|s)$/.exec(span);
  if (!m) throw new Error(`time span '${span}': expected <n>s or <n>ms`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

/** argv run in the test namespace with only these capabilities and the service memlock limit. */
function sandboxed(caps: string[], argv: string[]): string[] {
  const bounding = ['-all', ...caps.map((cap) => `+${cap.replace(/^CAP_/, '').toLowerCase()}`)].join(',');
  return [
    'ip',
    'netns',
    'exec',
    NS,
    'prlimit',
    `--memlock=${SERVICE_MEMLOCK}`,
    'setpriv',
    `--bounding-set=${bounding}`,
    '--inh-caps=-all',
    ...argv,
  ];
}

let dir: string;

beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'tfc-sd-'));
  removeNs(NS);
  addNs(NS);
  // xdplb's devices: two veth pairs, all ends up.
  ipBatch(NS, [
    'link add eth2 type veth peer name peer2',
    'link add eth1 type veth peer name peer1',
    ...['eth1', 'eth2', 'peer1', 'peer2'].map((d) => `link set ${d} up`),
  ]);
  nfqlb('init', `--shm=${SHM}`);
  spawnSync('node', [`${ROOT}bin/xdplb`, 'init', `--shm=${XDP_SHM}`], { stdio: 'ignore' });
});

afterAll(() => {
  removeNs(NS);
  for (const shm of [SHM, XDP_SHM, FT_SHM]) rmSync(`/dev/shm/${shm}`, { force: true });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.each(cases)('$unit', (c) => {
  const text = (): string => readFileSync(`${UNITS}/${c.unit}`, 'utf8');

  it('passes systemd-analyze verify without a warning', () => {
    // verify needs the ExecStart binary: point it at the checkout's.
    const copy = join(dir, c.unit);
    writeFileSync(copy, text().replace(/^ExecStart=(\S+)/m, `ExecStart=${ROOT}bin/$1`));
    const r = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('restarts on failure and takes its options from EnvironmentFiles', () => {
    expect(directive(text(), 'Restart')).toEqual(['on-failure']);
    const files = directive(text(), 'EnvironmentFile');
    expect(files).toHaveLength(2);
    for (const f of files) expect(f).toMatch(/^-\/etc\/default\//);
    expect(directive(text(), 'CapabilityBoundingSet')).toEqual(directive(text(), 'AmbientCapabilities'));
  });

  it('serves with its capabilities only and stops on SIGTERM before its TimeoutStopSec', async () => {
    const argv = sandboxed(capabilities(text()), execStart(text(), c));
    const [span] = directive(text(), 'TimeoutStopSec');
    const limit = timeSpanMs(span!);
    /** Serves, then gets SIGTERM: ms until it exited (Infinity: still running at 2 x limit, then SIGKILLed) and its exit code. */
    const startAndStop = async (): Promise<{ ms: number; code: number | null }> => {
      const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...c.env } });
      const daemon = await startDaemon(proc, c.ready);
      const t0 = performance.now();
      const stopped = daemon.stop('SIGTERM').then(() => performance.now() - t0);
      const ms = await Promise.race([stopped, sleep(2 * limit).then(() => Infinity)]);
      if (ms === Infinity) await daemon.stop('SIGKILL');
      return { ms, code: proc.exitCode };
    };
    // A stop that needs the time (SIGTERM ignored, a hang on the way out) takes it every time; a
    // busy machine only now and then: the best of up to 3 tries counts.
    const tries = [await startAndStop()];
    while (tries.length < 3 && !tries.some((t) => t.ms < limit)) tries.push(await startAndStop());
    console.log(`${c.unit}: stopped ${tries.map((t) => `${t.ms.toFixed(0)} ms`).join(', ')} after SIGTERM (TimeoutStopSec=${span})`);
    const best = tries.reduce((a, b) => (b.ms < a.ms ? b : a));
    // Exit code 0: it handled SIGTERM (killed by it, it would have none).
    expect(best.code).toBe(0);
    expect(best.ms).toBeLessThan(limit);
  });

  it('needs every capability it keeps', () => {
    const caps = capabilities(text());
    // A unit that keeps none (the follower) gets none by any way.
    if (caps.length === 0) expect(directive(text(), 'AmbientCapabilities')).toEqual(['']);
    for (const cap of caps) {
      const argv = sandboxed(
        caps.filter((k) => k !== cap),
        execStart(text(), c),
      );
      // Without the capability the command fails at start; one that still served would time out.
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: { ...process.env, ...c.env }, timeout: 10_000 });
      expect({ cap, status: r.status }).toEqual({ cap, status: 1 });
      expect(r.stderr).toMatch(/not permitted|permission denied|EPERM|ENOBUFS/i);
    }
  });
});
