// Property test: over a million random and mutated packets (seeded, so a failure replays), the
// parser never throws and what it reports always points inside the packet, in both parse modes.
import { describe, expect, it } from 'vitest';
import { hashAddresses, hashKey, packetAddressHash, packetHash, writeHashKey } from '../../src/hash.js';
import { PARSE_CORRECT, PARSE_NFQLB, PacketInfo, parsePacket } from '../../src/packet.js';
import { fragmentPacket, ipv4, ipv6 } from '../fixtures/packet-builder.js';
import { prng } from '../fixtures/prng.js';

const ROUNDS = 1_000_000;
const SEED = 0x5eed1234;

const tcp4Reply = ipv4({ src: '10.0.0.1', dst: '50.0.0.7' }).tcp({ sport: 80, dport: 40000 }).payload(200).build();
const tcp6Reply = ipv6({ src: '1000::1', dst: '2000::7' }).ext('dst').tcp({ sport: 80, dport: 40000 }).payload(200).build();

/** Valid packets of every kind the parser knows, to mutate. */
const corpus: Uint8Array[] = [
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1' }).tcp({ sport: 40000, dport: 80 }).payload(40).build(),
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1', options: new Uint8Array(12).fill(1) })
    .udp({ sport: 1, dport: 2 })
    .payload(9)
    .build(),
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1' }).sctp({ sport: 7000, dport: 7001 }).payload(16).build(),
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1' }).udp({ sport: 9899, dport: 9899 }).payload(16).build(),
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1' }).icmp(8, 0, { id: 5 }).payload(20).build(),
  ipv4({ src: '192.168.1.1', dst: '10.0.0.1' }).icmp(3, 4, { rest: 1400 }).inner(tcp4Reply.subarray(0, 60)).build(),
  ipv4({ src: '192.168.1.1', dst: '10.0.0.1' })
    .icmp(11, 0)
    .inner(ipv4({ src: '10.0.0.1', dst: '50.0.0.7' }).icmp(0, 0, { id: 5 }).build())
    .build(),
  ...fragmentPacket(tcp4Reply, 96),
  ipv4({ src: '50.0.0.7', dst: '10.0.0.1' }).proto(47).payload(30).build(),
  ipv6({ src: '2000::7', dst: '1000::1' }).tcp({ sport: 40000, dport: 80 }).payload(40).build(),
  ipv6({ src: '2000::7', dst: '1000::1' })
    .ext('hop')
    .ext('routing', { length: 24 })
    .ext('dst')
    .ext('ah')
    .udp({ sport: 1, dport: 2 })
    .build(),
  ipv6({ src: '2000::7', dst: '1000::1' }).ext('frag', { id: 9, mf: true }).sctp({ sport: 1, dport: 2 }).build(),
  ipv6({ src: '2000::7', dst: '1000::1' }).icmp(128, 0, { id: 5 }).payload(20).build(),
  ipv6({ src: '1000::ff', dst: '1000::1' }).icmp(2, 0, { rest: 1280 }).inner(tcp6Reply).build(),
  ipv6({ src: '1000::ff', dst: '1000::1' }).ext('hop').icmp(1, 4).inner(tcp6Reply.subarray(0, 50)).build(),
  ...fragmentPacket(tcp6Reply, 64),
  ipv6({ src: '2000::7', dst: '1000::1' }).ext('dst').proto(50).payload(30).build(),
];

const key = new Uint8Array(40);

interface Stats {
  families: number[];
  ports: number;
  icmpErrors: number;
  fragments: number;
  truncated: number;
}

/** Checks every invariant; returns a description of the first one broken, or null. */
function check(buf: Uint8Array, off: number, len: number, p: PacketInfo, stats: Stats, parseMode: number): string | null {
  parsePacket(buf, off, len, p, 9899, parseMode);
  const h1 = packetHash(buf, p, 1);
  const h0 = packetHash(buf, p, 0);
  const ha = packetAddressHash(buf, p);
  stats.families[p.family === 0 ? 0 : p.family === 4 ? 1 : 2]!++;
  for (const h of [h1, h0, ha]) if (!(Number.isInteger(h) && h >= 0 && h <= 0xffffffff)) return `hash ${h}`;
  if (p.family === 0) return h1 === 0 && ha === 0 ? null : 'hash of an unparsed packet';
  // packetHash sums byte terms; it must equal plain djb2 over the key writeHashKey builds.
  writeHashKey(buf, p, key);
  const addressOnly = p.truncated || (p.isFragment && !p.firstFragment);
  if (h1 !== (addressOnly ? hashAddresses(key) : hashKey(key, 1))) return 'hash mode 1 differs from the key hash';
  if (h0 !== (addressOnly ? hashAddresses(key) : hashKey(key, 0))) return 'hash mode 0 differs from the key hash';
  if (ha !== hashAddresses(key)) return 'address hash differs from the key hash';
  if (p.family !== 4 && p.family !== 6) return `family ${p.family}`;
  const limit = Math.min(off + len, buf.length);
  if (p.l3Off !== off) return 'l3Off';
  if (p.end > limit || p.end < off + (p.family === 4 ? 20 : 40)) return `end ${p.end}`;
  const alen = p.family === 4 ? 4 : 16;
  if (p.addrLen !== alen) return 'addrLen';
  for (const a of [p.srcOff, p.dstOff]) if (a < off || a + alen > p.end) return `address offset ${a}`;
  for (const o of [p.l4Off, p.innerL3Off, p.innerL4Off]) if (o !== -1 && (o < off || o > p.end)) return `offset ${o}`;
  if (p.proto < -1 || p.proto > 255 || p.l4Proto < -1 || p.l4Proto > 255) return 'proto';
  if (p.icmpType < -1 || p.icmpType > 255 || p.icmpCode < -1 || p.icmpCode > 255) return 'icmp';
  if (p.hasPorts) {
    stats.ports++;
    if (p.proto !== 6 && p.proto !== 17 && p.proto !== 132) return `ports for proto ${p.proto}`;
    if (p.sport < 0 || p.sport > 65535 || p.dport < 0 || p.dport > 65535) return 'port range';
    if (p.truncated) return 'ports and truncated';
    const l4 = p.icmpError ? p.innerL4Off : p.l4Off;
    if (l4 < 0 || l4 + (p.sctpEncap ? 12 : 4) > p.end) return 'ports beyond the end';
  }
  if (p.icmpError) {
    stats.icmpErrors++;
    if (p.innerL3Off < 0 || p.icmpType < 0) return 'icmp error without quoted packet';
  }
  if (p.isFragment) stats.fragments++;
  if (p.firstFragment && !p.isFragment) return 'firstFragment without isFragment';
  if (p.isFragment && !p.firstFragment && (p.hasPorts || p.fragOffset === 0)) return 'later fragment';
  if (p.fragOffset < 0 || p.fragOffset > 65528 || p.fragId < 0 || p.fragId > 0xffffffff) return 'fragment fields';
  if (p.echoId < 0 || p.echoId > 0xffff) return 'echoId';
  if (p.truncated) stats.truncated++;
  return null;
}

describe('parsePacket fuzz', () => {
  it(`survives ${ROUNDS} random and mutated packets`, () => {
    const rnd = prng(SEED);
    const p = new PacketInfo();
    const buf = new Uint8Array(2048);
    const stats: Stats = { families: [0, 0, 0], ports: 0, icmpErrors: 0, fragments: 0, truncated: 0 };
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS && failures.length < 5; round++) {
      const mode = rnd() % 4;
      let len: number;
      if (mode === 0) {
        // Random bytes that look like IP for one nibble.
        len = rnd() % 120;
        for (let i = 0; i < len; i++) buf[i] = rnd() & 0xff;
        if (len > 0 && rnd() & 1) buf[0] = (rnd() & 1 ? 0x40 : 0x60) | (buf[0]! & 0x0f);
      } else {
        // A valid packet with a few bytes changed, and maybe cut short.
        const src = corpus[rnd() % corpus.length]!;
        buf.set(src);
        len = src.length;
        const flips = 1 + (rnd() % 4);
        for (let i = 0; i < flips; i++) {
          // Bias towards the headers, where the decisions are.
          const at = rnd() % Math.min(len, 96);
          buf[at] = mode === 1 ? rnd() & 0xff : buf[at]! ^ (1 << (rnd() % 8));
        }
        if (mode === 3) len = rnd() % (len + 1);
      }
      // Sometimes the packet sits at an offset, or the captured bytes end before `len`.
      const off = rnd() % 8 === 0 ? 1 + (rnd() % 16) : 0;
      if (off > 0) buf.copyWithin(off, 0, len);
      const view = rnd() % 8 === 0 ? buf.subarray(0, off + (rnd() % (len + 1))) : buf;
      let problem: string | null;
      try {
        problem = check(view, off, len, p, stats, round & 1 ? PARSE_NFQLB : PARSE_CORRECT);
      } catch (e) {
        problem = `threw ${(e as Error).message}`;
      }
      if (problem !== null) {
        failures.push(`round ${round}: ${problem}: ${Buffer.from(view.subarray(off, off + len)).toString('hex')}`);
      }
    }
    expect(failures).toEqual([]);
    // The mutations must reach every branch, or the test proves little.
    expect(stats.families[1]).toBeGreaterThan(ROUNDS / 10);
    expect(stats.families[2]).toBeGreaterThan(ROUNDS / 10);
    expect(stats.families[0]).toBeGreaterThan(ROUNDS / 20);
    for (const n of [stats.ports, stats.icmpErrors, stats.fragments, stats.truncated]) expect(n).toBeGreaterThan(ROUNDS / 100);
  }, 60_000);

  it('is deterministic: the same bytes give the same hash', () => {
    const rnd = prng(SEED + 1);
    const p = new PacketInfo();
    for (let i = 0; i < 10_000; i++) {
      const src = corpus[rnd() % corpus.length]!.slice();
      src[rnd() % Math.min(src.length, 64)] = rnd() & 0xff;
      parsePacket(src, 0, src.length, p);
      const a = packetHash(src, p, 1);
      parsePacket(new Uint8Array(64), 0, 64, p); // something else in between
      parsePacket(src, 0, src.length, p);
      expect(packetHash(src, p, 1)).toBe(a);
    }
  });
});
