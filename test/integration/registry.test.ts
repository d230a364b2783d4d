// `nfqlb registry` and `nfqlb register` against a real etcd (one member) with TLS and users, in
// a network namespace of our own (etcd-fixture.ts: root, a tier writer, a reader; a client
// without a password has no rights). The real CLI runs in the namespace. Exercised: init's
// create-only write, concurrent registrants (one fwmark: one winner on any slot; ten: ten
// slots), show's rejected keys written with etcdctl, drain/undrain/delete, the lease sidecar on
// SIGTERM and SIGKILL, a restarted target taking over its draining registration, refused
// credentials, an unreachable etcd, and the watch the follower uses; and docs/registry.md's
// command blocks, run as written.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, listNs, removeNs, spawnInNs } from '../../src/lab/netns.js';
import { waitFor } from '../wait.js';
import { docCommands } from './doc-blocks.js';
import { EtcdFixture } from './etcd-fixture.js';
import { type Daemon, NFQLB, nfqlbIn, ROOT, type RunResult, requireBuild, runIn, startDaemon } from './harness.js';

const NS = `treg-${process.pid}`;
const procs: ChildProcess[] = [];
const daemons: Daemon[] = [];
let etcd: EtcdFixture;
let ENDPOINT: string;
let TLS: string[];
let WRITER: string[];
const file = (name: string) => etcd.file(name);
const etcdctl = (args: string[], user?: string | null) => etcd.etcdctl(args, user);
const kvs = (prefix: string) => etcd.kvs(prefix);
const value = (key: string) => etcd.value(key);

const cli = (args: string[], env: Record<string, string> = {}): RunResult => nfqlbIn(NS, args, { env });

/** The CLI started without waiting, for registrants that race. */
function cliAsync(args: string[]): Promise<RunResult> {
  const p = spawnInNs(NS, ['node', NFQLB, ...args]);
  procs.push(p);
  let stdout = '';
  let stderr = '';
  p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => p.on('close', (status) => resolve({ status, stdout, stderr })));
}

/** `nfqlb register --lease ...`, resolved once it printed its claim. */
async function sidecar(args: string[]): Promise<{ d: Daemon; claim: { slot: number; key: string; lease: string } }> {
  const d = await startDaemon(spawnInNs(NS, ['node', NFQLB, 'register', ...WRITER, ...args]), '"lease"');
  daemons.push(d);
  return { d, claim: JSON.parse(d.output().split('\n')[0]!) as { slot: number; key: string; lease: string } };
}

function init(service: string, N = 8): void {
  const r = cli(['registry', 'init', ...WRITER, `--service=${service}`, '--M=97', `--N=${N}`]);
  expect(r, r.stderr).toMatchObject({ status: 0 });
}

interface Shown {
  revision: number;
  targets: Record<string, unknown>[];
  rejected: { key: string; reason: string; value: string }[];
}

function show(service: string): Shown {
  const r = cli(['registry', 'show', ...WRITER, `--service=${service}`]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Shown;
}

/** A refusal: exit status non-zero and exactly one line on stderr, nothing on stdout. */
function expectOneLine(r: RunResult, re: RegExp): void {
  expect(r.status).not.toBe(0);
  expect(r.stdout).toBe('');
  expect(r.stderr.split('\n')).toHaveLength(2);
  expect(r.stderr).toMatch(re);
}

beforeAll(async () => {
  requireBuild();
  addNs(NS);
  etcd = await EtcdFixture.create(NS, 'treg-');
  ({ endpoint: ENDPOINT, tls: TLS, writer: WRITER } = etcd);
}, 60_000);

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  for (const d of daemons) if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
  await etcd?.close();
  removeNs(NS);
  expect(listNs(NS)).toEqual([]);
});

describe('nfqlb registry over etcd with TLS and users', () => {
  it('init writes the config create-only; --force replaces it', () => {
    const r = cli(['registry', 'init', ...WRITER, '--service=web', '--M=100', '--N=8']);
    expect(r).toMatchObject({ status: 0, stdout: 'M adjusted; 100 -> 97\n', stderr: '' });
    expect(value('/tslb/web/config')).toEqual({ M: 97, N: 8 });
    expectOneLine(
      cli(['registry', 'init', ...WRITER, '--service=web', '--M=101', '--N=16']),
      /^nfqlb registry init: service 'web' already has a config \{"M":97,"N":8\} \(--force replaces it\)$/m,
    );
    expect(value('/tslb/web/config')).toEqual({ M: 97, N: 8 });
    expect(cli(['registry', 'init', ...WRITER, '--service=web', '--M=101', '--N=16', '--force'])).toMatchObject({ status: 0, stdout: '' });
    expect(value('/tslb/web/config')).toEqual({ M: 101, N: 16 });
  });

  it('two registrants of one fwmark: exactly one wins, also when they ask for different slots', async () => {
    init('race');
    for (const [fwmark, slots] of [
      [700, [[], []]],
      [701, [['--slot=3'], ['--slot=4']]],
      [702, [[], ['--slot=6']]],
    ] as const) {
      const rs = await Promise.all(slots.map((s) => cliAsync(['register', ...WRITER, '--service=race', `--fwmark=${fwmark}`, ...s])));
      expect(rs.map((r) => r.status).sort()).toEqual([0, 1]);
      const loser = rs.find((r) => r.status !== 0)!;
      expectOneLine(loser, new RegExp(`^nfqlb register: fwmark ${fwmark} is already registered \\(/tslb/race/targets/\\d+\\)$`, 'm'));
      expect(kvs('/tslb/race/targets/').kvs.filter((kv) => (JSON.parse(kv.value) as { fwmark: number }).fwmark === fwmark)).toHaveLength(1);
    }
  });

  it('ten concurrent registrants get ten distinct slots', async () => {
    init('ten', 16);
    const register = (i: number) => cliAsync(['register', ...WRITER, '--service=ten', `--fwmark=${1000 + i}`, `--name=vm-${i}`]);
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => register(i)));
    for (const r of rs) expect(r.status, r.stderr).toBe(0);
    const slots = rs.map((r) => (JSON.parse(r.stdout) as { slot: number }).slot);
    expect([...slots].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const s = show('ten');
    expect(s.targets.map((t) => [t.slot, t.fwmark, t.name])).toEqual(
      [...rs.keys()].map((i) => [slots[i], 1000 + i, `vm-${i}`]).sort((a, b) => (a[0] as number) - (b[0] as number)),
    );
    expect(s.rejected).toEqual([]);
  });

  it('show prints the targets, the revision and the keys it rejected, with why', () => {
    init('bad');
    for (const fw of [100, 101]) expect(cli(['register', ...WRITER, '--service=bad', `--fwmark=${fw}`]).status).toBe(0);
    for (const [slot, v] of [
      ['2', '{"fwmark": 102,'],
      ['3', '{"fwmark":0,"state":"active"}'],
      ['9', '{"fwmark":109,"state":"active"}'],
      ['5', '{"fwmark":100,"state":"active"}'],
      ['4', '{"fwmark":104,"state":"draining","name":"by-hand","ts":5,"zone":"x"}'],
    ] as const)
      etcdctl(['put', `/tslb/bad/targets/${slot}`, v]);
    const { revision } = kvs('/tslb/bad/');
    const s = show('bad');
    expect(s.revision).toBe(revision);
    expect(s.targets).toEqual([
      { slot: 0, fwmark: 100, state: 'active', name: null, ts: expect.any(Number), lease: null },
      { slot: 1, fwmark: 101, state: 'active', name: null, ts: expect.any(Number), lease: null },
      { slot: 4, fwmark: 104, state: 'draining', name: 'by-hand', ts: 5, lease: null },
    ]);
    expect(s.rejected.map((r) => [r.key, r.reason])).toEqual([
      ['/tslb/bad/targets/2', expect.stringMatching(/^malformed JSON \(.+\)$/)],
      ['/tslb/bad/targets/3', 'fwmark 0 is out of range 1..2147483647'],
      ['/tslb/bad/targets/5', 'fwmark 100 is also at slot 0, which had it first'],
      ['/tslb/bad/targets/9', 'slot 9 >= N=8'],
    ]);
    expect(s.rejected[0]!.value).toBe('{"fwmark": 102,');
    // A fwmark a rejected key names is not free either.
    expectOneLine(
      cli(['register', ...WRITER, '--service=bad', '--fwmark=109']),
      /fwmark 109 is already registered \(\/tslb\/bad\/targets\/9\)$/m,
    );
    expectOneLine(cli(['register', ...WRITER, '--service=bad', '--fwmark=110', '--slot=8']), /^nfqlb register: --slot=8: slot >= N=8$/m);
  });

  it('drain, undrain and delete by slot and by fwmark; a target keeps its lease', async () => {
    init('ops');
    for (const fw of [201, 202]) expect(cli(['register', ...WRITER, '--service=ops', `--fwmark=${fw}`]).status).toBe(0);
    const { d, claim } = await sidecar(['--service=ops', '--fwmark=203', '--lease=30', '--drain=0']);
    expect(claim.slot).toBe(2);
    const state = (slot: number) => value(`/tslb/ops/targets/${slot}`)?.state;
    const op = (cmd: string, sel: string) => cli(['registry', cmd, ...WRITER, '--service=ops', sel]);
    const ts0 = value('/tslb/ops/targets/0')!.ts as number;
    expect(op('drain', '--slot=0').status).toBe(0);
    expect(state(0)).toBe('draining');
    expect(value('/tslb/ops/targets/0')!.ts).toBeGreaterThan(ts0);
    expect(op('drain', '--fwmark=202').status).toBe(0);
    expect(state(1)).toBe('draining');
    expect(op('drain', '--fwmark=202').status).toBe(0); // already draining: nothing to do
    expect(op('undrain', '--slot=0').status).toBe(0);
    expect(state(0)).toBe('active');
    expect(op('drain', '--fwmark=203').status).toBe(0);
    expect(state(2)).toBe('draining');
    expect(kvs('/tslb/ops/targets/2').kvs[0]!.lease).toBe(claim.lease);
    expect(op('undrain', '--slot=2').status).toBe(0);
    expect(op('delete', '--fwmark=202').status).toBe(0);
    expect(op('delete', '--slot=0').status).toBe(0);
    expect(kvs('/tslb/ops/targets/').kvs.map((kv) => kv.key)).toEqual(['/tslb/ops/targets/2']);
    expectOneLine(op('drain', '--slot=7'), /^nfqlb registry drain: service 'ops' has no target at slot 7$/m);
    expectOneLine(op('delete', '--fwmark=999'), /^nfqlb registry delete: service 'ops' has no target with fwmark 999$/m);
    etcdctl(['put', '/tslb/ops/targets/5', 'not json']);
    expectOneLine(
      op('drain', '--slot=5'),
      /^nfqlb registry drain: \/tslb\/ops\/targets\/5: malformed JSON .* \(write a valid value or delete it\)$/m,
    );
    expect(op('delete', '--slot=5').status).toBe(0);
    await d.stop('SIGTERM');
    expect(d.proc.exitCode).toBe(0);
    expect(kvs('/tslb/ops/targets/').kvs).toEqual([]);
  });

  it('register --lease: SIGTERM sets the target draining, then deletes it after --drain', async () => {
    init('lease');
    const { d, claim } = await sidecar(['--service=lease', '--fwmark=301', '--name=vm-l', '--lease=2', '--drain=1500']);
    expect(show('lease').targets).toEqual([
      { slot: 0, fwmark: 301, state: 'active', name: 'vm-l', ts: expect.any(Number), lease: claim.lease },
    ]);
    d.proc.kill('SIGTERM');
    await waitFor('the target to be draining', () => value(claim.key)?.state === 'draining');
    await waitFor('the key to be deleted', () => value(claim.key) === undefined, { timeout: 15_000 });
    // It exits by itself: stop() now would send a second SIGTERM.
    await waitFor('the sidecar to exit', () => d.proc.exitCode !== null || d.proc.signalCode !== null);
    const out = await d.stop();
    expect(d.proc.exitCode).toBe(0);
    const logs = out
      .split('\n')
      .filter((l) => l.includes('"msg"'))
      .map((l) => JSON.parse(l) as { msg: string; time: number });
    const at = (msg: string) => logs.find((l) => l.msg === msg)!.time;
    expect(at('deregistered') - at('draining')).toBeGreaterThanOrEqual(1500);
  });

  it('register --lease: after SIGKILL the key goes when the lease expires', async () => {
    init('kill');
    const { d, claim } = await sidecar(['--service=kill', '--fwmark=302', '--lease=3']);
    d.proc.kill('SIGKILL');
    await d.stop();
    const killed = Date.now();
    expect(value(claim.key)?.state).toBe('active'); // nothing deleted it
    await waitFor('the lease to expire', () => value(claim.key) === undefined, { timeout: 15_000 });
    // 3 s TTL, renewed every TTL/3: gone within the TTL (and etcd's expiry check) of the kill.
    expect(Date.now() - killed).toBeLessThan(3000 + 3000);
  });

  it('register --lease: a sidecar whose lease etcd drops registers again, on its slot', async () => {
    init('lost');
    const { d, claim } = await sidecar(['--service=lost', '--fwmark=303', '--lease=3', '--drain=0']);
    etcdctl(['lease', 'revoke', claim.lease]);
    const again = await waitFor('the target back under a new lease', () => {
      const kv = kvs(claim.key).kvs[0];
      return kv && kv.lease !== claim.lease ? kv : undefined;
    });
    expect(JSON.parse(again.value)).toMatchObject({ fwmark: 303, state: 'active' });
    await waitFor('the sidecar to log it', () => d.output().includes('"msg":"registered again"'));
    expect(d.output()).toContain('"msg":"registry lease lost: registering again"');
    await d.stop('SIGTERM');
    expect(d.proc.exitCode).toBe(0);
    expect(kvs('/tslb/lost/targets/').kvs).toEqual([]);
  });

  it("register takes over its fwmark's draining registration (an active one refuses); the old sidecar then leaves it alone", async () => {
    init('retake');
    const sc = (rest: string[]) => sidecar(['--service=retake', '--fwmark=801', '--name=vm-r', '--lease=30', ...rest]);
    const old = await sc(['--slot=2', '--drain=3000']);
    const refused = /^nfqlb register: fwmark 801 is already registered \(\/tslb\/retake\/targets\/2\)$/m;
    expectOneLine(cli(['register', ...WRITER, '--service=retake', '--fwmark=801']), refused);
    old.d.proc.kill('SIGTERM');
    await waitFor('the old target to be draining', () => value(old.claim.key)?.state === 'draining');
    // Draining, but on another slot than the one asked for: still refused.
    expectOneLine(cli(['register', ...WRITER, '--service=retake', '--fwmark=801', '--slot=3']), refused);
    const { d, claim } = await sc(['--drain=0']);
    expect(claim).toMatchObject({ slot: 2, key: old.claim.key, took_over: true });
    expect(claim.lease).not.toBe(old.claim.lease);
    await waitFor('the new sidecar to log the take-over', () => d.output().includes('"msg":"took over the draining registration"'));
    const held = () => kvs(claim.key).kvs.map((kv) => ({ lease: kv.lease, state: (JSON.parse(kv.value) as { state: string }).state }));
    expect(held()).toEqual([{ lease: claim.lease, state: 'active' }]);
    // Now active under the new lease: a third registrant is refused again.
    expectOneLine(cli(['register', ...WRITER, '--service=retake', '--fwmark=801']), refused);
    // The old sidecar's drain ends: it deletes nothing, revokes its own lease and exits 0.
    await waitFor('the old sidecar to exit', () => old.d.proc.exitCode !== null || old.d.proc.signalCode !== null, { timeout: 10_000 });
    expect(old.d.proc.exitCode).toBe(0);
    expect(await old.d.stop()).toContain('"msg":"taken over: leaving the key to its new holder"');
    expect(etcdctl(['lease', 'timetolive', old.claim.lease])).toMatch(/already expired/);
    expect(held()).toEqual([{ lease: claim.lease, state: 'active' }]);
    await d.stop('SIGTERM');
    expect(d.proc.exitCode).toBe(0);
    expect(kvs('/tslb/retake/targets/').kvs).toEqual([]);
  });

  it('a taken-over registration outlives the old sidecar killed with SIGKILL: its lease expires alone', async () => {
    init('retake-kill');
    const sc = (drain: string) => sidecar(['--service=retake-kill', '--fwmark=802', '--lease=2', drain]);
    const old = await sc('--drain=60000');
    old.d.proc.kill('SIGTERM');
    await waitFor('the old target to be draining', () => value(old.claim.key)?.state === 'draining');
    const { d, claim } = await sc('--drain=0');
    expect(claim).toMatchObject({ slot: old.claim.slot, took_over: true });
    await old.d.stop('SIGKILL');
    await waitFor('the old lease to expire', () => /already expired/.test(etcdctl(['lease', 'timetolive', old.claim.lease])), {
      timeout: 10_000,
    });
    expect(kvs(claim.key).kvs.map((kv) => kv.lease)).toEqual([claim.lease]);
    expect(value(claim.key)?.state).toBe('active');
    await d.stop('SIGTERM');
    expect(kvs('/tslb/retake-kill/targets/').kvs).toEqual([]);
  });

  it('a wrong password, no password, a reader-only user or no client certificate: one line, non-zero, nothing changed', () => {
    init('locked');
    expect(cli(['register', ...WRITER, '--service=locked', '--fwmark=400']).status).toBe(0);
    const before = kvs('/');
    const writes: [string, string[]][] = [
      ['register', ['--service=locked', '--fwmark=401']],
      ['registry init', ['--service=locked', '--M=7', '--N=2', '--force']],
      ['registry drain', ['--service=locked', '--slot=0']],
      ['registry delete', ['--service=locked', '--fwmark=400']],
    ];
    for (const [cmd, rest] of writes) {
      const run = (creds: string[], env: Record<string, string> = {}) => cli([...cmd.split(' '), ...creds, ...rest], env);
      expectOneLine(
        run([...TLS, '--etcd_user=writer'], { NFQLB_ETCD_PASSWORD: 'wrong' }),
        new RegExp(`^nfqlb ${cmd}: etcd: authentication failed for user 'writer': check the password$`, 'm'),
      );
      expectOneLine(run(TLS), new RegExp(`^nfqlb ${cmd}: etcd: permission denied to [\\w ]+ under ${ENDPOINT} \\(no --etcd_user\\)$`, 'm'));
      expectOneLine(
        run([...TLS, '--etcd_user=reader'], { NFQLB_ETCD_PASSWORD: 'readerpw' }),
        new RegExp(`^nfqlb ${cmd}: etcd: permission denied to [\\w ]+ under ${ENDPOINT} \\(user 'reader'\\)$`, 'm'),
      );
      // What grpc can tell of a refused handshake varies: either line names the client certificate.
      const noCert = '(TLS: .*etcd refused the client certificate, or wants one|no connection; does etcd want a client certificate)';
      const withoutCert = [`--etcd=${ENDPOINT}`, `--etcd_cacert=${file('ca.crt')}`, '--etcd_user=writer'];
      expectOneLine(
        run(withoutCert, { NFQLB_ETCD_PASSWORD: 'writerpw' }),
        new RegExp(`^nfqlb ${cmd}: etcd ${ENDPOINT}: unreachable \\(${noCert} \\(--etcd_cert\\)\\??\\)$`, 'm'),
      );
    }
    expect(kvs('/')).toEqual(before);
    // The reader may read.
    const r = cli(['registry', 'show', ...TLS, '--etcd_user=reader', '--service=locked'], { NFQLB_ETCD_PASSWORD: 'readerpw' });
    expect(r.status, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { targets: unknown[] }).targets).toHaveLength(1);
  });

  it('an unreachable etcd: one line within a bounded time', () => {
    const t0 = Date.now();
    expectOneLine(
      cli(['registry', 'show', '--etcd=https://127.0.0.1:2999', `--etcd_cacert=${file('ca.crt')}`, '--service=web']),
      /^nfqlb registry show: etcd https:\/\/127\.0\.0\.1:2999: unreachable \(connect ECONNREFUSED 127\.0\.0\.1:2999\)$/m,
    );
    expect(Date.now() - t0).toBeLessThan(5000);
    // No answer at all (SYNs dropped): the request's time limit ends it.
    runIn(NS, ['iptables', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '2998', '-j', 'DROP']);
    const t1 = Date.now();
    expectOneLine(
      cli(['register', '--etcd=http://127.0.0.1:2998', '--etcd_timeout=1000', '--service=web', '--fwmark=5']),
      /^nfqlb register: etcd http:\/\/127\.0\.0\.1:2998: (no answer within 1000 ms|unreachable \(.*\))$/m,
    );
    expect(Date.now() - t1).toBeLessThan(1000 + 4000);
  });

  it('a watcher hears of each change after the revision it read (what follow builds on)', async () => {
    init('watch');
    const js = `
      const { readFileSync } = await import('node:fs');
      const [root, dir] = JSON.parse(process.argv[1]);
      const { Registry } = await import(root + 'dist/src/registry/etcd.js');
      const { ServiceKeys } = await import(root + 'dist/src/registry/model.js');
      const f = (n) => readFileSync(dir + '/' + n);
      const reg = await Registry.connect({ endpoints: ['${ENDPOINT}'],
        tls: { ca: f('ca.crt'), cert: f('client.crt'), key: f('client.key') },
        user: { name: 'writer', password: 'writerpw' }, timeoutMs: 5000 });
      const keys = new ServiceKeys('/tslb', 'watch');
      const snap = await reg.snapshot(keys);
      const stop = await reg.watch(keys, snap.revision, async (revision) => {
        const d = await reg.read(keys);
        console.log(JSON.stringify({ revision, read: d.revision, fwmarks: d.targets.map((t) => t.fwmark) }));
        await stop();
        reg.close();
      }, (e) => console.log('error ' + e.message));
      console.log('watching ' + snap.revision);`;
    const w = await startDaemon(
      spawnInNs(NS, ['node', '--no-deprecation', '--input-type=module', '-e', js, JSON.stringify([ROOT, etcd.dir])]),
      'watching',
    );
    daemons.push(w);
    const r = cli(['register', ...WRITER, '--service=watch', '--fwmark=600']);
    expect(r.status).toBe(0);
    const claim = JSON.parse(r.stdout) as { revision: number };
    await waitFor('the watcher to exit', () => w.proc.exitCode !== null);
    const heard = JSON.parse((await w.stop()).split('\n')[1]!) as { revision: number; read: number; fwmarks: number[] };
    expect(heard).toEqual({ revision: claim.revision, read: claim.revision, fwmarks: [600] });
  });
});

/**
 * Runs a section's blocks as one shell script from the checkout, in a network namespace of its
 * own (its own loopback ports) and a private /dev/shm (the blocks use the default table name).
 */
function runDoc(heading: string): RunResult {
  const ns = `${NS}-d`;
  addNs(ns);
  try {
    const script = ['mount -t tmpfs treg-doc-shm /dev/shm || exit 1', ...docCommands(['docs/registry.md', heading])].join('\n');
    const r = spawnSync('ip', ['netns', 'exec', ns, 'unshare', '--mount', '--propagation=private', 'sh', '-c', script], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 90_000,
      env: { ...process.env, TMPDIR: etcd.dir },
    });
    // The shell says 'Terminated' when `wait` collects the etcd it stopped.
    return { status: r.status, stdout: r.stdout, stderr: r.stderr.replace(/^Terminated\n/gm, '') };
  } finally {
    removeNs(ns);
  }
}

describe('docs/registry.md runs as written', () => {
  it('Try it', () => {
    const r = runDoc('Try it');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('"reason": "fwmark 101 is also at slot 0, which had it first"');
    const logs = r.stdout
      .split('\n')
      .filter((l) => l.includes('"msg"'))
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(logs).toEqual(['draining', 'deregistered']);
    // What etcdctl lists at the end: vm-001 and the drained vm-002; the copy and vm-003 are gone.
    const listed = r.stdout
      .slice(r.stdout.lastIndexOf('"deregistered"'))
      .split('\n')
      .filter((l) => l.startsWith('/tslb/'));
    expect(listed).toEqual(['/tslb/web/config', '/tslb/web/targets/0', '/tslb/web/targets/5']);
    expect(r.stdout).toMatch(/"fwmark":102,"state":"draining","name":"vm-002"/);
  });

  it('A tier with TLS and users', () => {
    const r = runDoc('A tier with TLS and users');
    expect(r.stderr).toBe('nfqlb register: etcd: permission denied to read under https://127.0.0.1:2379 (no --etcd_user)\n');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('"fwmark": 101');
    expect(r.stdout).toMatch(/\nrefused\n/);
  });

  it('Follow it', () => {
    const r = runDoc('Follow it');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const actives = r.stdout.split('\n').filter((l) => l.includes('Active:'));
    expect(actives.map((l) => l.trim())).toEqual(['Active: 101(0) 102(1)', 'Active: 101(0)', 'Active: 101(0)']);
    expect(r.stdout).toMatch(/^nfqlb_registry_connected 1$/m);
    expect(r.stdout).toMatch(/^nfqlb_registry_revision \d+$/m);
    expect(r.stdout).toMatch(/^nfqlb_table_hash\{service="web"\} \d+$/m);
  });
});
