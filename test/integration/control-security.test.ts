// Who may steer a running nfqlb, through its real control sockets in a namespace of our own:
// root and an unprivileged user (nobody) on the unix socket and on tcp with the control key;
// every change in the audit log with its origin, refusals at warn and rate-limited; a tcp
// address that is not loopback refused at start; several lbs sharing a namespace; a taken
// queue named as such. The log level and trace mask live in the global shm `nfqlb-trace`:
// the test puts back the level it found.

import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, removeNs, spawnInNs } from '../../src/lab/netns.js';
import { openLogConfig } from '../../src/nfqlb/log-level.js';
import { LEVEL_WORD, MASK_WORD } from '../../src/nfqlb/tracer.js';
import { waitFor } from '../wait.js';
import { type Daemon, NFQLB, nfqlb, nfqlbIn, ROOT, requireBuild, runIn, startDaemon } from './harness.js';

const NS = 'tsc-ctl';
const TABLE = 'tsc-web';
const keyDir = mkdtempSync(join(tmpdir(), 'tsc-ctl-'));
const KEY = join(keyDir, 'nfqlb', 'control.key');
const FLOW_TCP = 'tcp:[::1]:10033';
const TRACE_TCP = 'tcp:127.0.0.1:10034';
const config = openLogConfig();
const daemons: Daemon[] = [];
let savedLevel = 5;

const cli = (args: string[], env: Record<string, string> = {}, user: 'root' | 'nobody' = 'root') => nfqlbIn(NS, args, { env, user });

/** A bare client: connects, sends `text` `times` times (one connection each), prints each reply on a line of JSON. */
function rawClient(
  address: { path: string } | { host: string; port: number },
  text: string,
  user: 'root' | 'nobody' = 'root',
  times = 1,
): string[] {
  const js = `const net = require('node:net'); const [a, text, times] = JSON.parse(process.argv[1]); let left = times;
    for (let i = 0; i < times; i++) { const c = net.connect(a.path ? { path: '\\0' + a.path } : a); let r = '';
      c.on('connect', () => c.write(text)); c.on('data', (d) => (r += d)); c.on('error', (e) => (r += 'error ' + e.code));
      c.on('close', () => { console.log(JSON.stringify(r)); if (--left === 0) process.exit(0); }); setTimeout(() => c.end(), 1000); }`;
  const r = runIn(NS, ['node', '-e', js, JSON.stringify([address, text, times])], { user });
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as string);
}

function start(args: string[], env: Record<string, string> = {}, ready = 'serving queue'): Promise<Daemon> {
  const proc = spawnInNs(NS, [
    'env',
    `NFQLB_CONTROL_KEY=${KEY}`,
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    'node',
    NFQLB,
    ...args,
  ]);
  return startDaemon(proc, ready).then((d) => {
    daemons.push(d);
    return d;
  });
}

/** The audit records in a daemon's output. */
function audit(d: Daemon): Record<string, unknown>[] {
  return d
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.audit === true);
}

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(() => {
  requireBuild();
  savedLevel = config[LEVEL_WORD]!;
  removeNs(NS);
  addNs(NS);
  nfqlb('init', `--shm=${TABLE}`, '--M=997', '--N=4');
  nfqlb('activate', `--shm=${TABLE}`, '101');
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop('SIGKILL')));
  config[LEVEL_WORD] = savedLevel;
  config[MASK_WORD] = 0;
  removeNs(NS);
  for (const shm of [TABLE, 'tsc-ft5', 'tsc-ft6', 'tsc-ft7', 'tsc-ft8']) nfqlb('delete', `--shm=${shm}`);
  rmSync(keyDir, { recursive: true, force: true });
});

describe('tcp control channels', () => {
  it('admit root with the key, refuse nobody and a wrong key, log both, and keep serving', async () => {
    const env = { NFQLB_FLOW_ADDRESS: FLOW_TCP, NFQLB_CONTROL_KEY: KEY };
    const lb = await start(['flowlb', '--queue=5', '--ft_shm=tsc-ft5', `--trace_address=${TRACE_TCP}`], env);
    try {
      // Created by the lb: root-only.
      expect(statSync(KEY).mode & 0o777).toBe(0o600);

      const set = cli(['flow-set', '--name=web', `--target=${TABLE}`, '--protocols=tcp', '--dports=80'], env);
      expect(set).toMatchObject({ status: 0, stdout: 'OK\n' });

      // nobody cannot read the key: refused with one line, nothing changed.
      const evil = cli(['flow-set', '--name=evil', `--target=${TABLE}`, '--protocols=tcp'], env, 'nobody');
      expect(evil.status).toBe(1);
      expect(evil.stdout).toBe('');
      expect(evil.stderr.trim().split('\n')).toHaveLength(1);
      expect(evil.stderr).toMatch(
        /^nfqlb flow-set: tcp:\[::1\]:10033 refused the request: no control key .*cannot read the control key .*control\.key \(EACCES\)/,
      );
      const listing = cli(['flow-list-names'], env, 'nobody');
      expect(listing.status).toBe(1);
      expect(listing.stdout).toBe('');

      // A wrong key (root, another file): refused too.
      const wrong = join(keyDir, 'wrong.key');
      writeFileSync(wrong, `${'f'.repeat(64)}\n`, { mode: 0o600 });
      const bad = cli(['flow-delete', '--name=web'], { ...env, NFQLB_CONTROL_KEY: wrong });
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/refused the request: wrong control key$/m);

      // Still serving, and only root's flow is there.
      expect(JSON.parse(cli(['flow-list-names'], env).stdout)).toEqual(['web']);
      expect(cli(['flow-delete', '--name=web'], env).stdout).toBe('OK\n');
      expect(cli(['trace-flow-set', '--name=dns', '--protocols=udp', '--dports=53'], env).stdout).toBe('OK\n');

      await waitFor('the trace-set audit record', () => audit(lb).some((l) => l.msg === 'flow channel: trace-set dns'));
      const records = audit(lb);
      const changes = records.filter((l) => l.level === 30 && l.channel === 'flow');
      expect(changes.map((l) => [l.action, l.flow])).toEqual([
        ['set', 'web'],
        ['delete', 'web'],
        ['trace-set', 'dns'],
      ]);
      expect(changes[0]).toMatchObject({
        peer: { address: expect.stringMatching(/^::1:\d+$/) },
        request: { target: TABLE, protocols: 'tcp', dports: '80' },
      });
      const refusals = records.filter((l) => l.level === 40);
      expect(refusals.map((l) => l.msg)).toEqual([
        'flow channel: refused: no control key (send auth:<key>; see NFQLB_CONTROL_KEY)',
        'flow channel: refused: no control key (send auth:<key>; see NFQLB_CONTROL_KEY)',
        'flow channel: refused: wrong control key',
      ]);
      expect(refusals[0]).toMatchObject({ action: 'set', peer: { address: expect.stringMatching(/^::1:/) } });
      // The key never reaches the log.
      expect(lb.output()).not.toContain(readFileSync(KEY, 'utf8').trim());

      // The trace channel: root with the key gets the stream; a bare client without it is turned away.
      const trace = spawnInNs(NS, [
        'env',
        `NFQLB_CONTROL_KEY=${KEY}`,
        'node',
        NFQLB,
        'trace',
        '--selection=log',
        `--trace_address=${TRACE_TCP}`,
      ]);
      const t = await startDaemon(trace, 'Trace active');
      expect(config[MASK_WORD]).toBe(1);
      await t.stop('SIGINT');
      await waitFor('the lb to clear the mask after the trace client left', () => config[MASK_WORD] === 0);
      expect(rawClient({ host: '127.0.0.1', port: 10034 }, 'hello\n', 'nobody')).toEqual([
        '{"error":"refused: no control key (send auth:<key>; see NFQLB_CONTROL_KEY)"}\n',
      ]);
      expect(rawClient({ host: '127.0.0.1', port: 10034 }, 'auth:nope\n')).toEqual(['{"error":"refused: wrong control key"}\n']);
      await waitFor('the wrong-key audit record', () => audit(lb).some((l) => l.msg === 'trace channel: refused: wrong control key'));
      const traceLog = audit(lb).filter((l) => l.channel === 'trace');
      expect(traceLog.map((l) => [l.level, l.msg])).toEqual([
        [30, 'trace active'],
        [30, 'trace closed'],
        [40, 'trace channel: refused: no control key (send auth:<key>; see NFQLB_CONTROL_KEY)'],
        [40, 'trace channel: refused: wrong control key'],
      ]);
      expect(traceLog[0]).toMatchObject({ mask: '0x00000001', peer: { address: expect.stringMatching(/^127\.0\.0\.1:/) } });
    } finally {
      await lb.stop();
    }
  });

  it('rate-limits refusals: a flood leaves a bounded log and a count of what was held back', async () => {
    const env = { NFQLB_FLOW_ADDRESS: FLOW_TCP, NFQLB_CONTROL_KEY: KEY };
    const lb = await start(['flowlb', '--queue=5', '--ft_shm=tsc-ft5'], env);
    try {
      const replies = rawClient({ host: '::1', port: 10033 }, 'auth:nope\naction:set\nname:x\ntarget:y\neoc:\n', 'nobody', 200);
      expect(replies).toHaveLength(200);
      expect(new Set(replies)).toEqual(new Set(['FAIL: refused: wrong control key\0']));
      // Not a wait for the lb: its bucket (2 tokens/s) took for the last refusal before it
      // answered, so 600 ms after the last answer it has a token again.
      await tick(600);
      expect(cli(['flow-set', '--name=x', '--target=tsc-none'], env).stdout).toBe("FAIL: Couldn't create load-balancer\n");
      await waitFor('the request-failed audit record', () => audit(lb).some((l) => l.msg === 'flow channel: request failed'));
      const warnings = audit(lb).filter((l) => l.level === 40);
      expect(warnings.length).toBeLessThanOrEqual(25);
      expect(warnings.at(-1)).toMatchObject({ msg: 'flow channel: request failed', reason: "Couldn't create load-balancer", flow: 'x' });
      // Every refusal is either logged or counted (with the next line let through, or on the 10 s flush).
      const logged = warnings.filter((l) => l.msg === 'flow channel: refused: wrong control key').length;
      const counted = warnings.reduce((n, l) => n + ((l.suppressed as number | undefined) ?? 0), 0);
      expect(counted).toBeGreaterThan(100);
      expect(logged + counted).toBe(200);
      // And the lb still serves root.
      expect(cli(['flow-list-names'], env).stdout).toBe('[]\n');
    } finally {
      await lb.stop();
    }
  });

  it('refuses a tcp address other hosts can reach unless --allow_remote', async () => {
    const flow = cli(['flowlb', '--queue=5', '--ft_shm=tsc-ft5'], { NFQLB_FLOW_ADDRESS: 'tcp:0.0.0.0:10033', NFQLB_CONTROL_KEY: KEY });
    expect(flow.status).toBe(1);
    expect(flow.stderr.trim().split('\n')).toEqual([
      'nfqlb flowlb: flow address tcp:0.0.0.0:10033 is not a loopback address: ' +
        'other hosts could reach it; pass --allow_remote to accept that',
    ]);
    const trace = cli(['lb', '--queue=5', `--tshm=${TABLE}`, '--ft_shm=tsc-ft5', '--trace_address=tcp:[::]:10034']);
    expect(trace.status).toBe(1);
    expect(trace.stderr.trim().split('\n')).toEqual([
      'nfqlb lb: --trace_address tcp:[::]:10034 is not a loopback address: other hosts could reach it; pass --allow_remote to accept that',
    ]);
    const lb = await start(['flowlb', '--queue=5', '--ft_shm=tsc-ft5', '--allow_remote'], { NFQLB_FLOW_ADDRESS: 'tcp:0.0.0.0:10033' });
    try {
      expect(cli(['flow-list-names'], { NFQLB_FLOW_ADDRESS: 'tcp:127.0.0.1:10033', NFQLB_CONTROL_KEY: KEY }).stdout).toBe('[]\n');
    } finally {
      await lb.stop();
    }
  });
});

describe('unix control channels', () => {
  it('admit root and refuse nobody on the flow and trace sockets, with uid and pid in the log', async () => {
    const lb = await start(['flowlb', '--queue=5', '--ft_shm=tsc-ft5']);
    try {
      const nobody = cli(['flow-set', '--name=evil', `--target=${TABLE}`], {}, 'nobody');
      expect(nobody.status).toBe(1);
      expect(nobody.stdout).toBe('');
      expect(nobody.stderr.trim()).toBe('nfqlb flow-set: unix:nfqlb refused the request: root only (the unix socket checks the peer)');
      expect(cli(['flow-list'], {}, 'nobody').status).toBe(1);
      expect(rawClient({ path: 'nfqlb-trace' }, '', 'nobody')).toEqual([
        '{"error":"refused: root only (the unix socket checks the peer)"}\n',
      ]);
      // Nor can nobody change the level or the mask: the shm is root's.
      const level = cli(['loglevel', '7'], {}, 'nobody');
      expect(level.status).toBe(1);
      expect(level.stderr).toMatch(/EACCES/);
      expect(cli(['trace', '--selection=packet'], {}, 'nobody').status).toBe(1);
      expect(config[MASK_WORD]).toBe(0);

      expect(cli(['flow-set', '--name=web', `--target=${TABLE}`]).stdout).toBe('OK\n');
      const other = savedLevel === 6 ? 7 : 6;
      expect(cli(['loglevel', String(other)]).stdout).toBe(`loglevel=${other}\n`);
      await waitFor('the log level audit record', () => audit(lb).some((l) => l.msg === 'log level changed'));
      cli(['loglevel', String(savedLevel)]);

      const records = audit(lb);
      const refusals = records.filter((l) => l.level === 40);
      expect(refusals.map((l) => [l.channel, (l.peer as { uid: number }).uid])).toEqual([
        ['flow', 65534],
        ['flow', 65534],
        ['trace', 65534],
      ]);
      expect((refusals[0]!.peer as { pid: number }).pid).toBeGreaterThan(1);
      const set = records.find((l) => l.msg === 'flow channel: set web')!;
      expect(set).toMatchObject({ level: 30, peer: { uid: 0 }, request: { target: TABLE } });
      expect(records.find((l) => l.msg === 'log level changed')).toMatchObject({
        level: 30,
        via: 'shm nfqlb-trace',
        loglevel: { from: savedLevel, to: other },
      });
    } finally {
      await lb.stop();
    }
  });
});

describe('shared memory tables', () => {
  it('nobody cannot change an xdplb or nfqlb table: one line, exit 1, bytes unchanged', () => {
    const XDP = 'tsc-xdp';
    runIn(NS, ['node', `${ROOT}bin/xdplb`, 'init', `--shm=${XDP}`]);
    try {
      for (const file of [XDP, TABLE]) {
        const before = readFileSync(`/dev/shm/${file}`);
        const argv =
          file === XDP ? [`${ROOT}bin/xdplb`, 'vip-add', '10.0.0.1', `--shm=${XDP}`] : [NFQLB, 'activate', '102', `--shm=${TABLE}`];
        const r = runIn(NS, ['node', ...argv], { user: 'nobody' });
        expect(r.status).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/: EACCES: permission denied, open '\/dev\/shm\/tsc-/)]);
        expect(readFileSync(`/dev/shm/${file}`).equals(before)).toBe(true);
      }
    } finally {
      rmSync(`/dev/shm/${XDP}`, { force: true });
    }
  });
});

describe('several lbs in one namespace', () => {
  it('run side by side; the second traces on its own address; a taken queue or address is named', async () => {
    const first = await start(['lb', '--queue=5', `--tshm=${TABLE}`, '--ft_shm=tsc-ft5']);
    const second = await start(['lb', '--queue=6', `--tshm=${TABLE}`, '--ft_shm=tsc-ft6']);
    const flow = await start(['flowlb', '--queue=7', '--ft_shm=tsc-ft7']);
    try {
      expect(first.output()).not.toMatch(/is taken/);
      expect(second.output()).toMatch(
        /unix:nfqlb-trace is taken by another lb in this network namespace: trace this one with --trace_address=unix:nfqlb-trace-6/,
      );
      expect(flow.output()).toMatch(
        /unix:nfqlb-trace and unix:nfqlb-trace-7 are taken|trace this one with --trace_address=unix:nfqlb-trace-7/,
      );
      const t = await startDaemon(
        spawnInNs(NS, ['node', NFQLB, 'trace', '--selection=log', '--trace_address=unix:nfqlb-trace-6']),
        'Trace active',
      );
      await t.stop('SIGINT');
      await waitFor('the trace-closed audit record', () => audit(second).some((l) => l.msg === 'trace closed'));
      expect(audit(second).map((l) => l.msg)).toEqual(['trace active', 'trace closed']);
      expect(audit(first)).toEqual([]);

      const taken = cli(['lb', '--queue=5', `--tshm=${TABLE}`, '--ft_shm=tsc-ft8']);
      expect(taken.status).toBe(1);
      expect(taken.stderr.trim().split('\n')).toEqual([
        expect.stringMatching(/^nfqlb lb: nfqueue 5: already bound by another netlink socket \(port id \d+\); one queue has one reader$/),
      ]);
      const flow2 = cli(['flowlb', '--queue=8', '--ft_shm=tsc-ft8']);
      expect(flow2.status).toBe(1);
      expect(flow2.stderr.trim().split('\n')).toEqual([
        'nfqlb flowlb: flow address unix:nfqlb is taken (another flowlb in this network namespace?): ' +
          'give each flowlb its own NFQLB_FLOW_ADDRESS, e.g. unix:nfqlb-2',
      ]);
      // With one worker per queue too: the workers are stopped and the lb exits.
      const flow3 = cli(['flowlb', '--queue=8:9', '--ft_shm=tsc-ft8']);
      expect(flow3.status).toBe(1);
      expect(flow3.stderr).toMatch(/^nfqlb flowlb: flow address unix:nfqlb is taken/);
      const trace = cli(['lb', '--queue=8', `--tshm=${TABLE}`, '--ft_shm=tsc-ft8', '--trace_address=unix:nfqlb-trace-6']);
      expect(trace.stderr.trim().split('\n')).toEqual([
        'nfqlb lb: --trace_address=unix:nfqlb-trace-6 is taken (another lb in this network namespace?)',
      ]);
      // All three still serve.
      expect(cli(['flow-list-names']).stdout).toBe('[]\n');
      for (const d of [first, second, flow]) expect(d.proc.exitCode).toBeNull();
    } finally {
      await Promise.all([first.stop(), second.stop(), flow.stop()]);
    }
  });
});
