// `nfqlb follow` against a real etcd with TLS and users (etcd-fixture.ts), in a namespace of our
// own; the follower reads as the read-only user. Its table is a real /dev/shm file, read here as
// an lb reads it. Exercised: register, drain, undrain and delete reach the table (timed); a
// changed config re-creates the table and an lb's TableFollower switches to it; bad keys are
// left out, counted and warned about once; etcd killed (the table stays) and started again (it
// converges); the follower SIGKILLed and started while etcd is down (the table is there at once);
// the start's one-line refusals; and the library's setDown and onPublish.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, listNs, removeNs, spawnInNs } from '../../src/lab/netns.js';
import { tableHash } from '../../src/registry/follower.js';
import { shmPath } from '../../src/shm.js';
import { NFQLB_TABLE, TableFollower, TargetStore } from '../../src/target-store.js';
import { waitFor } from '../wait.js';
import { EtcdFixture } from './etcd-fixture.js';
import { type Daemon, NFQLB, nfqlbIn, ROOT, type RunResult, requireBuild, runIn, startDaemon } from './harness.js';

const NS = `tfol-${process.pid}`;
const SHM = `tfol-${process.pid}`;
const shms: string[] = [];
const daemons: Daemon[] = [];
let etcd: EtcdFixture;
/** The follower's read-only user, its password in the environment. */
let READER: string[];
const READER_ENV = { NFQLB_ETCD_PASSWORD: 'readerpw' };

const cli = (args: string[]): RunResult => nfqlbIn(NS, args);

function writer(args: string[]): RunResult {
  const [cmd, ...rest] = args;
  const r = cli(cmd === 'registry' ? ['registry', rest[0]!, ...etcd.writer, ...rest.slice(1)] : [cmd!, ...etcd.writer, ...rest]);
  expect(r.status, r.stderr).toBe(0);
  return r;
}

function shmName(tag: string): string {
  const name = `${SHM}-${tag}`;
  shms.push(name);
  return name;
}

/** `nfqlb follow` in the namespace, once it logged that it follows. */
async function follow(service: string, shm: string, port: number, extra: string[] = []): Promise<Daemon> {
  const argv = ['env', `NFQLB_ETCD_PASSWORD=${READER_ENV.NFQLB_ETCD_PASSWORD}`, 'node', NFQLB, 'follow', ...READER];
  const d = await startDaemon(
    spawnInNs(NS, [...argv, `--service=${service}`, `--shm=${shm}`, `--metrics=${port}`, ...extra]),
    '"msg":"following"',
  );
  daemons.push(d);
  return d;
}

/** The active slots of a table, as an lb reads them: slot -> fwmark. */
function active(shm: string): Record<number, number> {
  const t = TargetStore.open(NFQLB_TABLE, shm).targets;
  return Object.fromEntries([...t.active].flatMap((fw, slot) => (fw >= 0 ? [[slot, fw]] : [])));
}

const draining = (shm: string): number[] => TargetStore.open(NFQLB_TABLE, shm).draining();

/** One sample of the follower's metrics: name{labels} -> value. */
function metrics(port: number): Record<string, number> {
  const r = runIn(NS, ['curl', '-sf', `http://127.0.0.1:${port}/metrics`]);
  if (r.status !== 0) throw new Error(`metrics on ${port}: curl exit ${r.status}`);
  return Object.fromEntries(
    r.stdout
      .split('\n')
      .filter((l) => l.startsWith('nfqlb_'))
      .map((l) => {
        const i = l.lastIndexOf(' ');
        return [l.slice(0, i), Number(l.slice(i + 1))];
      }),
  );
}

/** Runs `change` and waits until the table shows it: the ms from the command's return. */
async function timed(what: string, shm: string, change: () => void, done: (shm: string) => boolean): Promise<number> {
  change();
  const t0 = performance.now();
  await waitFor(what, () => done(shm), { interval: 2 });
  return performance.now() - t0;
}

beforeAll(async () => {
  requireBuild();
  addNs(NS);
  etcd = await EtcdFixture.create(NS, 'tfol-');
  READER = [...etcd.tls, '--etcd_user=reader'];
}, 60_000);

afterAll(async () => {
  for (const d of daemons) if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
  await etcd?.close();
  removeNs(NS);
  for (const shm of shms) TargetStore.delete(NFQLB_TABLE, shm);
  expect(listNs(NS)).toEqual([]);
});

describe('nfqlb follow', () => {
  it('applies register, drain, undrain and delete to the table; a new config re-creates it', async () => {
    writer(['registry', 'init', '--service=web', '--M=97', '--N=8']);
    writer(['register', '--service=web', '--fwmark=101', '--name=vm-1']);
    writer(['register', '--service=web', '--fwmark=102', '--name=vm-2']);
    const shm = shmName('web');
    const d = await follow('web', shm, 9301);
    // Made from the registry's config: there was no table.
    expect(TargetStore.open(NFQLB_TABLE, shm).targets).toMatchObject({ M: 97, N: 8 });
    expect(active(shm)).toEqual({ 0: 101, 1: 102 });
    const ms: Record<string, number> = {};
    ms.register = await timed(
      '103 in slot 2',
      shm,
      () => writer(['register', '--service=web', '--fwmark=103']),
      (s) => active(s)[2] === 103,
    );
    ms.drain = await timed(
      '102 draining',
      shm,
      () => writer(['registry', 'drain', '--service=web', '--fwmark=102']),
      (s) => active(s)[1] === undefined,
    );
    // Out of the lookup, in the drain list: an lb with --conntrack keeps its flows.
    expect(draining(shm)).toEqual([102]);
    expect(new Set(TargetStore.open(NFQLB_TABLE, shm).targets.lookup)).not.toContain(1);
    ms.undrain = await timed(
      '102 back',
      shm,
      () => writer(['registry', 'undrain', '--service=web', '--slot=1']),
      (s) => active(s)[1] === 102,
    );
    expect(draining(shm)).toEqual([]);
    writer(['registry', 'drain', '--service=web', '--slot=1']);
    ms.delete = await timed(
      '102 gone',
      shm,
      () => writer(['registry', 'delete', '--service=web', '--slot=1']),
      (s) => !draining(s).includes(102) && active(s)[1] === undefined,
    );
    // Deleted is dead: out of the drain list too.
    expect(active(shm)).toEqual({ 0: 101, 2: 103 });
    console.log(
      `follow: command exited -> table ${Object.entries(ms)
        .map(([k, v]) => `${k} ${v.toFixed(1)} ms`)
        .join(', ')}`,
    );
    for (const v of Object.values(ms)) expect(v).toBeLessThan(1000);

    // An lb follows the table across the re-creation, as across `nfqlb init`.
    const lb = new TableFollower(NFQLB_TABLE, shm, { log: false });
    writer(['registry', 'init', '--service=web', '--M=101', '--N=16', '--force']);
    await waitFor('the table re-created', () => lb.check());
    expect(lb.table).toMatchObject({ M: 101, N: 16 });
    expect(active(shm)).toEqual({ 0: 101, 2: 103 });

    const m = metrics(9301);
    const hash = tableHash(TargetStore.open(NFQLB_TABLE, shm).targets.lookup);
    expect(m).toMatchObject({
      nfqlb_registry_connected: 1,
      nfqlb_registry_revision: etcd.kvs('/tslb/web/').revision,
      'nfqlb_table_hash{service="web"}': hash,
    });
    // Each change with a ts (register, drain, undrain; a deletion has none) was timed from it.
    expect(m.nfqlb_registry_apply_seconds_count).toBeGreaterThanOrEqual(4);
    const n = m.nfqlb_registry_apply_seconds_count!;
    const share = (le: string) => `${((100 * m[`nfqlb_registry_apply_seconds_bucket{le="${le}"}`]!) / n).toFixed(0)}%`;
    console.log(`follow: nfqlb_registry_apply_seconds: ${n} changes, ${share('0.02')} <= 20 ms, ${share('0.1')} <= 100 ms`);
    expect(m['nfqlb_registry_apply_seconds_bucket{le="1"}']).toBe(m.nfqlb_registry_apply_seconds_count);
    await d.stop('SIGTERM');
    expect(d.proc.exitCode).toBe(0);
    // Left as it was.
    expect(active(shm)).toEqual({ 0: 101, 2: 103 });
  });

  it('leaves bad keys out, counts them by reason, warns once per key, and applies the rest', async () => {
    writer(['registry', 'init', '--service=bad', '--M=97', '--N=8']);
    writer(['register', '--service=bad', '--fwmark=201']);
    writer(['register', '--service=bad', '--fwmark=202']);
    for (const [slot, v] of [
      ['2', '{"fwmark": 203,'],
      ['3', '{"fwmark":0,"state":"active"}'],
      ['9', '{"fwmark":209,"state":"active"}'],
      ['5', '{"fwmark":201,"state":"active"}'],
    ] as const)
      etcd.etcdctl(['put', `/tslb/bad/targets/${slot}`, v]);
    const shm = shmName('bad');
    const d = await follow('bad', shm, 9302);
    expect(active(shm)).toEqual({ 0: 201, 1: 202 });
    const rejected = (m: Record<string, number>) =>
      Object.fromEntries(
        Object.entries(m).flatMap(([k, v]) => {
          const reason = /^nfqlb_registry_rejected_total\{reason="(\w+)"\}$/.exec(k)?.[1];
          return reason ? [[reason, v]] : [];
        }),
      );
    expect(rejected(metrics(9302))).toEqual({ malformed: 1, fwmark_range: 1, slot_range: 1, duplicate_fwmark: 1 });
    // The same bad key again, with another value, and a good one after it: counted again, not warned again.
    etcd.etcdctl(['put', '/tslb/bad/targets/2', 'nonsense']);
    writer(['register', '--service=bad', '--fwmark=204', '--slot=4']);
    await waitFor('204 applied', () => active(shm)[4] === 204);
    expect(rejected(metrics(9302))).toMatchObject({ malformed: 2 });
    const warned = (key: string) =>
      d
        .output()
        .split('\n')
        .filter((l) => l.includes('registry key rejected') && l.includes(`"key":"${key}"`));
    expect(warned('/tslb/bad/targets/2')).toHaveLength(1);
    for (const slot of [3, 5, 9]) expect(warned(`/tslb/bad/targets/${slot}`)).toHaveLength(1);
    expect(d.proc.exitCode).toBeNull();
    await d.stop('SIGTERM');
  });

  it('keeps the table while etcd is down, also across its own SIGKILL and restart, then converges', async () => {
    writer(['registry', 'init', '--service=outage', '--M=97', '--N=8']);
    writer(['register', '--service=outage', '--fwmark=301']);
    writer(['register', '--service=outage', '--fwmark=302']);
    const shm = shmName('outage');
    const d = await follow('outage', shm, 9303, ['--relist=300']);
    const before = active(shm);
    expect(before).toEqual({ 0: 301, 1: 302 });
    const hash = metrics(9303)['nfqlb_table_hash{service="outage"}'];
    expect(hash).toBe(tableHash(TargetStore.open(NFQLB_TABLE, shm).targets.lookup));
    await etcd.kill();
    await waitFor('the follower to see etcd gone', () => metrics(9303).nfqlb_registry_connected === 0);
    // Several re-reads fail meanwhile (every 300 ms, retries sooner): the table stays.
    const down = Date.now();
    await waitFor('a few failed re-reads', () => Date.now() - down > 1000 && metrics(9303).nfqlb_registry_connected === 0);
    expect(active(shm)).toEqual(before);
    expect(runIn(NS, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:9303/healthz']).stdout).toBe('503');

    // Killed and started again while etcd is down: the table is there all along, untouched.
    d.proc.kill('SIGKILL');
    await d.stop();
    expect(active(shm)).toEqual(before);
    const again = await follow('outage', shm, 9303, ['--relist=300']);
    expect(again.output()).toContain('registry unreachable at start: keeping the local table');
    expect(active(shm)).toEqual(before);
    expect(metrics(9303)).toMatchObject({ nfqlb_registry_connected: 0, 'nfqlb_table_hash{service="outage"}': hash });

    await etcd.start();
    const up = performance.now();
    await waitFor('the follower to reconnect', () => metrics(9303).nfqlb_registry_connected === 1);
    const reconnectMs = performance.now() - up;
    const ms = await timed(
      '303 applied',
      shm,
      () => writer(['register', '--service=outage', '--fwmark=303']),
      (s) => active(s)[2] === 303,
    );
    console.log(`follow: etcd back -> follower connected in ${reconnectMs.toFixed(0)} ms; next register -> table ${ms.toFixed(1)} ms`);
    expect(reconnectMs).toBeLessThan(3000);
    await again.stop('SIGTERM');
    expect(again.proc.exitCode).toBe(0);
  });

  it('at start: an unreachable etcd without a table, or wrong credentials, is one line and exit 1; the table is untouched', () => {
    const none = shmName('none');
    const unreachable = cli(['follow', '--etcd=http://127.0.0.1:2999', '--service=web', `--shm=${none}`]);
    expect(unreachable).toMatchObject({ status: 1, stdout: '' });
    expect(unreachable.stderr).toBe('nfqlb follow: etcd http://127.0.0.1:2999: unreachable (connect ECONNREFUSED 127.0.0.1:2999)\n');
    expect(runIn(NS, ['test', '-e', shmPath(none)]).status).not.toBe(0);
    // With a table (the first test's): a wrong password is refused all the same, the table stays.
    const shm = `${SHM}-web`;
    const before = active(shm);
    const wrong = runIn(NS, ['node', NFQLB, 'follow', ...etcd.tls, '--etcd_user=reader', '--service=web', `--shm=${shm}`], {
      env: { NFQLB_ETCD_PASSWORD: 'wrong' },
    });
    expect(wrong).toMatchObject({ status: 1, stdout: '' });
    expect(wrong.stderr).toBe("nfqlb follow: etcd: authentication failed for user 'reader': check the password\n");
    expect(active(shm)).toEqual(before);
  });

  it('the library: setDown takes slots out of the lookup at once; onPublish tells each publication', async () => {
    writer(['registry', 'init', '--service=lib', '--M=97', '--N=8']);
    for (const fw of [401, 402, 403]) writer(['register', '--service=lib', `--fwmark=${fw}`]);
    const shm = shmName('lib');
    const js = `
      const { readFileSync } = await import('node:fs');
      const [root, dir, shm] = JSON.parse(process.argv[1]);
      const m = await import(root + 'dist/src/index.js');
      const f = (n) => readFileSync(dir + '/' + n);
      const follower = new m.RegistryFollower({ keys: new m.ServiceKeys('/tslb', 'lib'), shm,
        etcd: { endpoints: ['${etcd.endpoint}'], tls: { ca: f('ca.crt'), cert: f('client.crt'), key: f('client.key') },
          user: { name: 'reader', password: 'readerpw' }, timeoutMs: 5000 } });
      const table = () => {
        const s = m.TargetStore.open(m.NFQLB_TABLE, shm);
        return { active: [...s.targets.active].slice(0, 3), draining: s.draining(), hash: m.tableHash(s.targets.lookup) };
      };
      follower.onPublish((p) => console.log(JSON.stringify({ publish: p.revision, down: [...p.down], changed: p.changed, hash: p.hash })));
      await follower.start();
      console.log(JSON.stringify({ start: table(), revision: follower.revision }));
      follower.setDown(new Set([1]));
      console.log(JSON.stringify({ down1: table() }));
      follower.setDown(new Set());
      console.log(JSON.stringify({ up: table() }));
      follower.stop();`;
    const r = runIn(NS, ['node', '--no-deprecation', '--input-type=module', '-e', js, JSON.stringify([ROOT, etcd.dir, shm])]);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout
      .split('\n')
      // Our lines, not the follower's log (pino's lines have a level).
      .filter((l) => l.startsWith('{"') && !l.includes('"level":'))
      .map((l) => JSON.parse(l) as Record<string, { active: number[]; draining: number[]; hash: number }> & { hash: number });
    const revision = etcd.kvs('/tslb/lib/').revision;
    const [p0, start, p1, down1, p2, up] = lines;
    expect(start).toMatchObject({ start: { active: [401, 402, 403], draining: [] }, revision });
    expect(down1!.down1).toMatchObject({ active: [401, -1, 403], draining: [402] });
    expect(up!.up).toMatchObject({ active: [401, 402, 403], draining: [] });
    expect([p0, p1, p2]).toEqual([
      { publish: revision, down: [], changed: true, hash: start!.start!.hash },
      { publish: revision, down: [1], changed: true, hash: down1!.down1!.hash },
      { publish: revision, down: [], changed: true, hash: up!.up!.hash },
    ]);
    expect(up!.up!.hash).toBe(start!.start!.hash);
    expect(down1!.down1!.hash).not.toBe(start!.start!.hash);
  });
});
