// The package as a user gets it: `npm pack`, `npm install -g` of the tarball into a private
// prefix (the install script builds the addons against the installed Node headers, no
// download), then the commands from that prefix. A missing system library or header must
// come out as one line naming the Debian package. The README's library example is compiled
// against the installed tarball and run on a lab router's queue.

import { type ChildProcess, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverAddr, type Topology, VIP } from '../../src/lab/topology.js';
import { kernelQueueStats } from '../../src/nfqueue.js';
import { waitFor } from '../wait.js';
import { createNfqueueLab, ROOT, requireBuild, tearDownLab } from './harness.js';

const SHM = 'tfc-pkg-targets';
const FT_SHM = 'tfc-pkg-ftshm';

let dir: string;
let prefix: string;
let tarball: string;
const env = (): NodeJS.ProcessEnv => ({ ...process.env, PATH: `${prefix}/bin:${process.env.PATH}` });
const installed = (): string => `${prefix}/lib/node_modules/tslb`;

/** Runs a command with the prefix's bin first on PATH; stdout, stderr and the exit status. */
function run(argv: string[]): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: env() });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'tfc-pkg-'));
  prefix = join(dir, 'prefix');
  // prepack compiles dist/ (the tarball carries it; the addons are built at install).
  execFileSync('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  tarball = join(dir, readdirSync(dir).find((f) => f.endsWith('.tgz'))!);
  // The dependencies come from npm's cache when they are there (`make build` filled it).
  execFileSync('npm', ['install', '-g', `--prefix=${prefix}`, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}, 600_000);

afterAll(() => {
  for (const shm of [SHM, FT_SHM]) rmSync(`/dev/shm/${shm}`, { force: true });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('npm pack + npm install -g', () => {
  it('packs the compiled code, not the checkout build', () => {
    const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n');
    expect(files).toContain('package/dist/src/cli/nfqlb.js');
    expect(files).toContain('package/bin/nfqlb');
    expect(files).toContain('package/contrib/systemd/nfqlb-lb@.service');
    expect(files.filter((f) => f.startsWith('package/build/') || f.startsWith('package/node_modules/'))).toEqual([]);
  });

  it('built every addon at install and put the commands on the prefix PATH', () => {
    for (const addon of ['shm', 'nfqueue', 'tun', 'peercred', 'xsk'])
      expect(existsSync(`${installed()}/build/Release/${addon}.node`)).toBe(true);
    expect(run(['sh', '-c', 'for c in nfqlb xdplb lblab; do command -v $c; done']).stdout.trim().split('\n')).toEqual(
      ['nfqlb', 'xdplb', 'lblab'].map((c) => `${prefix}/bin/${c}`),
    );
  });

  it('runs nfqlb version, init, show and xdplb -h from the prefix', () => {
    expect(run(['nfqlb', 'version'])).toMatchObject({ stdout: '1.2.0\n', status: 0 });
    expect(run(['nfqlb', 'init', `--shm=${SHM}`, '--M=100', '--N=4'])).toMatchObject({ stdout: 'M adjusted; 100 -> 97\n', status: 0 });
    const show = run(['nfqlb', 'show', `--shm=${SHM}`]);
    expect(show.status).toBe(0);
    expect(show.stdout).toContain(`Shm: ${SHM}`);
    expect(show.stdout).toContain('Maglev: M=97, N=4');
    const help = run(['xdplb', '-h']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: xdplb <command>/);
    expect(help.stdout).toContain('  lb\n');
  });
});

describe('a missing system library or header', () => {
  it('is one line naming the apt package when libnetfilter_queue cannot be loaded', () => {
    // The library the installed addon links, replaced by an empty file in a private mount namespace.
    const ldd = execFileSync('ldd', [`${installed()}/build/Release/nfqueue.node`], { encoding: 'utf8' });
    const lib = /libnetfilter_queue\.so\.\d+ => (\S+)/.exec(ldd)?.[1];
    expect(lib).toBeDefined();
    const r = run([
      'unshare',
      '-m',
      'sh',
      '-c',
      `mount --bind /dev/null ${lib} && exec nfqlb lb --tshm=${SHM} --ft_shm=${FT_SHM} --trace_address=unix:tfc-pkg-trace --queue=9`,
    ]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^nfqlb lb: native addon nfqueue failed to load: .*libnetfilter_queue.*apt-get install libnetfilter-queue-dev/,
    );
  });

  it('is one line naming the apt package when the install script finds no libnetfilter_queue headers', () => {
    const r = run([
      'unshare',
      '-m',
      'sh',
      '-c',
      `mount -t tmpfs tfc-empty /usr/include/libnetfilter_queue && cd ${installed()} && exec node scripts/build-addon.mjs`,
    ]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('tslb: cannot build the native addons: apt-get install libnetfilter-queue-dev\n');
  });
});

/** The first ```ts block of the README section with this heading, as written. */
function readmeTs(heading: string): string {
  const readme = readFileSync(`${ROOT}README.md`, 'utf8');
  const start = readme.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`README.md has no section '## ${heading}'`);
  const end = readme.indexOf('\n## ', start + 1);
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(start, end < 0 ? undefined : end));
  if (!block) throw new Error(`README.md section '${heading}' has no ts block`);
  return block[1]!;
}

// One TCP connection per job from the tester, from a chosen address and port: prints, in order,
// what each server wrote (its name) or the error code.
const CLIENT_JS = `
import { connect } from 'node:net';
const one = (j) => new Promise((resolve) => {
  const [host, port, localAddress, localPort] = j.split(',');
  let out = '';
  const s = connect({ host, port: +port, localAddress, localPort: +localPort });
  s.setTimeout(3000, () => { s.destroy(); resolve('timeout'); });
  s.on('data', (d) => (out += d));
  s.on('end', () => resolve(out));
  s.on('error', (e) => resolve(e.code));
});
console.log(JSON.stringify(await Promise.all(process.argv.slice(1).map(one))));`;

describe('the README "As a library" example', () => {
  const PREFIX = 'tcl-pkg-';
  const procs: ChildProcess[] = [];
  let app: string;
  let topo: Topology | undefined;
  let router: string;

  beforeAll(() => {
    // A user's package: the tarball and the Node types from npm (its cache), compiled with tsc
    // (the repo's: the user's own copy of the same compiler), run with node.
    app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'lb-app', private: true, type: 'module' }));
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          outDir: 'out',
          types: ['node'],
        },
        include: ['index.ts'],
      }),
    );
    writeFileSync(join(app, 'index.ts'), readmeTs('As a library'));
    const typesNode = (JSON.parse(readFileSync(`${ROOT}node_modules/@types/node/package.json`, 'utf8')) as { version: string }).version;
    execFileSync(
      'npm',
      ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball, `@types/node@${typesNode}`],
      { cwd: app, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    ({ topo, router } = createNfqueueLab(PREFIX, 2, procs));
    // The example's fwmarks: 100 (even source port) to server 2, 101 (odd) to server 1 as the
    // lab routes it, 200 (port 22) by the main table; counted by mark in FORWARD.
    topo.ip(router, ['rule add fwmark 100 table 100', `route add default via ${serverAddr(2, 4)} table 100`]);
    topo.setRouterVipRoute(1, [2]);
    for (const mark of [100, 101, 200]) {
      topo.exec(router, ['iptables', '-t', 'mangle', '-A', 'FORWARD', '-m', 'mark', '--mark', String(mark)]);
    }
  }, 600_000);

  afterAll(() => {
    expect(tearDownLab(PREFIX, topo, procs, [])).toEqual([]);
  });

  it("compiles with tsc against the installed package and marks the queue's packets as it says", async () => {
    const tsc = spawnSync(`${ROOT}node_modules/.bin/tsc`, ['-p', app], { encoding: 'utf8' });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    // It resolves tslb to the installed tarball, not to this checkout.
    expect(
      execFileSync('node', ['--input-type=module', '-e', 'console.log(import.meta.resolve("tslb"))'], { cwd: app, encoding: 'utf8' }),
    ).toBe(`file://${app}/node_modules/tslb/dist/src/index.js\n`);

    const proc = topo!.spawn(router, ['node', join(app, 'out/index.js')]);
    procs.push(proc);
    let output = '';
    proc.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((r) => proc.once('close', r));
    const queueBound = (): boolean => kernelQueueStats(2, topo!.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue'])) !== undefined;
    // The example prints nothing: it is ready when the kernel lists queue 2 as bound.
    await waitFor('the example to bind queue 2', () => queueBound() || proc.exitCode !== null);
    expect(output).toBe('');
    expect(proc.exitCode).toBeNull();

    const jobs = [40000, 40001, 40002, 40003].map((sport, i) => `${VIP[4]},5001,50.0.9.${i + 1},${sport}`);
    jobs.push(`${VIP[4]},22,50.0.9.9,40004`);
    const r = JSON.parse(topo!.exec(topo!.ns.tester, ['node', '--input-type=module', '-e', CLIENT_JS, ...jobs])) as string[];
    // Even source ports: fwmark 100 (server 2); odd: 101 (server 1); port 22: 200, refused by the
    // server the main table routes it to.
    expect(r).toEqual(['vm-002', 'vm-001', 'vm-002', 'vm-001', 'ECONNREFUSED']);
    const counts = topo!.exec(router, ['iptables', '-t', 'mangle', '-L', 'FORWARD', '-v', '-x', '-n']);
    const packets = (mark: number): number =>
      Number(new RegExp(`^\\s*(\\d+).*mark match 0x${mark.toString(16)}\\s*$`, 'm').exec(counts)?.[1]);
    expect(packets(200)).toBeGreaterThan(0);
    expect(packets(100)).toBeGreaterThan(0);
    expect(packets(101)).toBeGreaterThan(0);

    // SIGINT stops the queue and the process ends by itself, having printed nothing.
    proc.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(output).toBe('');
    expect(queueBound()).toBe(false);
  });
});
