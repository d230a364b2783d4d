// `nfqlb lb --compat=nfqlb` in the kernel, on packets of the reference's packet vectors
// (test/conformance/nfqlb-packet-vectors.json): IPv6 first fragments with their later fragments,
// an 8-byte hop-by-hop header and a 16-byte destination options header. The tester writes each
// into a tun device, forwards it to the router, where a real ip6tables NFQUEUE rule queues it;
// the router then forwards it by its fwmark, and a counting rule per fwmark says which it got.
// Each must get the fwmark the vectors give it; the 8-byte hop-by-hop packet, which the
// reference drops, the fwmark of its real 5-tuple (as `nfqlb fwmark` computes it).

import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAddress } from '../../src/address.js';
import { createTopology, routerAddr, serverAddr, type Topology } from '../../src/lab/topology.js';
import { waitFor } from '../wait.js';
import { type Daemon, NFQLB, nfqlb, ROOT, requireBuild, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'tcm-';
const SHM = 'tcm-targets';
const FT_SHM = 'tcm-ftshm';
const TUN = 'tcmp';
const FWMARKS = Array.from({ length: 32 }, (_, i) => 101 + i);

interface Vector {
  case: string;
  hex: string;
  fwmark: number;
}
const VECTORS = new URL('../conformance/nfqlb-packet-vectors.json', import.meta.url);
const { packets } = JSON.parse(readFileSync(VECTORS, 'utf8')) as { packets: Vector[] };

interface Probe {
  what: string;
  packets: Buffer[];
  /** The fwmark every packet of the probe must leave the router with. */
  fwmark: number;
  /** The fwmark of the packets' real 5-tuple (what the default mode gives them). */
  correct: number;
}

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];
let probes: Probe[] = [];

const hex = (b: Buffer, from: number, to: number) => b.subarray(from, to).toString('hex');
const address = (b: Buffer, at: number) => formatAddress(b, at, 16);
/** Unicast addresses a router forwards (not link-local or multicast). */
const forwardable = (b: Buffer) => [8, 24].every((at) => b[at] !== 0xfe && b[at] !== 0xff);

/** The fwmark `nfqlb fwmark` gives a TCP or UDP 5-tuple, the ports at `l4`. */
function tupleFwmark(b: Buffer, proto: number, l4: number): number {
  const ep = (at: number, port: number) => `[${address(b, at)}]:${port}`;
  const src = ep(8, b.readUInt16BE(l4));
  const dst = ep(24, b.readUInt16BE(l4 + 2));
  const out = nfqlb('fwmark', `--shm=${SHM}`, `--proto=${proto === 6 ? 'tcp' : 'udp'}`, `--src=${src}`, `--dst=${dst}`);
  return (JSON.parse(out) as { fwmark: number }).fwmark;
}

/**
 * Two TCP or UDP datagrams whose first fragment the reference keys on its fragment header (so
 * its fwmark is not the real tuple's), with their later fragments; the first 8-byte hop-by-hop
 * TCP packet (dropped by the reference) and the first 16-byte destination options TCP packet
 * (read 8 bytes early by the reference). All TCP/UDP: the hash mode and --sctp_encap of the
 * vectors do not matter to them (the reference's "ports" of a first fragment are nh<<8 and 1).
 */
function chooseProbes(): Probe[] {
  const v = packets.map((p) => ({ ...p, b: Buffer.from(p.hex, 'hex') }));
  const datagrams: Probe[] = [];
  for (const first of v) {
    const b = first.b;
    if (datagrams.length === 2) break;
    if (first.case !== 'frag6-first' || b[6] !== 44 || ![6, 17].includes(b[40]!) || !forwardable(b) || first.fwmark < 0) continue;
    const correct = tupleFwmark(b, b[40]!, 48);
    if (correct === first.fwmark) continue;
    // Its later fragments: same addresses and identification.
    const sameDatagram = (l: Buffer) => l[6] === 44 && hex(l, 8, 40) === hex(b, 8, 40) && hex(l, 44, 48) === hex(b, 44, 48);
    const later = v.filter((l) => l.case === 'frag6-later' && sameDatagram(l.b));
    expect(later.every((l) => l.fwmark === first.fwmark)).toBe(true);
    const what = `IPv6 datagram ${hex(b, 44, 48)} (first and ${later.length} later fragments)`;
    datagrams.push({ what, packets: [b, ...later.map((l) => l.b)], fwmark: first.fwmark, correct });
  }
  const hop = v.find((p) => p.case === 'ipv6-ext' && p.b[6] === 0 && p.b[41] === 0 && p.b[40] === 6 && forwardable(p.b))!;
  expect(hop.fwmark).toBe(-1);
  const correctHop = tupleFwmark(hop.b, 6, 48);
  const dst = v.find((p) => p.case === 'ipv6-ext' && p.b[6] === 60 && p.b[41] === 1 && p.b[40] === 6 && forwardable(p.b) && p.fwmark >= 0)!;
  return [
    ...datagrams,
    { what: '8-byte hop-by-hop header, TCP (the reference drops it)', packets: [hop.b], fwmark: correctHop, correct: correctHop },
    { what: '16-byte destination options header, TCP', packets: [dst.b], fwmark: dst.fwmark, correct: tupleFwmark(dst.b, 6, 56) },
  ];
}

/** Packets the router forwarded, by fwmark (the counting rules in mangle FORWARD). */
function forwardedByFwmark(): Map<number, number> {
  const out = topo.exec(router, ['ip6tables', '-t', 'mangle', '-nvxL', 'FORWARD']);
  const counts = new Map<number, number>();
  for (const m of out.matchAll(/^\s*(\d+)\s+\d+\s.*mark match 0x([0-9a-f]+)\s*$/gm)) counts.set(parseInt(m[2]!, 16), Number(m[1]));
  return counts;
}

// Writes packets (base64 in argv), back to back, into the tester's tun device: they leave as if
// forwarded.
const WRITE_JS = `const { Tun } = await import('${ROOT}dist/src/nfqlb/tun.js');
const tun = new Tun('${TUN}');
for (const p of process.argv.slice(1)) { const b = Buffer.from(p, 'base64'); tun.write(b, 0, b.length); }`;

/** Sends packets and returns how many the router forwarded with each fwmark, once it forwarded them all. */
async function send(pkts: Buffer[], what: string): Promise<Record<number, number>> {
  const before = forwardedByFwmark();
  topo.exec(topo.ns.tester, ['node', '--input-type=module', '-e', WRITE_JS, ...pkts.map((b) => b.toString('base64'))]);
  let moved: Record<number, number> = {};
  await waitFor(`${what}: all ${pkts.length} forwarded by the router`, () => {
    const now = forwardedByFwmark();
    const changed = FWMARKS.filter((fw) => now.get(fw) !== before.get(fw));
    moved = Object.fromEntries(changed.map((fw) => [fw, now.get(fw)! - (before.get(fw) ?? 0)]));
    return Object.values(moved).reduce((a, n) => a + n, 0) >= pkts.length;
  }).catch((e: Error) => {
    throw new Error(`${e.message} (forwarded by fwmark: ${JSON.stringify(moved)})`);
  });
  return moved;
}

beforeAll(() => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  router = topo.ns.router(1);
  // The vectors' table.
  nfqlb('init', `--shm=${SHM}`, '--M=997', '--N=32');
  nfqlb('activate', `--shm=${SHM}`, ...FWMARKS.map(String));
  probes = chooseProbes();
  const dsts = [...new Set(probes.flatMap((p) => p.packets.map((b) => address(b, 24))))];
  // Conntrack off (it would reassemble the fragments); the probes' destinations to queue 2.
  topo.exec(router, ['ip6tables', '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
  const mangle = (...rule: string[]) => topo.exec(router, ['ip6tables', '-t', 'mangle', '-A', ...rule]);
  for (const d of dsts) mangle('PREROUTING', '-i', 'eth2', '-d', `${d}/128`, '-j', 'NFQUEUE', '--queue-num', '2');
  for (const fw of FWMARKS) mangle('FORWARD', '-m', 'mark', '--mark', String(fw));
  const rules = FWMARKS.flatMap((fw) => [`rule add fwmark ${fw} table ${fw}`, `route add default via ${serverAddr(1, 6)} table ${fw}`]);
  topo.exec(router, ['ip', '-6', '-batch', '-'], `${rules.join('\n')}\n`);
  topo.exec(topo.ns.tester, ['sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.all.accept_redirects=0']);
  const routes = dsts.map((d) => `route add ${d}/128 via ${routerAddr(1, 2, 6)}`);
  topo.ip(topo.ns.tester, [`tuntap add dev ${TUN} mode tun`, `link set ${TUN} up`, ...routes]);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
});

describe('nfqlb lb --compat=nfqlb through the kernel', () => {
  it('gives IPv6 fragments and extension-header packets the fwmark of the reference vectors', async () => {
    expect(probes.map((p) => p.what)).toHaveLength(4);
    // Not vacuous: the fragments' fwmark is not the one the default mode gives them.
    for (const p of probes.slice(0, 2)) expect(p.fwmark, p.what).not.toBe(p.correct);
    const proc = topo.spawn(router, ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--compat=nfqlb']);
    procs.push(proc);
    const lb: Daemon = await startDaemon(proc);
    try {
      // A datagram's fragments go back to back (the fragment table keeps a first fragment's
      // verdict for --ft_ttl, 200 ms).
      for (const p of probes) expect(await send(p.packets, p.what), p.what).toEqual({ [p.fwmark]: p.packets.length });
    } finally {
      await lb.stop();
    }
  });
});
