// The package as a user gets it: `npm pack`, `npm install -g` of the tarball into a private
// prefix (the install script builds the addons against the installed Node headers, no
// download), then the commands from that prefix. A missing system library or header must
// come out as one line naming the Debian package.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, requireBuild } from './harness.js';

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
  execFileSync('npm', ['install', '-g', `--prefix=${prefix}`, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball],
    { stdio: ['ignore', 'pipe', 'inherit'] });
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
    for (const addon of ['shm', 'nfqueue', 'tun', 'peercred', 'xsk']) expect(existsSync(`${installed()}/build/Release/${addon}.node`)).toBe(true);
    expect(run(['sh', '-c', 'for c in nfqlb xdplb lblab; do command -v $c; done']).stdout.trim().split('\n')).toEqual(['nfqlb', 'xdplb', 'lblab'].map((c) => `${prefix}/bin/${c}`));
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
    const r = run(['unshare', '-m', 'sh', '-c', `mount --bind /dev/null ${lib} && exec nfqlb lb --tshm=${SHM} --ft_shm=${FT_SHM} --trace_address=unix:tfc-pkg-trace --queue=9`]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^nfqlb lb: native addon nfqueue failed to load: .*libnetfilter_queue.*apt-get install libnetfilter-queue-dev/);
  });

  it('is one line naming the apt package when the install script finds no libnetfilter_queue headers', () => {
    const r = run(['unshare', '-m', 'sh', '-c',
      `mount -t tmpfs tfc-empty /usr/include/libnetfilter_queue && cd ${installed()} && exec node scripts/build-addon.mjs`]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('tslb: cannot build the native addons: apt-get install libnetfilter-queue-dev\n');
  });
});
