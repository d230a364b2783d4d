// xdplb end to end on the lab network: tester → router vm-201 running `xdplb lb`
// (XDP on eth2, AF_XDP out on eth1) → servers vm-001..003 holding the VIPs on lo.
// Layer-2 DSR: the lb rewrites only the MAC addresses; the servers answer the tester
// straight from the VIP through the router's kernel forwarding (no XDP on that path).
// Real TCP connections over IPv4 and IPv6, in native and generic XDP mode.

import { type ChildProcess, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLIENT_CIDR, createTopology, destroyLab, type Family, routerAddr, serverMac, type Topology, VIP } from '../../src/lab/topology.js';
import { deleteShm } from '../../src/shm.js';
import { waitFor } from '../wait.js';
import { activateXdplbServers, type Daemon, httpGet, ROOT, Scrape, startXdplb, XDPLB } from './harness.js';

const PREFIX = 'tlbx-';
const SHM = 'tlbx-xdplb';
const SERVERS = [1, 2, 3];
const METRICS_PORT = 9111;

// A TCP server on port 5001 of every address: answers its name and closes.
const SERVER_JS = `
const name = process.argv[1];
require('net').createServer((s) => s.end(name)).listen({ port: 5001, host: '::' }, () => console.log('ready'));`;

// Makes `count` connections to [host]:5001, each from another source address of the
// AnyIP client range (so flows hash differently), and prints the answers as JSON
// (an error code instead of a name for a connection that failed).
const CLIENT_JS = `
const net = require('net');
const [host, prefix, count, timeout] = process.argv.slice(1);
(async () => {
  const out = [];
  for (let i = 1; i <= Number(count); i++) {
    out.push(await new Promise((resolve) => {
      const s = net.connect({ host, port: 5001, localAddress: prefix + i, timeout: Number(timeout) });
      let d = '';
      s.on('data', (x) => (d += x));
      s.on('end', () => resolve(d));
      s.on('error', (e) => resolve('error:' + e.code));
      s.on('timeout', () => { s.destroy(); resolve('timeout'); });
    }));
  }
  console.log(JSON.stringify(out));
})();`;

// ICMP echo with a raw socket (the lab has no ping binary): prints 'ok' on a reply.
const PING_PY = `
import socket, struct, sys
dst, v6 = sys.argv[1], ':' in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
s.settimeout(2)
body = struct.pack('!HH', 0x1234, 1) + b'tlbx'
hdr = struct.pack('!BBH', 128 if v6 else 8, 0, 0) + body
if not v6:
    c = sum(struct.unpack('!%dH' % (len(hdr) // 2), hdr)); c = (c >> 16) + (c & 0xffff); c += c >> 16
    hdr = hdr[:2] + struct.pack('!H', ~c & 0xffff) + hdr[4:]
s.sendto(hdr, (dst, 0))
while True:
    d = s.recv(2000)
    if not v6: d = d[(d[0] & 15) * 4:]
    if d[0] == (129 if v6 else 0) and d[4:] == body: print('ok'); break
`;

function clientPrefix(family: Family): string {
  return family === 4 ? CLIENT_CIDR[4].replace(/0\/16$/, '') : CLIENT_CIDR[6].replace(/\/112$/, '');
}

describe.each(['native', 'generic'] as const)('xdplb lb (%s XDP)', (mode) => {
  let topo: Topology;
  let lb: Daemon;
  const procs: ChildProcess[] = [];
  const router = (): string => topo.ns.router(1);
  const xdplb = (...args: string[]): string => topo.exec(router(), [process.execPath, XDPLB, ...args, `--shm=${SHM}`]);
  const connect = (family: Family, count: number, timeoutMs = 3000): string[] =>
    JSON.parse(
      topo.exec(topo.ns.tester, [process.execPath, '-e', CLIENT_JS, VIP[family], clientPrefix(family), String(count), String(timeoutMs)]),
    ) as string[];

  beforeAll(async () => {
    // The CLI runs from dist/: compile the current sources first.
    execFileSync(process.execPath, [`${ROOT}node_modules/typescript/bin/tsc`, '-p', `${ROOT}tsconfig.json`], { stdio: 'inherit' });
    destroyLab(PREFIX);
    topo = createTopology({ prefix: PREFIX, nvm: SERVERS.length, nrouters: 1 });
    for (const n of SERVERS) {
      const p = topo.spawn(topo.ns.server(n), [process.execPath, '-e', SERVER_JS, `vm-00${n}`]);
      procs.push(p);
      const first = await Promise.race([once(p.stdout!, 'data'), once(p, 'exit')]);
      expect(String(first[0])).toContain('ready');
    }
    activateXdplbServers(topo, xdplb, SERVERS);
    lb = await startXdplb(topo, router(), SHM, [`--mode=${mode}`, '--vip=10.0.0.0', '--vip=1000::', `--metrics=${METRICS_PORT}`], procs);
  });

  afterAll(() => {
    for (const p of procs) p.kill('SIGKILL');
    destroyLab(PREFIX);
    deleteShm(SHM);
  });

  test('the XDP program is attached to eth2 in the requested mode', () => {
    const link = topo.exec(router(), ['ip', '-d', 'link', 'show', 'eth2']);
    expect(link).toMatch(mode === 'native' ? /\bxdp\b|prog\/xdp/ : /xdpgeneric/);
    expect(link).toContain('xdplb_vip');
    expect(xdplb('vip-list')).toBe('10.0.0.0\n1000::\n');
  });

  test.each([4, 6] as Family[])('TCP connections to the VIP over IPv%i reach every server', (family) => {
    const answers = connect(family, 30);
    expect(
      answers.filter((a) => !a.startsWith('vm-')),
      answers.join(','),
    ).toEqual([]);
    expect(new Set(answers)).toEqual(new Set(SERVERS.map((n) => `vm-00${n}`)));
  });

  test('non-VIP traffic goes to the kernel: ping the lb over IPv4 and IPv6', () => {
    for (const family of [4, 6] as Family[]) {
      expect(topo.exec(topo.ns.tester, ['python3', '-c', PING_PY, routerAddr(1, 2, family)]).trim()).toBe('ok');
    }
  });

  test('a deactivated target gets no new connections; with none active VIP traffic is dropped', () => {
    xdplb('deactivate', '1');
    for (const family of [4, 6] as Family[]) {
      const answers = connect(family, 30);
      expect(
        answers.filter((a) => !a.startsWith('vm-')),
        answers.join(','),
      ).toEqual([]);
      expect(new Set(answers)).toEqual(new Set(['vm-001', 'vm-003']));
    }
    xdplb('deactivate', '0');
    xdplb('deactivate', '2');
    expect(connect(4, 2, 800)).toEqual(['timeout', 'timeout']);
    xdplb('activate', '1');
    expect(new Set(connect(6, 5))).toEqual(new Set(['vm-002']));
  });

  test('--metrics: every received frame is counted once, per target or per drop reason', () => {
    const r = httpGet(topo, router(), METRICS_PORT, '/metrics');
    expect(r.status).toBe(200);
    const s = new Scrape(r.body);
    const rx = s.sum('xdplb_packets_total', { direction: 'rx' });
    const perTarget = SERVERS.map((n) => s.sum('xdplb_target_packets_total', { target: String(n - 1) }));
    for (const n of perTarget) expect(n).toBeGreaterThan(0);
    const forwarded = perTarget.reduce((a, b) => a + b, 0);
    expect(forwarded).toBe(s.sum('xdplb_packets_total', { direction: 'tx' }) + s.sum('xdplb_drops_total', { reason: 'tx_ring_full' }));
    // The connections tried while no target was active: a SYN and its retries each.
    expect(s.sum('xdplb_drops_total', { reason: 'no_target' })).toBeGreaterThanOrEqual(2);
    const dropped = s.sum('xdplb_drops_total', { reason: 'no_target' }) + s.sum('xdplb_drops_total', { reason: 'parse_error' });
    expect(rx).toBe(forwarded + dropped);
    expect(s.series('process_resident_memory_bytes')).toHaveLength(1);
    expect(httpGet(topo, router(), METRICS_PORT, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
  });

  test('a VIP removed from the table goes to the kernel again', async () => {
    // The lb polls the table and logs the VIPs its program has after each change.
    const programVips = (vips: string[]) =>
      waitFor(`the lb's program to have VIPs ${vips.join(' ')}`, () => {
        const changes = lb
          .output()
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as { msg: string; vips: string[] })
          .filter((l) => l.msg === 'VIPs changed');
        return JSON.stringify([...(changes.at(-1)?.vips ?? [])].sort()) === JSON.stringify([...vips].sort());
      });
    xdplb('vip-delete', '10.0.0.0');
    await programVips(['1000::']);
    // The router has no route to the VIP: without xdplb the connection fails.
    expect(connect(4, 1, 800)[0]).not.toMatch(/^vm-/);
    expect(connect(6, 3).every((a) => a === 'vm-002')).toBe(true);
    xdplb('vip-add', '10.0.0.0');
    await programVips(['1000::', '10.0.0.0']);
    expect(connect(4, 3).every((a) => a === 'vm-002')).toBe(true);
  });

  test('follows a table that `xdplb init` re-created: traffic reaches a target only the new table has', async () => {
    // Another size is a new file: the running lb must switch to it, not keep forwarding by the
    // old, now unlinked, one (where only vm-002 is active and index 4 is free).
    xdplb('init', '--M=101', '--N=5');
    xdplb('activate', `--mac=${serverMac(topo, 3)}`, '4');
    xdplb('vip-add', '10.0.0.0', '1000::');
    const switched = () => lb.output().indexOf('table re-created by init: using the new one');
    await waitFor('the lb to switch to the new table', () => switched() >= 0);
    // The program's VIPs follow the new table's list: both again once the lb has synced after the switch.
    await waitFor('the lb to sync the VIPs of the new table', () =>
      lb
        .output()
        .slice(switched())
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string; vips?: string[] })
        .some((l) => l.msg === 'VIPs changed' && l.vips?.length === 2),
    );
    for (const family of [4, 6] as Family[]) {
      const answers = connect(family, 10);
      expect(answers, answers.join(',')).toEqual(new Array(10).fill('vm-003'));
    }
  });

  test('SIGTERM: the lb exits 0 and detaches the program', async () => {
    const out = await lb.stop('SIGTERM');
    expect(lb.proc.exitCode, out).toBe(0);
    expect(out).toContain('xdplb stopped');
    // The tester's veth sends partial checksums (tx offload on): the lb completed them.
    expect(out).toMatch(/"checksums":[1-9]/);
    expect(topo.exec(router(), ['ip', 'link', 'show', 'eth2'])).not.toContain('xdp');
  });
});
