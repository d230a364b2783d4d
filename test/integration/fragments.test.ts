// Fragmented UDP through nfqlb in the kernel: 3000-byte datagrams over MTU 1500, IPv4 and IPv6,
// conntrack off in the LB namespaces (so the LB sees every fragment). Every datagram must reach
// the one server its first fragment (the 5-tuple) hashes to, whole: the server reassembles it
// and answers with its name. In order (the tester's kernel fragments), reordered (the tester
// writes hand-made fragments, last first, into a tun device), and through an LB tier where
// router 1 forwards the fragments router 2 owns by address (--lbshm, own fwmark).

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopology, type Family, routerAddr, serverAddr, type Topology, VIP } from '../../src/lab/topology.js';
import { fragmentPacket, ipv4, ipv6 } from '../fixtures/packet-builder.js';
import {
  activateServers,
  type Daemon,
  type UdpJob as Job,
  NFQLB,
  nfqlb,
  requireBuild,
  sources,
  startDaemon,
  startUdpServers,
  tearDownLab,
  UDP_PORT,
  udpRoundTrips,
} from './harness.js';

const PREFIX = 'tfr-';
const SHM = 'tfr-targets';
const NVM = 4;
const PORT = UDP_PORT;

let topo: Topology;
const procs: ChildProcess[] = [];

function startLb(router: number, ...args: string[]): Promise<Daemon> {
  const lb = topo.spawn(topo.ns.router(router), ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=tfr-ft${router}`, ...args]);
  procs.push(lb);
  return startDaemon(lb);
}

/** Stops an lb and returns its last log line's counters (the "queue closed" record). */
async function stopLb(lb: Daemon): Promise<Record<string, number>> {
  const closed = (await lb.stop()).split('\n').filter((l) => l.includes('queue closed'));
  return JSON.parse(closed.at(-1) ?? '{}') as Record<string, number>;
}

/** Hand-made fragments of a 3000-byte datagram, last first (the first fragment comes last). */
function reordered(family: Family, src: string, sport: number, id: number): string[] {
  const dst = VIP[family];
  const b = family === 4 ? ipv4({ src, dst }) : ipv6({ src, dst });
  const frags = fragmentPacket(b.udp({ sport, dport: PORT }).payload(3000).build(), 1232, id);
  return frags.reverse().map((f) => Buffer.from(f).toString('base64'));
}

/** The server nfqlb's hash gives this 5-tuple (the first fragment's), as the reply names it. */
function expectedServer(family: Family, src: string, sport: number): string {
  const ep = (a: string, p: number) => (family === 4 ? `${a}:${p}` : `[${a}]:${p}`);
  const r = JSON.parse(nfqlb('fwmark', `--shm=${SHM}`, '--proto=udp', `--src=${ep(src, sport)}`, `--dst=${ep(VIP[family], PORT)}`)) as {
    fwmark: number;
  };
  return `vm-${String(r.fwmark - 100).padStart(3, '0')}`;
}

function checkAnswers(family: Family, answers: Record<string, string | null>, sport: number): void {
  const servers = new Set<string>();
  for (const [src, answer] of Object.entries(answers)) {
    const name = expectedServer(family, src, sport);
    expect(answer, `datagram from ${src}`).toBe(`${name} 3000`);
    servers.add(name);
  }
  // The sources spread over the servers: a wrong hash could not hit the right one every time.
  expect(servers.size).toBeGreaterThan(1);
}

beforeAll(() => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: 2 });
  procs.push(...startUdpServers(topo, NVM));
  for (const i of [1, 2]) {
    const r = topo.ns.router(i);
    // Conntrack off (it would reassemble), VIP packets to queue 2 from any interface: stored
    // fragments come back through the tun device and must be queued again.
    for (const [cmd, vip] of [
      ['iptables', `${VIP[4]}/32`],
      ['ip6tables', `${VIP[6]}/128`],
    ] as const) {
      topo.exec(r, [cmd, '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
      topo.exec(r, [cmd, '-t', 'mangle', '-A', 'PREROUTING', '-d', vip, '-j', 'NFQUEUE', '--queue-num', '2']);
    }
    topo.exec(r, ['sysctl', '-qw', 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.eth2.send_redirects=0']);
    topo.ip(r, ['tuntap add dev nfqlb0 mode tun', 'link set nfqlb0 up']);
    for (const family of [4, 6] as const) {
      const lines: string[] = [];
      for (let n = 1; n <= NVM; n++)
        lines.push(`rule add fwmark ${100 + n} table ${100 + n}`, `route add default via ${serverAddr(n, family)} table ${100 + n}`);
      // The LB tier: fwmark 200+j is router j (an LB never forwards with its own fwmark).
      for (const j of [1, 2].filter((j) => j !== i))
        lines.push(`rule add fwmark ${200 + j} table ${200 + j}`, `route add default via ${routerAddr(j, 2, family)} table ${200 + j}`);
      topo.exec(r, ['ip', `-${family}`, '-batch', '-'], `${lines.join('\n')}\n`);
    }
  }
  // The tester's tun for hand-made fragments: it forwards them (their local source is accepted).
  topo.exec(topo.ns.tester, [
    'sysctl',
    '-qw',
    'net.ipv4.ip_forward=1',
    'net.ipv6.conf.all.forwarding=1',
    'net.ipv4.conf.all.accept_local=1',
    'net.ipv4.conf.all.accept_redirects=0',
    'net.ipv6.conf.all.accept_redirects=0',
  ]);
  topo.ip(topo.ns.tester, ['tuntap add dev tfrag mode tun', 'link set tfrag up']);
  topo.exec(topo.ns.tester, ['sysctl', '-qw', 'net.ipv4.conf.tfrag.accept_local=1']);
  nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=10');
  activateServers(SHM, NVM);
  for (const i of [1, 2]) {
    nfqlb('init', `--shm=tfr-lb${i}`, `--ownfw=${200 + i}`, '--M=401', '--N=10');
    for (const j of [1, 2]) nfqlb('activate', `--shm=tfr-lb${i}`, `--index=${j}`, String(200 + j));
  }
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, 'tfr-lb1', 'tfr-lb2', 'tfr-ft1', 'tfr-ft2'])).toEqual([]);
});

describe.each([4, 6] as const)('fragmented UDP, IPv%i', (family) => {
  it('reaches the first fragment’s server whole, in order and reordered (--tun)', async () => {
    const lb = await startLb(1, '--tun=nfqlb0');
    let counters: Record<string, number>;
    try {
      const inOrder = sources(family, 16, 1).map((src): Job => ({ src, sport: 7001, family }));
      checkAnswers(family, udpRoundTrips(topo, inOrder), 7001);
      const late = sources(family, 16, 2).map(
        (src, i): Job => ({ src, sport: 7002, family, frags: reordered(family, src, 7002, 0x100 + i) }),
      );
      checkAnswers(family, udpRoundTrips(topo, late), 7002);
      const stats = JSON.parse(nfqlb('stats', '--ft_shm=tfr-ft1')) as Record<string, number>;
      // 16 reordered datagrams of 3 fragments: 2 stored each, then re-injected.
      expect(stats.fragsAllocated).toBe(32);
      expect(stats.fragsDiscarded).toBe(0);
      expect(stats.inserts).toBeGreaterThanOrEqual(32);
      expect(stats).toMatchObject({ hsize: 500, ttlMillis: 200, mtu: 1500, fragsMax: 100, bucketsMax: 500 });
    } finally {
      counters = await stopLb(lb);
    }
    expect(counters.fragsStored).toBe(32);
    expect(counters.fragsInjected).toBe(32);
    expect(counters.fragsInjectFailed).toBe(0);
  });

  it('loses reordered datagrams without --tun (nothing is stored), in-order ones still arrive', async () => {
    const lb = await startLb(1);
    try {
      const inOrder = sources(family, 8, 3).map((src): Job => ({ src, sport: 7003, family }));
      checkAnswers(family, udpRoundTrips(topo, inOrder), 7003);
      const late = sources(family, 4, 4).map(
        (src, i): Job => ({ src, sport: 7004, family, frags: reordered(family, src, 7004, 0x200 + i) }),
      );
      expect(Object.values(udpRoundTrips(topo, late))).toEqual([null, null, null, null]);
      expect(JSON.parse(nfqlb('stats', '--ft_shm=tfr-ft1'))).toMatchObject({ fragsMax: 0, fragsAllocated: 0 });
    } finally {
      await stopLb(lb);
    }
  });
});

describe('LB tier (--lbshm)', () => {
  it('sends fragments to the LB that owns their addresses; all datagrams arrive whole', async () => {
    const lb1 = await startLb(1, '--tun=nfqlb0', '--lbshm=tfr-lb1');
    const lb2 = await startLb(2, '--tun=nfqlb0', '--lbshm=tfr-lb2');
    let c1: Record<string, number>;
    try {
      for (const family of [4, 6] as const) {
        const inOrder = sources(family, 16, 5).map((src): Job => ({ src, sport: 7005, family }));
        checkAnswers(family, udpRoundTrips(topo, inOrder), 7005);
        const late = sources(family, 8, 6).map(
          (src, i): Job => ({ src, sport: 7006, family, frags: reordered(family, src, 7006, 0x300 + i) }),
        );
        checkAnswers(family, udpRoundTrips(topo, late), 7006);
      }
      // Router 2 only sees what router 1 forwards to it: the fragments it owns.
      const s2 = JSON.parse(nfqlb('stats', '--ft_shm=tfr-ft2')) as Record<string, number>;
      expect(s2.inserts).toBeGreaterThan(0);
    } finally {
      c1 = await stopLb(lb1);
      await stopLb(lb2);
    }
    expect(c1.fragsToLbTier).toBeGreaterThan(0);
  });
});
