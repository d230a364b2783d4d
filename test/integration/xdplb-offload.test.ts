// `xdplb lb --offload` on the lab network: tester → router vm-201 (xdplb_forward on eth2,
// redirecting to eth1 in the kernel) → servers vm-001..003 holding the VIPs (L2 DSR). TCP never
// reaches the AF_XDP socket; fragments still do; a deactivated target costs only the
// connections whose lookup entry changed; nothing stays attached after SIGKILL.
//
// The tester's veth sends with checksum offload off (a partial checksum would be declined to
// the socket, which completes it), and the switch port behind the router's eth1 has GRO on:
// native XDP redirect into a veth needs NAPI on its peer (docs/offload.md).

import { type ChildProcess, execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createTopology, destroyLab, type Family, type Topology, VIP } from '../../src/lab/topology.js';
import { ECHO_PORT } from '../../src/lab/traffic/server.js';
import { deleteShm } from '../../src/shm.js';
import { TargetStore } from '../../src/target-store.js';
import { FrameForwarder } from '../../src/xdp/forwarder.js';
import { formatMac, parseMac, XDPLB_TABLE } from '../../src/xdp/table.js';
import { VERDICT_TX } from '../../src/xdp/xsk.js';
import { eth } from '../fixtures/offload-cases.js';
import { ipv4, ipv6 } from '../fixtures/packet-builder.js';
import { waitFor } from '../wait.js';
import {
  activateXdplbServers,
  type Daemon,
  httpGet,
  mconnect,
  ROOT,
  Scrape,
  sources,
  startServers,
  startUdpServers,
  startXdplb,
  udpRoundTrips,
  XDPLB,
} from './harness.js';

const PREFIX = 'txo-';
const SHM = 'txo-xdplb';
const SERVERS = [1, 2, 3];
const METRICS_PORT = 9112;

// Opens connections to [vip]:5003 from the given sources and prints, as JSON, each one's source
// port and greeting (the server's name); then, for every line on stdin, writes to each open
// connection and prints which got their echo back within a second.
const HOLDER_JS = `
const net = require('net');
const [vip, ...srcs] = process.argv.slice(1);
const conns = [];
(async () => {
  for (const src of srcs) {
    conns.push(await new Promise((resolve) => {
      const s = net.connect({ host: vip, port: ${ECHO_PORT}, localAddress: src });
      const c = { s, src, data: '', dead: false };
      s.on('data', (d) => (c.data += d));
      s.on('error', () => (c.dead = true));
      s.on('close', () => (c.dead = true));
      s.once('data', () => resolve(c));
    }));
  }
  console.log(JSON.stringify(conns.map((c) => ({ src: c.src, sport: c.s.localPort, server: c.data.trim() }))));
  require('readline').createInterface({ input: process.stdin }).on('line', async () => {
    const alive = await Promise.all(conns.map((c) => new Promise((resolve) => {
      if (c.dead) return resolve(false);
      const before = c.data.length;
      c.s.write('ping\\n');
      const t = setInterval(() => {
        if (c.data.length > before) { clearInterval(t); resolve(true); }
        else if (c.dead) { clearInterval(t); resolve(false); }
      }, 10);
      setTimeout(() => { clearInterval(t); resolve(c.data.length > before); }, 1000);
    })));
    console.log(JSON.stringify(alive));
  });
})();`;

describe('xdplb lb --offload', () => {
  let topo: Topology;
  let lb: Daemon;
  const procs: ChildProcess[] = [];
  const macs = new Map<string, string>();
  const router = (): string => topo.ns.router(1);
  const xdplb = (...args: string[]): string => topo.exec(router(), [process.execPath, XDPLB, ...args, `--shm=${SHM}`]);
  const scrape = (): Scrape => new Scrape(httpGet(topo, router(), METRICS_PORT, '/metrics').body);
  const published = (): number =>
    lb
      .output()
      .split('\n')
      .filter((l) => l.includes('"xdplb table published"')).length;

  beforeAll(async () => {
    execFileSync(process.execPath, [`${ROOT}node_modules/typescript/bin/tsc`, '-p', `${ROOT}tsconfig.json`], { stdio: 'inherit' });
    destroyLab(PREFIX);
    topo = createTopology({ prefix: PREFIX, nvm: SERVERS.length, nrouters: 1, offloads: false });
    topo.enableXdpRedirect(1);
    procs.push(...startServers(topo, SERVERS.length), ...startUdpServers(topo, SERVERS.length));
    for (const [k, mac] of activateXdplbServers(topo, xdplb, SERVERS).entries()) macs.set(formatMac(parseMac(mac)), `vm-00${SERVERS[k]}`);
    lb = await startXdplb(topo, router(), SHM, ['--offload', '--vip=10.0.0.0', '--vip=1000::', `--metrics=${METRICS_PORT}`], procs);
    // The servers listen: connections would otherwise fail for another reason than the lb.
    await waitFor('the servers to listen', () => SERVERS.every((n) => topo.exec(topo.ns.server(n), ['ss', '-Htln']).includes(':5003')));
  });

  afterAll(() => {
    for (const p of procs) p.kill('SIGKILL');
    destroyLab(PREFIX);
    deleteShm(SHM);
  });

  test('xdplb_forward is attached natively to eth2', () => {
    const link = topo.exec(router(), ['ip', '-d', 'link', 'show', 'eth2']);
    expect(link).toMatch(/prog\/xdp id \d+ name xdplb_forward/);
    expect(link).not.toContain('xdpgeneric');
    expect(lb.output()).toMatch(/"mode":"native","offload":true/);
  });

  test('30 TCP connections over IPv4 and IPv6 reach all 3 servers; no VIP frame reaches the AF_XDP socket', () => {
    for (const family of [4, 6] as Family[]) {
      const r = mconnect(topo, family, { nconn: 30 });
      expect(r, JSON.stringify(r)).toMatchObject({ connections: 30, failed_connects: 0, failed_reads: 0 });
      expect(Object.keys(r.hosts).sort()).toEqual(['vm-001', 'vm-002', 'vm-003']);
    }
    const s = scrape();
    const forwarded = s.sum('xdplb_offload_packets_total', { verdict: 'forwarded' });
    // SYN, ACK, FIN, ACK at least, for each of 60 connections.
    expect(forwarded).toBeGreaterThanOrEqual(60 * 4);
    expect(s.sum('xdplb_offload_packets_total', { verdict: 'declined' })).toBe(0);
    // rx counts the socket's frames and the program's: all were the program's.
    expect(s.sum('xdplb_packets_total', { direction: 'rx' })).toBe(forwarded);
    const perTarget = SERVERS.map((n) => s.sum('xdplb_target_packets_total', { target: String(n - 1) }));
    expect(perTarget.every((n) => n > 0)).toBe(true);
    expect(perTarget.reduce((a, b) => a + b, 0)).toBe(forwarded);
    console.log(`xdplb --offload: ${forwarded} frames forwarded in the kernel, per target ${perTarget.join('/')}, 0 to the socket`);
  });

  test('UDP fragments are declined to the socket and still reach one server whole', () => {
    const before = scrape().sum('xdplb_offload_packets_total', { verdict: 'declined' });
    const jobs = [4, 6].flatMap((family) =>
      sources(family as Family, 3, 7).map((src, i) => ({ src, sport: 7000 + i, family: family as Family })),
    );
    const answers = udpRoundTrips(topo, jobs);
    for (const j of jobs) expect(answers[j.src], j.src).toMatch(/^vm-00[123] 3000$/);
    const s = scrape();
    // 3000 bytes in 1500-byte frames: 3 fragments per datagram.
    expect(s.sum('xdplb_offload_packets_total', { verdict: 'declined' }) - before).toBeGreaterThanOrEqual(jobs.length * 3);
    expect(s.sum('xdplb_drops_total', { reason: 'no_target' })).toBe(0);
  });

  test('deactivating a target loses only the connections whose lookup entry changed, within 100 ms', async () => {
    const srcs = [...sources(4, 15, 9), ...sources(6, 15, 9)];
    const holders = [4, 6].map((family) => {
      const argv = [process.execPath, '-e', HOLDER_JS, VIP[family as Family], ...srcs.filter((s) => s.includes(':') === (family === 6))];
      const p = topo.spawn(topo.ns.tester, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
      procs.push(p);
      let out = '';
      p.stdout!.on('data', (d) => (out += String(d)));
      return { p, lines: () => out.split('\n').filter((l) => l !== '') };
    });
    await waitFor('the connections to open', () => holders.every((h) => h.lines().length >= 1));
    const conns = holders.flatMap((h) => JSON.parse(h.lines()[0]!) as { src: string; sport: number; server: string }[]);
    expect(new Set(conns.map((c) => c.server))).toEqual(new Set(['vm-001', 'vm-002', 'vm-003']));

    // Written here, as `xdplb deactivate 1` would, to time it from the write.
    const table = TargetStore.open(XDPLB_TABLE, SHM, true).table;
    const before = published();
    const deactivated = Date.now();
    table.deactivate(1);
    await waitFor('the new table to be published', () => published() > before);
    const line = lb
      .output()
      .split('\n')
      .filter((l) => l.includes('"xdplb table published"'))
      .at(-1)!;
    const delay = (JSON.parse(line) as { time: number }).time - deactivated;
    expect(delay).toBeLessThan(100);

    // Where each connection goes now, by the TypeScript forwarder over the same table.
    const umem = new Uint8Array(4096);
    const fw = new FrameForwarder(umem, table, new Uint8Array(6));
    const serverNow = (c: { src: string; sport: number }): string => {
      const b = c.src.includes(':') ? ipv6({ src: c.src, dst: VIP[6] }) : ipv4({ src: c.src, dst: VIP[4] });
      const frame = eth(b.tcp({ sport: c.sport, dport: ECHO_PORT }).build());
      umem.set(frame);
      expect(fw.forward(0, frame.length)).toBe(VERDICT_TX);
      return macs.get(formatMac(umem))!;
    };
    const kept = conns.map((c) => serverNow(c) === c.server);
    for (const h of holders) h.p.stdin!.write('probe\n');
    await waitFor('the probes', () => holders.every((h) => h.lines().length >= 2));
    const alive = holders.flatMap((h) => JSON.parse(h.lines()[1]!) as boolean[]);
    expect(alive).toEqual(kept);
    const lost = kept.filter((k) => !k).length;
    const onRemoved = conns.filter((c) => c.server === 'vm-002').length;
    expect(lost).toBeGreaterThanOrEqual(onRemoved);
    expect(lost).toBeLessThan(conns.length);
    console.log(`churn: ${lost} of ${conns.length} connections lost (${onRemoved} were on vm-002); published ${delay} ms after deactivate`);
    for (const h of holders) h.p.kill('SIGKILL');
  });

  test('SIGKILL: nothing stays attached to eth2', async () => {
    await lb.stop('SIGKILL');
    await waitFor('the link to go', () => !topo.exec(router(), ['ip', 'link', 'show', 'eth2']).includes('xdp'));
  });
});
