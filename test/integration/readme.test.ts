// The command blocks of README.md and docs/*.md, extracted by page and heading and run exactly
// as written, so the documentation cannot drift from the code; and a check that every ```sh
// block of those pages is run by a test of this file (a command no test can run, like `make
// bench`, belongs in the text, not in a ```sh block).
//
// nfqlb and xdplb blocks run on the router of a one-server lab, where `via 192.168.1.1` is the
// server, in a mount namespace with a private /dev/shm and /run: the blocks use the default
// table names (nfqlb, ftshm, xdplb) and the default control key, and a real user's must not be
// touched. The lab's and the BGP tier's blocks run lblab (from the checkout, on PATH) in the
// root network namespace, where lblab builds its labs, but in a mount namespace with a private
// /run/netns, /dev/shm and /tmp: the default lab names (lblab-...) are the test's own there.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopology, labNamespaces, type Topology } from '../../src/lab/topology.js';
import { keyHash } from '../fixtures/nfqlb-fixtures.js';
import { docCommands, docPages, type Section, shBlocks } from './doc-blocks.js';
import { mconnect, ROOT, requireBuild, startDaemon, startServers } from './harness.js';

const PREFIX = 'tfc-rd-';

// The sections with ```sh blocks, each run by a test below.
const USING_NFQLB: Section = ['README.md', 'Using nfqlb'];
const USING_XDPLB: Section = ['README.md', 'Using xdplb'];
/**
 * Sections whose one lb runs while the other lines of the section act on it, in the table
 * "Using nfqlb" made; then `probe` must print `want`, and the VIP must still be balanced if
 * the lb serves its queue.
 */
const WITH_LB: { section: Section; probe: string; want: RegExp; balances: boolean }[] = [
  { section: ['docs/conntrack.md', 'Running it'], probe: 'bin/nfqlb show', want: /Active: 101\(0\) 102\(1\)\n/, balances: true },
  {
    section: ['docs/metrics.md', 'Running it'],
    probe: 'curl -s http://127.0.0.1:9110/metrics',
    want: /^nfqlb_packets_total\{queue="2"\} \d+$/m,
    balances: true,
  },
  { section: ['docs/offload.md', 'Running it'], probe: 'bin/nfqlb show', want: /Active: 101\(0\) 102\(1\)\n/, balances: true },
  // A flowlb on queue 3, which no rule feeds: the block is about its control channel.
  {
    section: ['docs/security.md', 'The control key'],
    probe: "NFQLB_FLOW_ADDRESS='tcp:[::1]:10033' bin/nfqlb flow-list-names",
    want: /^ {2}"web"$/m,
    balances: false,
  },
];
const LAB: Section = ['docs/lab.md', 'Running it'];
const BGP: Section = ['docs/bgp.md', 'Running it'];
const LAB_REGISTRY: Section = ['docs/lab.md', 'The registry tier'];
/** Run by registry.test.ts, next to the etcd it starts. */
const REGISTRY_SECTIONS: readonly Section[] = [
  ['docs/registry.md', 'Try it'],
  ['docs/registry.md', 'A tier with TLS and users'],
  ['docs/registry.md', 'Follow it'],
];
/** Run by health.test.ts, in its lab of servers that hold the VIPs. */
const HEALTH_SECTIONS: readonly Section[] = [['docs/health.md', 'Running it']];
/** Run by prometheus.test.ts, which runs Prometheus with the files they check. */
const PROMETHEUS: Section = ['docs/metrics.md', 'Alerts'];
const COVERED: readonly Section[] = [
  USING_NFQLB,
  USING_XDPLB,
  ...WITH_LB.map((w) => w.section),
  LAB,
  BGP,
  LAB_REGISTRY,
  ...REGISTRY_SECTIONS,
  ...HEALTH_SECTIONS,
  PROMETHEUS,
];

/** A line that starts a long-running lb (`&` or not): started, checked and stopped by the test. */
const daemonLine = (line: string): boolean => /^(\w+=\S+ )*bin\/(nfqlb|xdplb) (lb|flowlb)\b/.test(line);

/** The line as a command that the shell replaces itself with, in the foreground. */
const execLine = (line: string): string => line.replace(/\s*&$/, '').replace(/^((?:\w+=\S+ )*)/, '$1exec ');

/** The machine's files of the names the blocks use: they must be left as they were. */
const machineShm = (): (string | null)[] =>
  ['nfqlb', 'ftshm', 'xdplb'].map((n) => (existsSync(`/dev/shm/${n}`) ? `${n} ${statSync(`/dev/shm/${n}`).mtimeMs}` : null));
const machineShmBefore = machineShm();

interface LineResult {
  stdout: string;
  stderr: string;
  status: number | null;
}

/** Where a block's lines run: argv that runs a shell line there, and how long a line may take. */
interface Place {
  argv(line: string): string[];
  timeout: number;
}

/** A process that holds a mount namespace set up by `setup` (shell), in the namespaces of `spawnIt`. */
async function mountHolder(spawnIt: (argv: string[]) => ChildProcess, setup: string): Promise<ChildProcess> {
  const holder = spawnIt(['unshare', '--mount', '--propagation=private', 'sh', '-c', `${setup} && echo ready && exec sleep 3600`]);
  procs.push(holder);
  await startDaemon(holder, 'ready');
  return holder;
}

/** Runs a line of a block at a place, from the checkout. */
function runLine(place: Place, line: string): LineResult {
  const argv = place.argv(line);
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: place.timeout });
}

/** A comment line after a command states its output; `...` stands for any text. */
function expectedOutput(comment: string): RegExp {
  const text = comment
    .replace(/^#\s*/, '')
    .split('...')
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${text}$`, 's');
}

/**
 * Runs every line of a block, except `make build` (checked with `make -n`) and lines that
 * start an lb (returned, for the caller to run). A line must exit 0 with nothing on stderr,
 * unless a comment line follows it: then that comment is its output, on stdout if it exits 0,
 * else on stderr. Each check runs on the output of the lines that include its key, and every
 * check must find a line: one that no line matches (the page changed) fails instead of passing
 * unchecked.
 */
function runBlock(place: Place, lines: string[], check: Record<string, (out: string) => void> = {}): string[] {
  const daemons: string[] = [];
  const ran = new Set<string>();
  for (const [i, line] of lines.entries()) {
    if (line.startsWith('#')) continue;
    if (/^make build\b/.test(line)) {
      // The checkout is built already; the target must still exist as documented.
      expect(spawnSync('make', ['-n', 'build'], { cwd: ROOT }).status).toBe(0);
      continue;
    }
    if (daemonLine(line)) {
      daemons.push(line);
      continue;
    }
    const r = runLine(place, line);
    const comment = lines[i + 1]?.startsWith('#') ? lines[i + 1]! : null;
    if (comment === null) {
      expect({ line, status: r.status, stderr: r.stderr }).toEqual({ line, status: 0, stderr: '' });
    } else {
      const output = (r.status === 0 ? r.stdout : r.stderr).trim();
      expect({ line, output }).toEqual({ line, output: expect.stringMatching(expectedOutput(comment)) });
    }
    for (const [key, f] of Object.entries(check)) {
      if (!line.includes(key)) continue;
      f(r.stdout);
      ran.add(key);
    }
  }
  expect([...ran].sort(), 'the checks that found their line').toEqual(Object.keys(check).sort());
  return daemons;
}

let topo: Topology;
let router: string;
/** The router's lines: its network namespace, a private /dev/shm and /run. */
let atRouter: Place;
const procs: ChildProcess[] = [];

/** Runs lb line `lb` at the router while `check` runs; it must exit 0 on SIGTERM. */
async function withLb(lb: string, check: () => void, ready = 'serving queue'): Promise<void> {
  const argv = atRouter.argv(execLine(lb));
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(proc);
  const daemon = await startDaemon(proc, ready);
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
  const holder = await mountHolder(
    (argv) => topo.spawn(router, argv),
    // The checkout is seen at /mnt: below a private directory (a clone in mktemp -d) user nobody,
    // whom a block runs commands as, could not reach it.
    `mount -t tmpfs tfc-rd-shm /dev/shm && mount -t tmpfs tfc-rd-run /run && mount --bind ${ROOT} /mnt`,
  );
  atRouter = { argv: (line) => ['nsenter', '-t', String(holder.pid), '-m', '-n', 'sh', '-c', `cd /mnt && ${line}`], timeout: 30_000 };
});

afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  topo?.destroy();
  expect(machineShm()).toEqual(machineShmBefore);
  expect(labNamespaces(PREFIX)).toEqual([]);
});

describe('the command blocks of README.md and docs/', () => {
  it('are each run by a test of this file, as written', () => {
    const key = ([file, heading]: Section): string => `${file}: ${heading}`;
    const found = [
      ...new Set(
        docPages()
          .flatMap(shBlocks)
          .map((b) => key([b.file, b.heading])),
      ),
    ].sort();
    // A section listed here and not found: its test would throw; one found and not listed: no test runs it.
    expect(found, '```sh blocks by section (a block no test can run belongs in the text)').toEqual(COVERED.map(key).sort());
  });
});

describe('README.md', () => {
  it('has command blocks for nfqlb and xdplb, each with one lb command', () => {
    for (const [section, cmd] of [
      [USING_NFQLB, 'nfqlb'],
      [USING_XDPLB, 'xdplb'],
    ] as const) {
      const lines = docCommands(section);
      expect(lines.length).toBeGreaterThan(3);
      expect(lines.filter(daemonLine)).toEqual([expect.stringMatching(new RegExp(`^bin/${cmd} lb `))]);
    }
  });

  it('runs "Using nfqlb" as written, and the lb it starts balances connections', async () => {
    const lines = docCommands(USING_NFQLB);
    const [lb] = runBlock(atRouter, lines, {
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
    for (const fw of ['102', '103']) expect(runLine(atRouter, perTarget.replaceAll('101', fw)).status).toBe(0);
    // The table was made in the private /dev/shm, not the machine's.
    expect(runLine(atRouter, 'test -e /dev/shm/nfqlb').status).toBe(0);
    expect(machineShm()).toEqual(machineShmBefore);

    await withLb(lb!, expectBalanced);
  });

  it('runs "Using xdplb" as written, and the lb attaches XDP to eth2 until stopped', async () => {
    const [lb] = runBlock(atRouter, docCommands(USING_XDPLB), {
      'xdplb vip-add': () => expect(runLine(atRouter, 'bin/xdplb vip-list').stdout).toBe('10.0.0.0\n1000::\n'),
    });
    const xdp = (): string => topo.exec(router, ['ip', '-d', 'link', 'show', 'eth2']);
    await withLb(lb!, () => expect(xdp()).toMatch(/prog\/xdp id \d+ name xdplb_forward/), 'xdplb forwarding');
    expect(xdp()).not.toMatch(/prog\/xdp/);
  });
});

describe('docs/', () => {
  it.each(WITH_LB.map((w) => [w.section.join(': '), w] as const))('runs %s as written, with its lb serving', async (_, w) => {
    const lines = docCommands(w.section);
    const [lb, ...more] = lines.filter(daemonLine);
    expect(more).toEqual([]);
    await withLb(lb!, () => {
      runBlock(atRouter, lines);
      expect(runLine(atRouter, w.probe).stdout).toMatch(w.want);
      if (w.balances) expectBalanced();
    });
  });

  describe('the lab', () => {
    /** The lab's lines: the root network namespace, a private /run/netns, /dev/shm and /tmp, lblab and nfqlb on PATH. */
    let atLab: Place;
    const inLab = (line: string): string => runLine(atLab, line).stdout;

    beforeAll(async () => {
      const holder = await mountHolder(
        (argv) => spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }),
        // The checkout may itself be below /tmp (a clone in mktemp -d): it is seen at /mnt first.
        'mkdir -p /run/netns && mount -t tmpfs tfc-rd-netns /run/netns && mount -t tmpfs tfc-rd-labshm /dev/shm && ' +
          `mount --bind ${ROOT} /mnt && mount -t tmpfs tfc-rd-tmp /tmp && mkdir /tmp/bin && ln -s /mnt/bin/lblab /mnt/bin/nfqlb /tmp/bin/`,
      );
      atLab = {
        argv: (line) => ['nsenter', '-t', String(holder.pid), '-m', 'sh', '-c', `cd /mnt && export PATH=/tmp/bin:$PATH && ${line}`],
        timeout: 300_000,
      };
    });

    afterAll(() => {
      // After a failure: the lab's processes would outlive the mount namespace.
      if (atLab) runLine(atLab, 'lblab down');
    });

    it(`runs ${LAB.join(': ')} as written: scale runs, a lab left up and removed`, () => {
      runBlock(atLab, docCommands(LAB), {
        'test --list': (out) =>
          expect(out.split('\n')).toEqual(expect.arrayContaining(['nfqueue_scale_in', 'ecmp_scale_in', 'start_nfqueue'])),
        'nfqueue_scale_in ecmp_scale_in': (out) => expect(out).toMatch(/^PASS nfqueue_scale_in\n[\s\S]*^PASS ecmp_scale_in$/m),
        start_nfqueue: () => expect(inLab('ip netns list')).toMatch(/^lblab-vm-201\b/m),
        'lblab down': () => expect(inLab('ip netns list')).not.toMatch(/lblab-/),
      });
    }, 300_000);

    it(`runs ${BGP.join(': ')} as written: the gateway's route has a next-hop per LB`, () => {
      runBlock(atLab, docCommands(BGP), {
        start_nfqueue: () => expect(inLab('ip netns list')).toMatch(/^lblab-vm-221\b/m),
        'ip route show': (out) => expect(out.match(/nexthop via/g)).toHaveLength(3),
        'show protocols': (out) => expect(out.match(/\bEstablished\b/g)?.length).toBeGreaterThanOrEqual(3),
        'lblab down': () => expect(inLab('ip netns list')).not.toMatch(/lblab-/),
      });
    }, 300_000);

    it(`runs ${LAB_REGISTRY.join(': ')} as written: etcd, sidecars and followers up, the registry shown`, () => {
      runBlock(atLab, docCommands(LAB_REGISTRY), {
        start_nfqueue: () => {
          expect(inLab('ip netns list')).toMatch(/^lblab-vm-233\b/m);
          expect(inLab('ls /dev/shm')).toMatch(/^lblab-nfqlb-202$/m);
        },
        'registry show': (out) => {
          const shown = JSON.parse(out) as { targets: { slot: number; fwmark: number; state: string }[] };
          expect(shown.targets.map((t) => [t.slot, t.fwmark, t.state])).toEqual([1, 2, 3, 4].map((n) => [n, 100 + n, 'active']));
        },
        'lblab down': () => {
          expect(inLab('ip netns list')).not.toMatch(/lblab-/);
          expect(inLab('ls /tmp')).not.toMatch(/lblab-etcd/);
        },
      });
    }, 300_000);
  });
});
