// The lab network on namespaces: addressing, DSR reachability of the VIP over TCP (v4, v6),
// ECMP on the tester, offloads/MTU, and that nothing is left (nor touched in root) afterwards.

import { type ChildProcess, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { run } from '../../src/lab/netns.js';
import {
  CLIENT_CIDR,
  createTopology,
  destroyLab,
  type Family,
  labNamespaces,
  routerAddr,
  serverAddr,
  type Topology,
  VIP,
} from '../../src/lab/topology.js';

const PREFIX = 'tlbt-';

// Every command the lab runs goes through execFileSync (src/lab/netns.ts): counted, see below.
vi.mock('node:child_process', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:child_process')>();
  return { ...real, execFileSync: vi.fn(real.execFileSync) };
});

// A one-shot TCP server on the VIP's port 5001: answers "<name> <client address>".
const SERVER_JS = `
const name = process.argv[1];
const srv = require('net').createServer((s) => s.end(name + ' ' + s.remoteAddress));
srv.listen({ port: 5001, host: '::' }, () => console.log('ready'));`;

// Connects to [addr]:5001 from source `src` and prints the answer.
const CLIENT_JS = `
const [host, localAddress] = process.argv.slice(1);
const s = require('net').connect({ host, port: 5001, localAddress, timeout: 3000 });
let out = '';
s.on('data', (d) => (out += d));
s.on('end', () => console.log(out));
s.on('timeout', () => { console.error('timeout'); process.exit(2); });`;

/** Root namespace state that the lab must never change. */
function rootState(): string {
  return ['link', 'addr', 'route', '-6 route', 'rule']
    .map((what) => run(['ip', ...what.split(' ')]).replace(/\s+(valid|preferred)_lft.*$/gm, ''))
    .join('\n');
}

async function startServer(topo: Topology, ns: string, name: string): Promise<ChildProcess> {
  const p = topo.spawn(ns, [process.execPath, '-e', SERVER_JS, name]);
  // Fail fast (not at the test timeout) when the server dies instead of listening.
  const first = await Promise.race([once(p.stdout!, 'data'), once(p, 'exit')]);
  expect(String(first[0])).toContain('ready');
  return p;
}

describe('topology', () => {
  let topo: Topology;
  let root: string;
  let createExecs = 0;
  const procs: ChildProcess[] = [];

  beforeAll(() => {
    destroyLab(PREFIX);
    root = rootState();
    vi.mocked(execFileSync).mockClear();
    const t0 = performance.now();
    topo = createTopology({ prefix: PREFIX, nvm: 3, nrouters: 2 });
    createExecs = vi.mocked(execFileSync).mock.calls.length;
    console.log(`createTopology: ${createExecs} commands for 8 namespaces, ${Math.round(performance.now() - t0)} ms`);
  });
  afterAll(() => {
    for (const p of procs)
      if (p.pid !== undefined)
        try {
          process.kill(p.pid);
        } catch {
          /* gone */
        }
    destroyLab(PREFIX);
  });

  test('creates every namespace, with the lab prefix, quickly', () => {
    const expected = ['vm-001', 'vm-002', 'vm-003', 'vm-201', 'vm-202', 'vm-221', 'net1', 'net2'].map((n) => PREFIX + n);
    expect(labNamespaces(PREFIX).sort()).toEqual(expected.sort());
    expect(topo.ns.all().sort()).toEqual(expected.sort());
    // Quick means batched: an exec costs milliseconds (more on a busy machine), so the lab runs a
    // few per namespace (one `ip -batch` each), not one per device, address and route (over 80 here).
    // Counted, not timed: the count does not depend on the machine's load.
    expect(createExecs).toBeLessThanOrEqual(3 * expected.length);
  });

  test('servers hold the VIPs on lo and route to router 1', () => {
    const s = topo.ns.server(2);
    expect(topo.exec(s, ['ip', '-o', 'addr', 'show', 'dev', 'lo'])).toMatch(/inet 10\.0\.0\.0\/32[\s\S]*inet6 1000::\/128/);
    expect(topo.exec(s, ['ip', '-o', 'addr', 'show', 'dev', 'eth1'])).toMatch(/192\.168\.1\.2\/24[\s\S]*1000::1:c0a8:102\/120/);
    expect(topo.exec(s, ['ip', 'route', 'show', 'default'])).toContain('via 192.168.1.201');
    expect(topo.exec(s, ['ip', '-6', 'route', 'show', 'default'])).toContain('via 1000::1:c0a8:1c9');
    expect(topo.exec(s, ['sysctl', '-n', 'net.ipv4.conf.all.rp_filter', 'net.ipv4.conf.eth1.rp_filter'])).toBe('0\n0\n');
  });

  test('routers forward, route clients back to the tester and have no VIP route', () => {
    const r = topo.ns.router(2);
    expect(topo.exec(r, ['sysctl', '-n', 'net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding'])).toBe('1\n1\n');
    expect(topo.exec(r, ['ip', 'route', 'show', CLIENT_CIDR[4]])).toContain('via 192.168.2.221');
    expect(topo.exec(r, ['ip', '-6', 'route', 'show', CLIENT_CIDR[6]])).toContain('via 1000::1:c0a8:2dd');
    expect(topo.exec(r, ['ip', 'route', 'show', '10.0.0.0/24'])).toBe('');
    expect(topo.exec(r, ['ip', '-o', 'addr', 'show', 'dev', 'eth2'])).toContain('192.168.2.202/24');
  });

  test('tester has AnyIP client ranges and a VIP route via router 1', () => {
    const t = topo.ns.tester;
    expect(topo.exec(t, ['ip', 'route', 'show', 'table', 'local', CLIENT_CIDR[4]])).toContain('local 50.0.0.0/16 dev lo');
    expect(topo.exec(t, ['ip', '-6', 'route', 'show', 'table', 'local', CLIENT_CIDR[6]])).toContain('local 2000::/112 dev lo');
    expect(topo.exec(t, ['ip', 'route', 'show', '10.0.0.0/24'])).toContain('via 192.168.2.201');
  });

  test.each([4, 6] as Family[])('tester reaches the VIP over TCP/IPv%i through router 1 (DSR)', async (family) => {
    if (procs.length === 0) {
      topo.setRouterVipRoute(1, [1]);
      procs.push(await startServer(topo, topo.ns.server(1), 'vm-001'));
    }
    const src = family === 4 ? '50.0.0.7' : '2000::7';
    const out = topo.exec(topo.ns.tester, [process.execPath, '-e', CLIENT_JS, VIP[family], src]);
    // The server saw the client's own address: routed, not NATed, and the reply came back.
    expect(out.trim()).toBe(`vm-001 ${family === 4 ? '::ffff:50.0.0.7' : '2000::7'}`);
  });

  test('ECMP routes: tester over routers, router over servers', () => {
    topo.setTesterRoute([1, 2]);
    const v4 = topo.exec(topo.ns.tester, ['ip', 'route', 'show', '10.0.0.0/24']);
    expect(v4).toContain(`nexthop via ${routerAddr(1, 2, 4)}`);
    expect(v4).toContain(`nexthop via ${routerAddr(2, 2, 4)}`);
    expect(topo.exec(topo.ns.tester, ['ip', '-6', 'route', 'show', '1000::/120']).match(/nexthop via/g)).toHaveLength(2);
    topo.setTesterRoute([2]);
    expect(topo.exec(topo.ns.tester, ['ip', 'route', 'show', '10.0.0.0/24'])).toContain(`via ${routerAddr(2, 2, 4)}`);

    const r = topo.ns.router(1);
    topo.setRouterVipRoute(1, [1, 2, 3]);
    const rv4 = topo.exec(r, ['ip', 'route', 'show', '10.0.0.0/24']);
    for (const n of [1, 2, 3]) expect(rv4).toContain(`nexthop via ${serverAddr(n, 4)}`);
    expect(topo.exec(r, ['ip', '-6', 'route', 'show', '1000::/120']).match(/nexthop via/g)).toHaveLength(3);
    topo.setRouterVipRoute(1, []);
    expect(topo.exec(r, ['ip', 'route', 'show', '10.0.0.0/24'])).toBe('');
    topo.setTesterRoute([1]);
  });

  test('offloads can be turned off and on on both ends of the veths', () => {
    const tso = (ns: string, dev: string): string =>
      /tcp-segmentation-offload: (\w+)/.exec(topo.exec(ns, ['ethtool', '-k', dev]))?.[1] ?? '?';
    topo.setOffloads(false);
    expect(tso(topo.ns.router(1), 'eth2')).toBe('off');
    expect(tso(topo.ns.net(1), `${PREFIX}vm001`)).toBe('off');
    topo.setOffloads(true);
    expect(tso(topo.ns.router(1), 'eth2')).toBe('on');
  });

  test('destroy leaves nothing and the root namespace was never touched', () => {
    topo.destroy();
    expect(labNamespaces(PREFIX)).toEqual([]);
    expect(rootState()).toBe(root);
  });

  test('mtu and offloads options; destroyLab cleans up after a "crash" (no Topology object)', () => {
    const t = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1, mtu: 1400, offloads: false });
    expect(t.exec(t.ns.server(1), ['ip', '-o', 'link', 'show', 'eth1'])).toContain('mtu 1400');
    expect(t.exec(t.ns.net(1), ['ip', '-o', 'link', 'show', `${PREFIX}br`])).toContain('mtu 1400');
    expect(t.exec(t.ns.tester, ['ethtool', '-k', 'eth1'])).toContain('generic-receive-offload: off');
    const sleeper = t.spawn(t.ns.router(1), ['sleep', '60']);
    destroyLab(PREFIX);
    expect(labNamespaces(PREFIX)).toEqual([]);
    expect(sleeper.pid !== undefined && isAlive(sleeper.pid)).toBe(false);
    expect(rootState()).toBe(root);
  });

  test('bad options are refused before anything is created', () => {
    expect(() => createTopology({ prefix: 'x', nvm: 1, nrouters: 1 })).toThrow(/prefix/);
    expect(() => createTopology({ prefix: PREFIX, nvm: 0, nrouters: 1 })).toThrow(/nvm/);
    expect(() => createTopology({ prefix: PREFIX, nvm: 1, nrouters: 21 })).toThrow(/nrouters/);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });
});

function isAlive(pid: number): boolean {
  // `ip netns exec` is the spawned process; after a SIGKILL it is a zombie until reaped,
  // so read its state rather than probing with kill(0).
  try {
    const stat = run(['cat', `/proc/${pid}/stat`]);
    return !/^\d+ \([^)]*\) Z/.test(stat);
  } catch {
    return false;
  }
}
