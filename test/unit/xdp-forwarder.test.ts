// Packet fixtures for xdplb's per-frame decision: Ethernet frames built in a fake UMEM,
// the verdict, the rewritten MACs, the target chosen, and partial checksums completed.
import { describe, expect, it } from 'vitest';
import { hashTuple } from '../../src/hash.js';
import { PacketInfo, parsePacket } from '../../src/packet.js';
import { completePartialChecksum } from '../../src/xdp/checksum.js';
import { FrameForwarder } from '../../src/xdp/forwarder.js';
import { formatMac, parseMac, XdpTable } from '../../src/xdp/table.js';
import { VERDICT_DROP, VERDICT_TX } from '../../src/xdp/xsk.js';
import { checksum, fragmentPacket, ipv4, ipv6, PROTO } from '../fixtures/packet-builder.js';

const EGRESS_MAC = parseMac('02:00:00:00:00:ee');
const CLIENT_MAC = parseMac('02:00:00:00:00:cc');
const LB_MAC = parseMac('02:00:00:00:00:bb');
const FRAME = 4096;

function table(active: number[]): XdpTable {
  const t = XdpTable.initialize(new ArrayBuffer(XdpTable.byteLength()));
  for (const i of active) t.activate(i, parseMac(`0:0:0:1:1:${i.toString(16)}`));
  return t;
}

/** A UMEM of 8 frames and a helper that puts an Ethernet frame (IP packet inside) in frame `slot`. */
function umem(): { mem: Uint8Array; put(slot: number, ip: Uint8Array, ethertype?: number): [number, number] } {
  const mem = new Uint8Array(8 * FRAME);
  return {
    mem,
    put(slot, ip, ethertype = ip[0]! >> 4 === 6 ? 0x86dd : 0x0800) {
      const off = slot * FRAME;
      mem.set(LB_MAC, off);
      mem.set(CLIENT_MAC, off + 6);
      mem[off + 12] = ethertype >> 8;
      mem[off + 13] = ethertype & 0xff;
      mem.set(ip, off + 14);
      return [off, 14 + ip.length];
    },
  };
}

/** Replaces the valid TCP/UDP checksum at `field` by what a CHECKSUM_PARTIAL sender leaves: the pseudo-header sum. */
function makePartial(ip: Uint8Array): { ip: Uint8Array; full: number; field: number } {
  const p = new PacketInfo();
  parsePacket(ip, 0, ip.length, p);
  const field = p.l4Off + (p.l4Proto === PROTO.tcp ? 16 : 6);
  const full = (ip[field]! << 8) | ip[field + 1]!;
  const [addrOff, addrLen] = p.family === 4 ? [12, 8] : [8, 32];
  const pseudo = ~checksum(ip, addrOff, addrOff + addrLen, p.l4Proto + (p.end - p.l4Off)) & 0xffff;
  const out = ip.slice();
  out[field] = pseudo >> 8;
  out[field + 1] = pseudo & 0xff;
  return { ip: out, full, field };
}

describe('FrameForwarder', () => {
  const tcp4 = ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).tcp({ sport: 40000, dport: 5001 }).payload(100).build();
  const tcp6 = ipv6({ src: '2000::7', dst: '1000::' }).tcp({ sport: 40000, dport: 5001 }).payload(100).build();

  it.each([
    ['IPv4', tcp4, { proto: 'tcp', src: '50.0.0.7:40000', dst: '10.0.0.0:5001' }],
    ['IPv6', tcp6, { proto: 'tcp', src: '[2000::7]:40000', dst: '[1000::]:5001' }],
  ] as const)('%s TCP: picks lookup[nfqlb hash % M] and rewrites both MACs in place', (_, ip, tuple) => {
    const t = table([0, 1, 2]);
    const u = umem();
    const [off, len] = u.put(3, ip);
    const f = new FrameForwarder(u.mem, t, EGRESS_MAC);
    expect(f.forward(off, len)).toBe(VERDICT_TX);
    const slot = t.targets.lookup[hashTuple(tuple, 1) % t.M]!;
    expect(formatMac(u.mem, off)).toBe(formatMac(t.macs, slot * 8));
    expect(formatMac(u.mem, off + 6)).toBe('02:00:00:00:00:ee');
    expect(u.mem.subarray(off + 12, off + len)).toEqual(
      Uint8Array.from([ip[0]! >> 4 === 6 ? 0x86 : 0x08, ip[0]! >> 4 === 6 ? 0xdd : 0x00, ...ip]),
    );
    expect(f.counters).toMatchObject({ forwarded: 1, checksums: 0 });
  });

  it('spreads flows over every active target, never uses an inactive one, and counts frames per target', () => {
    const t = table([1, 4, 9]);
    const u = umem();
    const f = new FrameForwarder(u.mem, t, EGRESS_MAC);
    const seen = new Map<string, number>();
    for (let port = 1000; port < 1100; port++) {
      const [off, len] = u.put(0, ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: port, dport: 53 }).build());
      expect(f.forward(off, len)).toBe(VERDICT_TX);
      seen.set(formatMac(u.mem, off), (seen.get(formatMac(u.mem, off)) ?? 0) + 1);
    }
    expect([...seen.keys()].sort()).toEqual(['00:00:00:01:01:01', '00:00:00:01:01:04', '00:00:00:01:01:09']);
    // The per-target counts behind xdplb_target_packets_total{target}: index i has MAC ...:0i.
    for (const i of [0, 2, 3, 5, 6, 7, 8]) expect(f.targetFrames[i]).toBe(0);
    for (const i of [1, 4, 9]) expect(f.targetFrames[i]).toBe(seen.get(`00:00:00:01:01:0${i}`));
  });

  it('drops when no target is active, leaving the frame as it was', () => {
    const u = umem();
    const [off, len] = u.put(0, tcp4);
    const before = u.mem.slice(off, off + len);
    const f = new FrameForwarder(u.mem, table([]), EGRESS_MAC);
    expect(f.forward(off, len)).toBe(VERDICT_DROP);
    expect(u.mem.slice(off, off + len)).toEqual(before);
    expect(f.counters.noTarget).toBe(1);
  });

  it('drops what is not IP it can read, without throwing', () => {
    const u = umem();
    const f = new FrameForwarder(u.mem, table([0]), EGRESS_MAC);
    expect(f.forward(...u.put(0, tcp4, 0x0806))).toBe(VERDICT_DROP); // ARP ethertype
    expect(f.forward(0, 14)).toBe(VERDICT_DROP); // header only
    expect(f.forward(0, 3)).toBe(VERDICT_DROP);
    expect(f.forward(...u.put(0, tcp4.subarray(0, 12)))).toBe(VERDICT_DROP); // cut IPv4 header
    // Random bytes behind both ethertypes: any verdict, never an exception.
    let seed = 7;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 24;
    };
    for (let i = 0; i < 2000; i++) {
      const junk = Uint8Array.from({ length: 1 + (i % 90) }, rnd);
      junk[0] = (i & 1 ? 0x60 : 0x40) | (junk[0]! & 0x0f);
      const v = f.forward(...u.put(1, junk));
      expect(v === VERDICT_TX || v === VERDICT_DROP).toBe(true);
    }
  });

  it('sends every fragment of a datagram to the same target', () => {
    const t = table([0, 1, 2, 3, 4]);
    const u = umem();
    const f = new FrameForwarder(u.mem, t, EGRESS_MAC);
    for (const build of [ipv4({ src: '50.0.0.9', dst: '10.0.0.0' }), ipv6({ src: '2000::9', dst: '1000::' })]) {
      const frags = fragmentPacket(build.udp({ sport: 777, dport: 53 }).payload(3000).build(), 1024);
      expect(frags.length).toBeGreaterThan(2);
      const macs = frags.map((fr) => {
        const [off, len] = u.put(2, fr);
        expect(f.forward(off, len)).toBe(VERDICT_TX);
        return formatMac(u.mem, off);
      });
      expect(new Set(macs).size).toBe(1);
    }
  });

  it('batch() writes one verdict per frame', () => {
    const u = umem();
    const f = new FrameForwarder(u.mem, table([0]), EGRESS_MAC);
    const [o1, l1] = u.put(0, tcp4);
    const [o2, l2] = u.put(1, tcp6, 0x88cc); // LLDP ethertype: dropped
    const verdict = new Uint8Array(4).fill(9);
    f.batch(2, Uint32Array.of(o1, o2), Uint32Array.of(l1, l2), verdict);
    expect(Array.from(verdict)).toEqual([VERDICT_TX, VERDICT_DROP, 9, 9]);
  });
});

describe('partial checksums (CHECKSUM_PARTIAL from a veth peer)', () => {
  const cases = [
    ['TCP/IPv4', ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).tcp({ sport: 1, dport: 2 }).payload(1401).build()],
    ['UDP/IPv4', ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).udp({ sport: 1, dport: 2 }).payload(60).build()],
    ['TCP/IPv6', ipv6({ src: '2000::7', dst: '1000::' }).tcp({ sport: 1, dport: 2 }).payload(33).build()],
    ['UDP/IPv6', ipv6({ src: '2000::7', dst: '1000::' }).udp({ sport: 1, dport: 2 }).payload(1000).build()],
  ] as const;

  it.each(cases)('%s: the forwarder completes it to the real checksum', (_, ip) => {
    const { ip: partial, full, field } = makePartial(ip);
    expect((partial[field]! << 8) | partial[field + 1]!).not.toBe(full);
    const u = umem();
    const [off, len] = u.put(0, partial);
    const f = new FrameForwarder(u.mem, table([0]), EGRESS_MAC);
    expect(f.forward(off, len)).toBe(VERDICT_TX);
    const at = off + 14 + field;
    expect((u.mem[at]! << 8) | u.mem[at + 1]!).toBe(full);
    expect(f.counters.checksums).toBe(1);
  });

  it.each(cases)('%s: a complete checksum is left alone', (_, ip) => {
    const p = new PacketInfo();
    const copy = ip.slice();
    parsePacket(copy, 0, copy.length, p);
    expect(completePartialChecksum(copy, p)).toBe(false);
    expect(copy).toEqual(ip);
  });

  it('leaves fragments, ICMP and IPv4 UDP without checksum alone', () => {
    const p = new PacketInfo();
    const udp = ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).udp({ sport: 1, dport: 2 }).payload(10).build();
    udp[20 + 6] = 0;
    udp[20 + 7] = 0;
    const icmp = ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).icmp(8, 0, { id: 1 }).build();
    const frag = fragmentPacket(ipv4({ src: '50.0.0.7', dst: '10.0.0.0' }).udp({ sport: 1, dport: 2 }).payload(100).build(), 64)[0]!;
    for (const pkt of [udp, icmp, frag]) {
      const copy = pkt.slice();
      parsePacket(copy, 0, copy.length, p);
      expect(completePartialChecksum(copy, p)).toBe(false);
      expect(copy).toEqual(pkt);
    }
  });
});
