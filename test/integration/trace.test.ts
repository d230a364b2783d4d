// nfqlb trace and loglevel against a running lb/flowlb: packets written into a tun device are
// queued to it; `nfqlb trace` streams their decisions while it runs and clears the mask when
// it leaves; trace flows select what the `flows` trace shows; `loglevel` changes a running
// lb's logging. The level and mask live in the shared `nfqlb-trace` (global, as the
// reference's), so the test restores the level it found.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, inNs, ipBatch, removeNs, spawnInNs } from '../../src/lab/netns.js';
import { openLogConfig } from '../../src/nfqlb/log-level.js';
import { LEVEL_WORD, MASK_WORD } from '../../src/nfqlb/tracer.js';
import { ipv4, ipv6 } from '../fixtures/packet-builder.js';
import { waitFor } from '../wait.js';
import { type Daemon, NFQLB, nfqlb, nfqlbIn, ROOT, type RunResult, requireBuild, startDaemon } from './harness.js';

const NS = 'ttr-trc';
const SHM = 'ttr-trace-t';
const FT_SHM = 'ttr-fttrace';
const procs: ChildProcess[] = [];
const config = openLogConfig();
let savedLevel = 5;

const run = (args: string[]): RunResult => nfqlbIn(NS, args);

function startLb(...args: string[]): Promise<Daemon> {
  const lb = spawnInNs(NS, ['node', NFQLB, ...args, `--ft_shm=${FT_SHM}`]);
  procs.push(lb);
  return startDaemon(lb);
}

/** `nfqlb trace` in the namespace, resolved once the lb accepted it. */
function startTrace(...args: string[]): Promise<Daemon> {
  const p = spawn('ip', ['netns', 'exec', NS, 'node', NFQLB, 'trace', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  return startDaemon(p, 'Trace active');
}

/** The fwmark `nfqlb fwmark` computes for a flow from the table the lb uses. */
function expectedFwmark(proto: string, src: string, dst: string): number {
  const out = nfqlb('fwmark', `--shm=${SHM}`, `--proto=${proto}`, `--src=${src}`, `--dst=${dst}`);
  return (JSON.parse(out) as { fwmark: number }).fwmark;
}

/** Writes packets into the namespace's tun device (they go to the queue). */
function send(packets: Uint8Array[]): void {
  const js = `import { Tun } from '${ROOT}dist/src/nfqlb/tun.js';
    const t = new Tun('ttrc');
    for (const p of JSON.parse(process.argv[1])) { const b = Buffer.from(p, 'base64'); t.write(b, 0, b.length); }`;
  inNs(NS, ['node', '--input-type=module', '-e', js, JSON.stringify(packets.map((p) => Buffer.from(p).toString('base64')))]);
}

const jsonLines = (text: string) =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

beforeAll(() => {
  requireBuild();
  savedLevel = config[LEVEL_WORD]!;
  removeNs(NS);
  addNs(NS);
  inNs(NS, [
    'sysctl',
    '-qw',
    'net.ipv4.ip_forward=1',
    'net.ipv4.conf.all.rp_filter=0',
    'net.ipv4.conf.default.rp_filter=0',
    'net.ipv6.conf.all.forwarding=1',
  ]);
  ipBatch(NS, ['tuntap add dev ttrc mode tun', 'link set ttrc up']);
  for (const [cmd, vip] of [
    ['iptables', '10.0.0.0/32'],
    ['ip6tables', '1000::/128'],
  ] as const) {
    inNs(NS, [cmd, '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    inNs(NS, [cmd, '-t', 'mangle', '-A', 'PREROUTING', '-d', vip, '-j', 'NFQUEUE', '--queue-num', '2']);
  }
  nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=4');
  nfqlb('activate', `--shm=${SHM}`, '101', '102');
});

afterAll(async () => {
  config[LEVEL_WORD] = savedLevel;
  config[MASK_WORD] = 0;
  for (const p of procs) p.kill('SIGKILL');
  removeNs(NS);
  for (const shm of [SHM, FT_SHM]) {
    try {
      nfqlb('delete', `--shm=${shm}`);
    } catch {
      /* never created */
    }
  }
});

describe('nfqlb trace', () => {
  it('streams packet and fragment decisions while it runs, and clears the mask when it leaves', async () => {
    const lb = await startLb('lb', `--tshm=${SHM}`);
    try {
      const t = await startTrace('--selection=packet,frag');
      expect(t.output()).toMatch(/^Mask=0x00000006\nTrace active, mask=0x00000006\n/);
      expect(config[MASK_WORD]).toBe(6);
      // Maglev sends these two flows to different targets of the table, so the fwmarks
      // show that the lb hashed each packet, not that it picked any active target.
      const fw4 = expectedFwmark('tcp', '50.0.0.1:1111', '10.0.0.0:80');
      const fw6 = expectedFwmark('udp', '[2000::1]:2223', '[1000::]:53');
      expect(new Set([fw4, fw6])).toEqual(new Set([101, 102]));
      send([
        ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).tcp({ sport: 1111, dport: 80 }).build(),
        ipv6({ src: '2000::1', dst: '1000::' }).udp({ sport: 2223, dport: 53 }).build(),
        ipv4({ src: '50.0.0.2', dst: '10.0.0.0', id: 9, mf: true }).udp({ sport: 3333, dport: 53 }).payload(64).build(),
      ]);
      await waitFor('the trace of the three packets', () => jsonLines(t.output()).length >= 3);
      const lines = jsonLines(await t.stop('SIGINT'));
      expect(lines).toHaveLength(3);
      expect(lines[0]).toMatchObject({ trace: 'packet', proto: 6, src: '50.0.0.1', dst: '10.0.0.0', sport: 1111, dport: 80, target: SHM });
      expect(lines[0]!.fwmark).toBe(fw4);
      expect(lines[1]).toMatchObject({ trace: 'packet', proto: 17, src: '2000::1', sport: 2223, fwmark: fw6 });
      expect(lines[2]).toMatchObject({ trace: 'frag', frag: { id: 9, offset: 0, more: true } });
      await waitFor('the lb to clear the mask after the trace client left', () => config[MASK_WORD] === 0);
    } finally {
      await lb.stop();
    }
  });

  it('takes --mask, refuses a second client and bad options with one line', async () => {
    const lb = await startLb('lb', `--tshm=${SHM}`);
    try {
      const t = await startTrace('--mask=0x2');
      const second = run(['trace', '--mask=2']);
      expect(second.status).toBe(1);
      expect(second.stderr).toMatch(/^nfqlb trace: unix:nfqlb-trace: another trace client is connected\n$/);
      await t.stop('SIGINT');
    } finally {
      await lb.stop();
    }
    for (const args of [
      ['trace'],
      ['trace', '--mask=1', '--selection=log'],
      ['trace', '--selection=bogus'],
      ['trace', '--mask=0x1ffffffff'],
    ]) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
    const noServer = run(['trace', '--selection=packet']);
    expect(noServer.status).toBe(1);
    expect(noServer.stderr).toMatch(/Trace client connect to unix:nfqlb-trace/);
  });

  it('shows the flows trace for packets a trace flow takes (flowlb)', async () => {
    const lb = await startLb('flowlb');
    try {
      expect(run(['flow-set', '--name=all', `--target=${SHM}`]).stdout).toBe('OK\n');
      expect(run(['trace-flow-set', '--name=dns', '--protocols=udp', '--dports=53']).stdout).toBe('OK\n');
      expect(JSON.parse(run(['trace-flow-list-names']).stdout)).toEqual(['dns']);
      expect(JSON.parse(run(['trace-flow-list']).stdout)).toMatchObject([{ name: 'dns', protocols: ['udp'], dports: ['53'] }]);
      const t = await startTrace('--selection=flows,flow-conf');
      expect(run(['flow-list-names']).status).toBe(0); // a flow-conf event
      // The queue takes packets in order: once the last one (dport 53 again) is traced, the
      // one to port 54 before it was handled and not traced.
      send([
        ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: 4444, dport: 53 }).build(),
        ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: 4444, dport: 54 }).build(),
        ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: 4445, dport: 53 }).build(),
      ]);
      await waitFor('the flows trace of the last packet', () => jsonLines(t.output()).some((l) => l.trace === 'flows' && l.sport === 4445));
      const lines = jsonLines(await t.stop('SIGINT'));
      expect(lines.filter((l) => l.trace === 'flow-conf')).toHaveLength(1);
      const flows = lines.filter((l) => l.trace === 'flows');
      expect(flows.map((l) => [l.sport, l.dport])).toEqual([
        [4444, 53],
        [4445, 53],
      ]);
      expect(flows[0]).toMatchObject({ traceFlow: 'dns', dport: 53, target: 'all' });
      expect(run(['trace-flow-delete', '--name=dns']).stdout).toBe('OK\n');
      expect(JSON.parse(run(['trace-flow-list-names']).stdout)).toEqual([]);
    } finally {
      await lb.stop();
    }
  });
});

describe('nfqlb loglevel', () => {
  it('prints and sets the shared level; a running lb follows it', async () => {
    expect(nfqlb('loglevel')).toBe(`loglevel=${savedLevel}\n`);
    expect(nfqlb('loglevel', '7')).toBe('loglevel=7\n');
    expect(() => execFileSync('node', [NFQLB, 'loglevel', '9'], { stdio: 'pipe' })).toThrow();
    nfqlb('loglevel', '5');
    // At notice level the lb writes its closing record (info) ...
    const notice = await startLb('lb', `--tshm=${SHM}`);
    expect(await notice.stop()).toMatch(/queue closed/);
    // ... at warning level it does not. The lb polls the level and audits the change (the audit
    // log keeps info) in the same step as it applies it: once that line is out, it is warning.
    const lb = await startLb('lb', `--tshm=${SHM}`);
    nfqlb('loglevel', '4');
    await waitFor('the lb to follow loglevel 4', () =>
      jsonLines(lb.output()).some((l) => l.msg === 'log level changed' && (l.loglevel as { to?: number } | undefined)?.to === 4),
    );
    expect(await lb.stop()).not.toMatch(/queue closed/);
    nfqlb('loglevel', String(savedLevel));
  });
});
