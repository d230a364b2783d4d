// Path MTU discovery through nfqlb, for real: clients sit behind a link with a smaller MTU
// (1300) than the servers' path (1500). A server's full-size DSR segments make the last router
// (the tester) send "fragmentation needed" / "packet too big" back to the VIP, so they arrive at
// the load-balancer like any VIP packet. Only the server that owns the connection can act on
// it; nfqlb must hash the error on its quoted header, swapped. With 4 servers, a wrong choice
// stalls the transfer (no PMTU blackhole detection), so every download must complete, and the
// lb's packet trace must show each error marked for the server that sent the data, and every
// server that served a download named by some error.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs } from '../../src/lab/netns.js';
import { createTopology, type Family, type Topology, testerAddr, VIP, vmName } from '../../src/lab/topology.js';
import { activateServers, type Daemon, NFQLB, nfqlb, nfqueueRouter, requireBuild, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'tpm-';
const CLIENT = 'tpm-client';
const SHM = 'tpm-pmtu';
const FT_SHM = 'tpm-ftpmtu';
const NVM = 4;
const PORT = 5010;
const BYTES = 300_000;
const CLIENT_ADDR = { 4: '60.0.0.2', 6: '3000::2' } as const;

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

// On every server: each connection gets "<name>\n" and then BYTES bytes.
const SERVER_JS = `
import { createServer } from 'node:net';
const name = process.argv[1];
createServer((c) => { c.on('error', () => {}); c.write(name + '\\n'); c.end(Buffer.alloc(${BYTES}, 120)); })
  .listen({ host: '::', port: ${PORT}, ipv6Only: false });`;

// On the client: n parallel downloads; prints [{ port, server, bytes }] (bytes -1 on timeout).
const CLIENT_JS = `
import { connect } from 'node:net';
const [host, n] = [process.argv[1], Number(process.argv[2])];
const one = () => new Promise((resolve) => {
  const c = connect({ host, port: ${PORT} });
  let data = '';
  let port = 0;
  const timer = setTimeout(() => { c.destroy(); resolve({ port, server: data.split('\\n')[0], bytes: -1 }); }, 8000);
  c.setEncoding('latin1');
  c.on('connect', () => (port = c.localPort));
  c.on('data', (d) => (data += d));
  c.on('error', () => {});
  c.on('close', () => {
    clearTimeout(timer);
    const nl = data.indexOf('\\n');
    resolve({ port, server: data.slice(0, nl), bytes: data.length - nl - 1 });
  });
});
console.log(JSON.stringify(await Promise.all(Array.from({ length: n }, one))));`;

interface Download {
  port: number;
  server: string;
  bytes: number;
}

function download(family: Family, n: number): Download[] {
  const r = spawnSync('ip', ['netns', 'exec', CLIENT, 'node', '--input-type=module', '-e', CLIENT_JS, VIP[family], String(n)], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`client failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Download[];
}

beforeAll(() => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: 1 });
  router = topo.ns.router(1);
  for (let n = 1; n <= NVM; n++) {
    procs.push(topo.spawn(topo.ns.server(n), ['node', '--input-type=module', '-e', SERVER_JS, vmName(n)]));
  }
  // The client behind the tester: the tester's side of the link has MTU 1300, so the tester
  // cannot forward the servers' 1500-byte packets to it and answers with ICMP.
  addNs(CLIENT);
  topo.ip(topo.ns.tester, [
    `link add tc0 mtu 1300 type veth peer name eth0 netns ${CLIENT}`,
    'link set tc0 up',
    'addr add 60.0.0.1/24 dev tc0',
    'addr add 3000::1/64 dev tc0 nodad',
  ]);
  topo.ip(CLIENT, [
    'link set eth0 up',
    `addr add ${CLIENT_ADDR[4]}/24 dev eth0`,
    `addr add ${CLIENT_ADDR[6]}/64 dev eth0 nodad`,
    'route add default via 60.0.0.1',
    'route add default via 3000::1',
  ]);
  // No ICMP rate limit: every error counts, and all of them go to the same destination (the VIP).
  topo.exec(topo.ns.tester, [
    'sysctl',
    '-qw',
    'net.ipv4.ip_forward=1',
    'net.ipv6.conf.all.forwarding=1',
    'net.ipv4.icmp_ratelimit=0',
    'net.ipv6.icmp.ratelimit=0',
  ]);
  topo.ip(router, [`route add 60.0.0.0/24 via ${testerAddr(4)}`, `route add 3000::/64 via ${testerAddr(6)}`]);
  nfqueueRouter(topo, router, NVM);
  nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=10');
  activateServers(SHM, NVM);
});

afterAll(() => {
  // Also removes the client namespace: it has the lab prefix.
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
});

function startLb(): Promise<Daemon> {
  const lb = topo.spawn(router, ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`]);
  procs.push(lb);
  return startDaemon(lb);
}

/** `nfqlb trace --selection=packet` in the router, once active: the lb's decisions as JSON lines. */
function startTrace(): Promise<Daemon> {
  const t = topo.spawn(router, ['node', NFQLB, 'trace', '--selection=packet']);
  procs.push(t);
  return startDaemon(t, 'Trace active');
}

const traceLines = (out: string) =>
  out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe.each([4, 6] as const)('PMTU discovery through nfqlb, IPv%i', (family) => {
  it('delivers the ICMP error to the server that owns the connection', async () => {
    const lb = await startLb();
    const trace = await startTrace();
    try {
      const downloads = download(family, 8);
      for (const d of downloads) expect(d, `download from port ${d.port}`).toMatchObject({ bytes: BYTES });
      expect(new Set(downloads.map((d) => d.server)).size).toBeGreaterThan(1);
      // Its output was not read while spawnSync blocked our event loop: let it drain first.
      const errors = traceLines(await trace.stop('SIGINT')).filter((l) => (l.icmp as { inner?: boolean } | undefined)?.inner === true);
      const serverOfPort = new Map(downloads.map((d) => [d.port, d.server]));
      for (const e of errors) {
        // The error's key is the quoted packet's, swapped: the client's side of the connection.
        expect(e.icmp).toMatchObject({ type: family === 4 ? 3 : 2, inner: true });
        expect(e.src).toBe(CLIENT_ADDR[family]);
        expect(e.dport).toBe(PORT);
        expect(vmName((e.fwmark as number) - 100)).toBe(serverOfPort.get(e.sport as number));
      }
      // Not one error per download: the tester answers each oversized packet, and a server then
      // caches the PMTU for the client, so its later connections may send none. But each server
      // (a namespace: a route cache of its own, cold in this test as the other family's is
      // another) sends full-size segments at first: every server that served is named by an error.
      const named = new Set(errors.map((e) => vmName((e.fwmark as number) - 100)));
      expect([...named].sort()).toEqual([...new Set(serverOfPort.values())].sort());
    } finally {
      await trace.stop('SIGINT');
      await lb.stop();
    }
  });
});
