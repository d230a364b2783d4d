import { describe, expect, it } from 'vitest';
import { parseAddress, toKeyAddress } from '../../src/address.js';
import { djb2, hashAddresses, hashKey, hashTuple, packetAddressHash, packetHash, writeHashKey } from '../../src/hash.js';
import { PARSE_NFQLB, PacketInfo, parsePacket } from '../../src/packet.js';
import { checksum, crc32c, fragmentPacket, ipv4, ipv6, PROTO } from '../fixtures/packet-builder.js';

// An independent statement of the reference key: src[16] dst[16] user u16 (wire order),
// proto u16 little-endian, sport, dport (network order).
function oracle(k: { src: string; dst: string; proto: number; user?: number; sport?: number; dport?: number }, mode = 1): number {
  const key = new Uint8Array(40);
  key.set(toKeyAddress(parseAddress(k.src)), 0);
  key.set(toKeyAddress(parseAddress(k.dst)), 16);
  const user = k.user ?? 0;
  key.set([user >> 8, user & 0xff, k.proto, 0], 32);
  const sport = k.sport ?? 0;
  const dport = k.dport ?? 0;
  key.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff], 36);
  if (mode === 1 && k.proto === PROTO.sctp) return djb2(key, 36, 40);
  return djb2(key, 0, 40);
}

function addressesOnly(src: string, dst: string): number {
  return hashTuple({ proto: null, src, dst }, 1);
}

const C4 = '50.0.0.7';
const V4 = '10.0.0.1';
const R4 = '192.168.1.254';
const C6 = '2000::7';
const V6 = '1000::1';
const R6 = '1000::1:192.168.1.254';

// The flows, as the client sends them to the VIP.
const tcp4 = ipv4({ src: C4, dst: V4, id: 1 }).tcp({ sport: 40000, dport: 80 }).payload(20).build();
const udp4 = ipv4({ src: C4, dst: V4 }).udp({ sport: 5001, dport: 53 }).payload(30).build();
const sctp4 = ipv4({ src: C4, dst: V4 }).sctp({ sport: 7000, dport: 7001 }).payload(16).build();
const tcp6 = ipv6({ src: C6, dst: V6 }).tcp({ sport: 40000, dport: 80 }).payload(20).build();
const udp6 = ipv6({ src: C6, dst: V6 }).udp({ sport: 5001, dport: 53 }).payload(30).build();
const sctp6 = ipv6({ src: C6, dst: V6 }).sctp({ sport: 7000, dport: 7001 }).payload(16).build();

// What the targets send back (from the VIP), as quoted in ICMP errors.
const tcp4Reply = ipv4({ src: V4, dst: C4 }).tcp({ sport: 80, dport: 40000, flags: 0x12 }).payload(1400).build();
const udp4Reply = ipv4({ src: V4, dst: C4 }).udp({ sport: 53, dport: 5001 }).payload(100).build();
const sctp4Reply = ipv4({ src: V4, dst: C4 }).sctp({ sport: 7001, dport: 7000 }).build();
const tcp6Reply = ipv6({ src: V6, dst: C6 }).tcp({ sport: 80, dport: 40000, flags: 0x12 }).payload(1400).build();
const udp6ReplyExt = ipv6({ src: V6, dst: C6 }).ext('dst').udp({ sport: 53, dport: 5001 }).payload(8).build();

const tupleTcp4 = { proto: 'tcp' as const, src: `${C4}:40000`, dst: `${V4}:80` };
const tupleUdp4 = { proto: 'udp' as const, src: `${C4}:5001`, dst: `${V4}:53` };
const tupleSctp4 = { proto: 'sctp' as const, src: `${C4}:7000`, dst: `${V4}:7001` };
const tupleTcp6 = { proto: 'tcp' as const, src: `[${C6}]:40000`, dst: `[${V6}]:80` };
const tupleUdp6 = { proto: 'udp' as const, src: `[${C6}]:5001`, dst: `[${V6}]:53` };
const tupleSctp6 = { proto: 'sctp' as const, src: `[${C6}]:7000`, dst: `[${V6}]:7001` };

/** ICMP errors quote the first bytes of the offending packet (576 / 1280 byte limits). */
function quote(pkt: Uint8Array, bytes: number): Uint8Array {
  return pkt.subarray(0, Math.min(bytes, pkt.length));
}

interface Fixture {
  name: string;
  packet: Uint8Array;
  fields: Partial<Record<keyof PacketInfo, number | boolean>>;
  /** Expected hash in hash mode 1 (and mode 0 unless hash0 says otherwise). */
  hash: number;
  hash0?: number;
  encap?: number;
}

const fixtures: Fixture[] = [
  {
    name: 'IPv4 TCP',
    packet: tcp4,
    fields: { family: 4, proto: 6, l4Proto: 6, l4Off: 20, sport: 40000, dport: 80, hasPorts: true, truncated: false, isFragment: false },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'IPv4 UDP',
    packet: udp4,
    fields: { family: 4, proto: 17, sport: 5001, dport: 53, hasPorts: true },
    hash: hashTuple(tupleUdp4, 1),
  },
  {
    name: 'IPv4 SCTP (ports only in mode 1)',
    packet: sctp4,
    fields: { family: 4, proto: 132, sport: 7000, dport: 7001, hasPorts: true },
    hash: hashTuple(tupleSctp4, 1),
    hash0: hashTuple(tupleSctp4, 0),
  },
  {
    name: 'IPv4 TCP with 40 bytes of options',
    packet: ipv4({ src: C4, dst: V4, options: new Uint8Array(40).fill(1) })
      .tcp({ sport: 40000, dport: 80 })
      .build(),
    fields: { family: 4, l4Off: 60, sport: 40000, dport: 80 },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'IPv4 TCP in a buffer with trailing padding (total length rules)',
    packet: concatBytes(ipv4({ src: C4, dst: V4 }).tcp({ sport: 40000, dport: 80 }).build(), new Uint8Array(30).fill(0xee)),
    fields: { family: 4, end: 40, sport: 40000 },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'IPv4 total length 0 (GSO) trusts the capture',
    packet: ipv4({ src: C4, dst: V4, totalLength: 0 }).tcp({ sport: 40000, dport: 80 }).payload(100).build(),
    fields: { family: 4, end: 140, sport: 40000, hasPorts: true },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'IPv4 total length cuts the ports',
    packet: ipv4({ src: C4, dst: V4, totalLength: 22 }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { family: 4, end: 22, truncated: true, hasPorts: false, proto: 6 },
    hash: addressesOnly(C4, V4),
  },
  {
    name: 'IPv4 total length shorter than the header',
    packet: ipv4({ src: C4, dst: V4, totalLength: 19 }).tcp({ sport: 1, dport: 2 }).build(),
    fields: { family: 0 },
    hash: 0,
  },
  {
    name: 'IPv4 header length below 5 words',
    packet: patch(ipv4({ src: C4, dst: V4 }).tcp({ sport: 1, dport: 2 }).build(), 0, 0x44),
    fields: { family: 0 },
    hash: 0,
  },
  {
    name: 'IPv4 options longer than the packet',
    packet: patch(ipv4({ src: C4, dst: V4 }).proto(PROTO.none).build(), 0, 0x4f),
    fields: { family: 0 },
    hash: 0,
  },
  {
    name: 'IP version 5',
    packet: patch(tcp4.slice(), 0, 0x55),
    fields: { family: 0 },
    hash: 0,
  },
  {
    name: 'IPv4 unknown protocol (GRE): addresses and protocol',
    packet: ipv4({ src: C4, dst: V4 }).proto(47).payload(24).build(),
    fields: { family: 4, proto: 47, hasPorts: false, truncated: false },
    hash: oracle({ src: C4, dst: V4, proto: 47 }),
  },
  {
    name: 'IPv4 first fragment has ports',
    packet: ipv4({ src: C4, dst: V4, id: 0x4321, mf: true }).udp({ sport: 5001, dport: 53 }).payload(64).build(),
    fields: { isFragment: true, firstFragment: true, moreFragments: true, fragId: 0x4321, fragOffset: 0, hasPorts: true, sport: 5001 },
    hash: hashTuple(tupleUdp4, 1),
  },
  {
    name: 'IPv4 middle fragment: addresses only',
    packet: ipv4({ src: C4, dst: V4, id: 0x4321, mf: true, fragOffset: 1480, proto: PROTO.udp }).payload(64).build(),
    fields: {
      isFragment: true,
      firstFragment: false,
      moreFragments: true,
      fragId: 0x4321,
      fragOffset: 1480,
      hasPorts: false,
      l4Off: 20,
      proto: 17,
    },
    hash: addressesOnly(C4, V4),
  },
  {
    name: 'IPv4 last fragment: addresses only',
    packet: ipv4({ src: C4, dst: V4, id: 0x4321, fragOffset: 2960, proto: PROTO.udp }).payload(64).build(),
    fields: { isFragment: true, firstFragment: false, moreFragments: false, fragOffset: 2960, hasPorts: false },
    hash: addressesOnly(C4, V4),
  },
  {
    name: 'IPv4 DF is not a fragment',
    packet: ipv4({ src: C4, dst: V4, df: true }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { isFragment: false, hasPorts: true },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'IPv6 TCP',
    packet: tcp6,
    fields: { family: 6, proto: 6, l4Off: 40, sport: 40000, dport: 80, hasPorts: true, srcOff: 8, dstOff: 24 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'IPv6 UDP',
    packet: udp6,
    fields: { family: 6, proto: 17, sport: 5001, dport: 53 },
    hash: hashTuple(tupleUdp6, 1),
  },
  {
    name: 'IPv6 SCTP',
    packet: sctp6,
    fields: { family: 6, proto: 132, sport: 7000, dport: 7001 },
    hash: hashTuple(tupleSctp6, 1),
    hash0: hashTuple(tupleSctp6, 0),
  },
  {
    name: 'IPv6 hop-by-hop, routing, destination options, AH, then TCP',
    packet: ipv6({ src: C6, dst: V6 })
      .ext('hop')
      .ext('routing', { length: 24 })
      .ext('dst', { length: 16 })
      .ext('ah')
      .tcp({ sport: 40000, dport: 80 })
      .build(),
    fields: { family: 6, proto: 6, l4Off: 40 + 8 + 24 + 16 + 24, sport: 40000, dport: 80 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'IPv6 a 2 KB destination options header',
    packet: ipv6({ src: C6, dst: V6 }).ext('dst', { length: 2048 }).udp({ sport: 5001, dport: 53 }).build(),
    fields: { l4Off: 40 + 2048, sport: 5001 },
    hash: hashTuple(tupleUdp6, 1),
  },
  {
    name: 'IPv6 ESP ends the chain: addresses and protocol',
    packet: ipv6({ src: C6, dst: V6 }).ext('hop').proto(PROTO.esp).payload(40).build(),
    fields: { proto: 50, l4Off: 48, hasPorts: false, truncated: false },
    hash: oracle({ src: C6, dst: V6, proto: 50 }),
  },
  {
    name: 'IPv6 no next header',
    packet: ipv6({ src: C6, dst: V6 }).ext('dst').build(),
    fields: { proto: 59, l4Off: 48, hasPorts: false, truncated: false },
    hash: oracle({ src: C6, dst: V6, proto: 59 }),
  },
  {
    name: 'IPv6 17 extension headers: too long a chain',
    packet: (() => {
      let b = ipv6({ src: C6, dst: V6 });
      for (let i = 0; i < 17; i++) b = b.ext('dst');
      return b.tcp({ sport: 1, dport: 2 }).build();
    })(),
    fields: { family: 6, truncated: true, hasPorts: false, l4Off: -1, proto: -1 },
    hash: addressesOnly(C6, V6),
  },
  {
    name: 'IPv6 extension header longer than the packet',
    packet: ipv6({ src: C6, dst: V6, payloadLength: 16 }).ext('dst', { length: 24 }).tcp({ sport: 1, dport: 2 }).build(),
    fields: { family: 6, truncated: true, end: 56 },
    hash: addressesOnly(C6, V6),
  },
  {
    name: 'IPv6 payload length 0 (jumbo/GSO) trusts the capture',
    packet: ipv6({ src: C6, dst: V6, payloadLength: 0 }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { family: 6, sport: 40000, hasPorts: true },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'IPv6 first fragment (after hop-by-hop) has ports',
    packet: ipv6({ src: C6, dst: V6 })
      .ext('hop')
      .ext('frag', { id: 0xdeadbeef, mf: true })
      .udp({ sport: 5001, dport: 53 })
      .payload(100)
      .build(),
    fields: {
      isFragment: true,
      firstFragment: true,
      moreFragments: true,
      fragId: 0xdeadbeef,
      fragOffset: 0,
      l4Off: 56,
      sport: 5001,
      hasPorts: true,
    },
    hash: hashTuple(tupleUdp6, 1),
  },
  {
    name: 'IPv6 middle fragment: addresses only',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 0xdeadbeef, mf: true, offset: 1232, nextHeader: PROTO.udp }).payload(100).build(),
    fields: {
      isFragment: true,
      firstFragment: false,
      moreFragments: true,
      fragId: 0xdeadbeef,
      fragOffset: 1232,
      hasPorts: false,
      proto: 17,
      l4Off: 48,
    },
    hash: addressesOnly(C6, V6),
  },
  {
    name: 'IPv6 last fragment: addresses only',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 7, offset: 2464, nextHeader: PROTO.udp }).payload(10).build(),
    fields: { isFragment: true, firstFragment: false, moreFragments: false, fragOffset: 2464, hasPorts: false },
    hash: addressesOnly(C6, V6),
  },
  {
    name: 'IPv6 atomic fragment (RFC 6946) is a whole packet',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 9 }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { isFragment: false, firstFragment: false, hasPorts: true, sport: 40000 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'IPv6 fragment header cut short',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 9 }).build().subarray(0, 44),
    fields: { family: 6, truncated: true, isFragment: false },
    hash: addressesOnly(C6, V6),
  },
  // ICMP errors: the hash is the hash of the flow the quoted packet answers.
  {
    name: 'ICMP frag-needed quoting a TCP reply',
    packet: ipv4({ src: R4, dst: V4 }).icmp(3, 4, { rest: 1400 }).inner(quote(tcp4Reply, 548)).build(),
    fields: {
      family: 4,
      l4Proto: 1,
      icmpType: 3,
      icmpCode: 4,
      icmpError: true,
      innerL3Off: 28,
      innerL4Off: 48,
      proto: 6,
      sport: 40000,
      dport: 80,
      srcOff: 28 + 16,
      dstOff: 28 + 12,
    },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'ICMP port unreachable quoting a UDP reply (8 bytes of it)',
    packet: ipv4({ src: R4, dst: V4 }).icmp(3, 3).inner(quote(udp4Reply, 28)).build(),
    fields: { icmpError: true, proto: 17, sport: 5001, dport: 53, hasPorts: true },
    hash: hashTuple(tupleUdp4, 1),
  },
  {
    name: 'ICMP time exceeded quoting an SCTP reply',
    packet: ipv4({ src: R4, dst: V4 }).icmp(11, 0).inner(quote(sctp4Reply, 28)).build(),
    fields: { icmpError: true, icmpType: 11, proto: 132, sport: 7000, dport: 7001 },
    hash: hashTuple(tupleSctp4, 1),
    hash0: hashTuple(tupleSctp4, 0),
  },
  {
    name: 'ICMP parameter problem quoting a TCP reply',
    packet: ipv4({ src: R4, dst: V4 }).icmp(12, 0).inner(quote(tcp4Reply, 60)).build(),
    fields: { icmpError: true, icmpType: 12, proto: 6 },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'ICMP redirect and source quench are errors too',
    packet: ipv4({ src: R4, dst: V4 }).icmp(5, 1).inner(quote(tcp4Reply, 28)).build(),
    fields: { icmpError: true, icmpType: 5 },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'ICMP error quoting only 4 bytes of the transport header still has the ports',
    packet: ipv4({ src: R4, dst: V4 }).icmp(3, 1).inner(quote(tcp4Reply, 24)).build(),
    fields: { icmpError: true, hasPorts: true, truncated: false },
    hash: hashTuple(tupleTcp4, 1),
  },
  {
    name: 'ICMP error quoting a cut transport header: swapped addresses only',
    packet: ipv4({ src: R4, dst: V4 }).icmp(3, 1).inner(quote(tcp4Reply, 22)).build(),
    fields: { icmpError: true, hasPorts: false, truncated: true, proto: 6 },
    hash: addressesOnly(C4, V4),
  },
  {
    name: 'ICMP error quoting a cut IP header: outer addresses only',
    packet: ipv4({ src: R4, dst: V4 }).icmp(3, 1).inner(quote(tcp4Reply, 19)).build(),
    fields: { icmpError: false, icmpType: 3, truncated: true, proto: 1 },
    hash: addressesOnly(R4, V4),
  },
  {
    name: 'ICMP error quoting a later fragment: swapped addresses and protocol',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(11, 1)
      .inner(ipv4({ src: V4, dst: C4, fragOffset: 1480, proto: PROTO.udp }).payload(8).build())
      .build(),
    fields: { icmpError: true, hasPorts: false, truncated: false, proto: 17 },
    hash: oracle({ src: C4, dst: V4, proto: 17 }),
  },
  {
    name: 'ICMP error that is itself a first fragment is not followed inside',
    packet: ipv4({ src: R4, dst: V4, mf: true }).icmp(3, 4).inner(quote(tcp4Reply, 548)).build(),
    fields: { icmpError: false, isFragment: true, firstFragment: true, icmpType: 3, proto: 1, fragmentedIcmpError: true },
    hash: oracle({ src: R4, dst: V4, proto: 1 }),
  },
  {
    name: 'ICMP echo request: addresses, protocol and identifier',
    packet: ipv4({ src: C4, dst: V4 }).icmp(8, 0, { id: 0x1234, seq: 9 }).payload(56).build(),
    fields: { icmpType: 8, icmpCode: 0, echoId: 0x1234, proto: 1, hasPorts: false, icmpError: false },
    hash: oracle({ src: C4, dst: V4, proto: 1, user: 0x1234 }),
  },
  {
    name: 'ICMP echo reply: addresses and protocol',
    packet: ipv4({ src: C4, dst: V4 }).icmp(0, 0, { id: 0x1234, seq: 9 }).build(),
    fields: { icmpType: 0, echoId: 0, proto: 1 },
    hash: oracle({ src: C4, dst: V4, proto: 1 }),
  },
  {
    name: 'ICMP error quoting an echo reply hashes like the echo request',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(11, 0)
      .inner(ipv4({ src: V4, dst: C4 }).icmp(0, 0, { id: 0x1234, seq: 9 }).build())
      .build(),
    fields: { icmpError: true, proto: 1, echoId: 0x1234 },
    hash: oracle({ src: C4, dst: V4, proto: 1, user: 0x1234 }),
  },
  {
    name: 'ICMP header cut short',
    packet: ipv4({ src: C4, dst: V4 }).icmp(8, 0, { id: 1 }).build().subarray(0, 27),
    fields: { icmpType: -1, truncated: true },
    hash: addressesOnly(C4, V4),
  },
  {
    name: 'ICMPv6 packet too big quoting a TCP reply',
    packet: ipv6({ src: R6, dst: V6 }).icmp(2, 0, { rest: 1280 }).inner(quote(tcp6Reply, 1232)).build(),
    fields: {
      family: 6,
      l4Proto: 58,
      icmpType: 2,
      icmpError: true,
      innerL3Off: 48,
      innerL4Off: 88,
      proto: 6,
      sport: 40000,
      dport: 80,
      srcOff: 48 + 24,
      dstOff: 48 + 8,
    },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'ICMPv6 destination unreachable quoting UDP behind a destination options header',
    packet: ipv6({ src: R6, dst: V6 }).icmp(1, 4).inner(udp6ReplyExt).build(),
    fields: { icmpError: true, innerL4Off: 48 + 48, proto: 17, sport: 5001, dport: 53 },
    hash: hashTuple(tupleUdp6, 1),
  },
  {
    name: 'ICMPv6 time exceeded',
    packet: ipv6({ src: R6, dst: V6 }).icmp(3, 0).inner(quote(tcp6Reply, 64)).build(),
    fields: { icmpError: true, icmpType: 3, proto: 6 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'ICMPv6 parameter problem',
    packet: ipv6({ src: R6, dst: V6 }).icmp(4, 1, { rest: 40 }).inner(quote(tcp6Reply, 64)).build(),
    fields: { icmpError: true, icmpType: 4, proto: 6 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'ICMPv6 error behind a hop-by-hop header',
    packet: ipv6({ src: R6, dst: V6 }).ext('hop').icmp(2, 0, { rest: 1280 }).inner(quote(tcp6Reply, 100)).build(),
    fields: { icmpError: true, l4Off: 48, innerL3Off: 56 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'ICMPv6 error quoting an IPv4 packet is not followed inside',
    packet: ipv6({ src: R6, dst: V6 }).icmp(1, 0).inner(tcp4Reply.subarray(0, 60)).build(),
    fields: { icmpError: false, truncated: true, icmpType: 1 },
    hash: addressesOnly(R6, V6),
  },
  {
    name: 'ICMPv6 echo request',
    packet: ipv6({ src: C6, dst: V6 }).icmp(128, 0, { id: 0xbeef, seq: 1 }).payload(56).build(),
    fields: { icmpType: 128, echoId: 0xbeef, proto: 58 },
    hash: oracle({ src: C6, dst: V6, proto: 58, user: 0xbeef }),
  },
  {
    name: 'ICMPv6 neighbour solicitation: addresses and protocol',
    packet: ipv6({ src: C6, dst: V6 }).icmp(135, 0).payload(16).build(),
    fields: { icmpType: 135, icmpError: false, echoId: 0, proto: 58 },
    hash: oracle({ src: C6, dst: V6, proto: 58 }),
  },
  {
    name: 'ICMPv4 inside IPv6 is just an unknown protocol',
    packet: ipv6({ src: C6, dst: V6 }).proto(PROTO.icmp).payload(16).build(),
    fields: { icmpType: -1, proto: 1 },
    hash: oracle({ src: C6, dst: V6, proto: 1 }),
  },
  {
    name: 'SCTP in UDP (--sctp_encap=9899) is keyed as SCTP on the inner ports',
    packet: ipv4({ src: C4, dst: V4 })
      .udp({ sport: 9899, dport: 9899 })
      .payload(Uint8Array.of(0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 0, 0, 0, 0, 0))
      .build(),
    fields: { proto: 132, sctpEncap: true, sport: 7000, dport: 7001, l4Proto: 17 },
    hash: hashTuple(tupleSctp4, 1),
    hash0: hashTuple(tupleSctp4, 0),
    encap: 9899,
  },
  {
    name: 'UDP to another port is not SCTP in UDP',
    packet: udp4,
    fields: { proto: 17, sctpEncap: false },
    hash: hashTuple(tupleUdp4, 1),
    encap: 9899,
  },
  {
    name: 'ICMP error quoting SCTP in UDP (source port is the encapsulation port)',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(3, 4)
      .inner(
        ipv4({ src: V4, dst: C4 })
          .udp({ sport: 9899, dport: 9899 })
          .payload(Uint8Array.of(0x1b, 0x59, 0x1b, 0x58, 0, 0, 0, 0))
          .build(),
      )
      .build(),
    fields: { icmpError: true, proto: 132, sctpEncap: true, sport: 7000, dport: 7001 },
    hash: hashTuple(tupleSctp4, 1),
    hash0: hashTuple(tupleSctp4, 0),
    encap: 9899,
  },
];

describe('parsePacket fixtures', () => {
  it.each(fixtures)('$name', (f) => {
    const p = new PacketInfo();
    parsePacket(f.packet, 0, f.packet.length, p, f.encap ?? 0);
    expect(pick(p, f.fields)).toEqual(f.fields);
    expect(packetHash(f.packet, p, 1)).toBe(f.hash);
    expect(packetHash(f.packet, p, 0)).toBe(f.hash0 ?? f.hash);
    if (p.family !== 0) {
      // The summed-terms hash equals plain djb2 over the key.
      const key = new Uint8Array(40);
      writeHashKey(f.packet, p, key);
      const addressOnly = p.truncated || (p.isFragment && !p.firstFragment);
      expect(packetHash(f.packet, p, 1)).toBe(addressOnly ? hashAddresses(key) : hashKey(key, 1));
      expect(packetHash(f.packet, p, 0)).toBe(addressOnly ? hashAddresses(key) : hashKey(key, 0));
    }
  });

  it.each(fixtures)('$name: same result at an offset inside a larger buffer', (f) => {
    const p = new PacketInfo();
    const big = new Uint8Array(f.packet.length + 14 + 50).fill(0xa5);
    big.set(f.packet, 14);
    parsePacket(big, 14, f.packet.length, p, f.encap ?? 0);
    const shifted: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(f.fields)) {
      const offsetField = ['l3Off', 'end', 'l4Off', 'srcOff', 'dstOff', 'innerL3Off', 'innerL4Off'].includes(k);
      shifted[k] = offsetField && typeof v === 'number' && v >= 0 && p.family !== 0 ? v + 14 : v;
    }
    expect(pick(p, f.fields)).toEqual(shifted);
    expect(packetHash(big, p, 1)).toBe(f.hash);
  });
});

// PARSE_NFQLB: the reference's key where it forwards the packet (docs/compatibility.md);
// test/conformance/nfqlb-packet-vectors.test.ts checks it against the reference's own verdicts.
const nfqlbFixtures: Omit<Fixture, 'hash0' | 'encap'>[] = [
  {
    name: 'IPv6 first fragment: the fragment header is read as the ports',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 7, mf: true }).udp({ sport: 5001, dport: 53 }).payload(100).build(),
    fields: { isFragment: true, firstFragment: true, fragId: 7, l4Off: 40, proto: 17, sport: 17 << 8, dport: 1 },
    hash: oracle({ src: C6, dst: V6, proto: 17, sport: 17 << 8, dport: 1 }),
  },
  {
    name: 'IPv6 atomic fragment: a first fragment',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 9 }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { isFragment: true, firstFragment: true, moreFragments: false, fragId: 9, sport: 6 << 8, dport: 0 },
    hash: oracle({ src: C6, dst: V6, proto: 6, sport: 6 << 8, dport: 0 }),
  },
  {
    name: 'IPv6 later fragment: addresses only, as always',
    packet: ipv6({ src: C6, dst: V6 }).ext('frag', { id: 7, offset: 1232, nextHeader: PROTO.udp }).payload(100).build(),
    fields: { isFragment: true, firstFragment: false, fragId: 7, hasPorts: false },
    hash: addressesOnly(C6, V6),
  },
  {
    name: 'IPv6 16-byte destination options: the upper layer is read 8 bytes early',
    packet: ipv6({ src: C6, dst: V6 }).ext('dst', { length: 16 }).tcp({ sport: 40000, dport: 80 }).build(),
    fields: { l4Off: 48, proto: 6, sport: 0, dport: 0 },
    hash: oracle({ src: C6, dst: V6, proto: 6 }),
  },
  {
    name: 'IPv6 8-byte hop-by-hop: the reference drops it, the correct key is used',
    packet: ipv6({ src: C6, dst: V6 }).ext('hop').tcp({ sport: 40000, dport: 80 }).build(),
    fields: { l4Off: 48, proto: 6, sport: 40000, dport: 80 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'IPv6 AH is an upper-layer protocol',
    packet: ipv6({ src: C6, dst: V6 }).ext('ah').tcp({ sport: 40000, dport: 80 }).build(),
    fields: { proto: 51, hasPorts: false },
    hash: oracle({ src: C6, dst: V6, proto: 51 }),
  },
  {
    name: 'ICMP parameter problem: not followed inside',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(12, 0, { rest: 20 << 24 })
      .inner(quote(tcp4Reply, 28))
      .build(),
    fields: { icmpError: false, icmpType: 12, proto: 1 },
    hash: oracle({ src: R4, dst: V4, proto: 1 }),
  },
  {
    name: 'ICMPv6 time exceeded: not followed inside',
    packet: ipv6({ src: R6, dst: V6 }).icmp(3, 0).inner(quote(tcp6Reply, 64)).build(),
    fields: { icmpError: false, icmpType: 3, proto: 58 },
    hash: oracle({ src: R6, dst: V6, proto: 58 }),
  },
  {
    name: 'ICMP error quoting an echo reply: no identifier',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(11, 0)
      .inner(ipv4({ src: V4, dst: C4 }).icmp(0, 0, { id: 0x1234, seq: 9 }).build())
      .build(),
    fields: { icmpError: true, proto: 1, echoId: 0 },
    hash: oracle({ src: C4, dst: V4, proto: 1 }),
  },
  {
    name: 'ICMP error quoting a later fragment: its data is read as ports',
    packet: ipv4({ src: R4, dst: V4 })
      .icmp(11, 1)
      .inner(
        ipv4({ src: V4, dst: C4, fragOffset: 1480, proto: PROTO.udp })
          .payload(Uint8Array.of(0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0))
          .build(),
      )
      .build(),
    fields: { icmpError: true, proto: 17, sport: 0x5678, dport: 0x1234 },
    hash: oracle({ src: C4, dst: V4, proto: 17, sport: 0x5678, dport: 0x1234 }),
  },
  {
    name: 'ICMPv6 error quoting a fragment: the reference drops it, the correct key is used',
    packet: ipv6({ src: R6, dst: V6 }).icmp(2, 0, { rest: 1280 }).inner(fragmentPacket(tcp6Reply, 1232)[0]!.subarray(0, 100)).build(),
    fields: { icmpError: true, proto: 6, sport: 40000, dport: 80 },
    hash: hashTuple(tupleTcp6, 1),
  },
  {
    name: 'ICMP header cut short: keyed on the type and identifier it has',
    packet: ipv4({ src: C4, dst: V4 }).icmp(8, 0, { id: 0x1234 }).build().subarray(0, 27),
    fields: { icmpType: 8, echoId: 0x1234, truncated: false },
    hash: oracle({ src: C4, dst: V4, proto: 1, user: 0x1234 }),
  },
];

describe('parsePacket PARSE_NFQLB (--compat=nfqlb)', () => {
  it.each(nfqlbFixtures)('$name', (f) => {
    const p = new PacketInfo();
    parsePacket(f.packet, 0, f.packet.length, p, 0, PARSE_NFQLB);
    expect(pick(p, f.fields)).toEqual(f.fields);
    expect(p.mode).toBe(PARSE_NFQLB);
    expect(packetHash(f.packet, p, 1)).toBe(f.hash);
    const key = new Uint8Array(40);
    writeHashKey(f.packet, p, key);
    expect(packetHash(f.packet, p, 1)).toBe(p.isFragment && !p.firstFragment ? hashAddresses(key) : hashKey(key, 1));
  });

  it('keys the other fixtures as the correct parse does', () => {
    const p = new PacketInfo();
    const differ: string[] = [];
    for (const f of fixtures) {
      parsePacket(f.packet, 0, f.packet.length, p, f.encap ?? 0, PARSE_NFQLB);
      if (packetHash(f.packet, p, 1) !== f.hash) differ.push(f.name);
    }
    // (An 8-byte hop-by-hop header the reference drops: those get the correct key.)
    expect(differ).toEqual([
      'IPv6 a 2 KB destination options header',
      'IPv6 atomic fragment (RFC 6946) is a whole packet',
      'ICMP parameter problem quoting a TCP reply',
      'ICMP error quoting a later fragment: swapped addresses and protocol',
      'ICMP error quoting an echo reply hashes like the echo request',
      'ICMP header cut short',
      'ICMPv6 time exceeded',
      'ICMPv6 parameter problem',
      'ICMPv6 error quoting an IPv4 packet is not followed inside',
    ]);
  });
});

describe('ICMP errors reach the target of the flow', () => {
  it.each([
    ['IPv4 TCP', tcp4, tcp4Reply, 4],
    ['IPv4 UDP', udp4, udp4Reply, 4],
    ['IPv6 TCP', tcp6, tcp6Reply, 6],
    ['IPv6 UDP with an extension header', udp6, udp6ReplyExt, 6],
  ] as const)('%s: error hash == flow hash', (_, flow, reply, family) => {
    const p = new PacketInfo();
    parsePacket(flow, 0, flow.length, p);
    const flowHash = packetHash(flow, p, 1);
    const err =
      family === 4
        ? ipv4({ src: R4, dst: V4 }).icmp(3, 4, { rest: 1400 }).inner(quote(reply, 548)).build()
        : ipv6({ src: R6, dst: V6 }).icmp(2, 0, { rest: 1280 }).inner(quote(reply, 1232)).build();
    parsePacket(err, 0, err.length, p);
    expect(p.icmpError).toBe(true);
    expect(packetHash(err, p, 1)).toBe(flowHash);
  });
});

describe('truncation at every length', () => {
  const valid = fixtures.filter((f) => f.fields.family !== 0 && f.packet.length < 2500);

  it.each(valid)('$name', (f) => {
    const p = new PacketInfo();
    parsePacket(f.packet, 0, f.packet.length, p, f.encap ?? 0);
    const full = { hash: packetHash(f.packet, p, 1), family: p.family, portsEnd: p.hasPorts ? portsEnd(p) : -1 };
    const minLen = full.family === 4 ? (f.packet[0]! & 0x0f) * 4 : 40;
    for (let len = 0; len <= f.packet.length; len++) {
      // Both ways a packet gets short: the length we are told, and the bytes actually captured.
      for (const buf of [f.packet, f.packet.subarray(0, len)]) {
        parsePacket(buf, 0, len, p, f.encap ?? 0);
        const h = packetHash(buf, p, 1);
        if (len < minLen) {
          expect(p.family, `len ${len}`).toBe(0);
          continue;
        }
        expect(p.family, `len ${len}`).toBe(full.family);
        expect(p.end).toBeLessThanOrEqual(len);
        if (p.hasPorts) expect(portsEnd(p)).toBeLessThanOrEqual(len);
        // Once the bytes the key needs are there, the hash is the full packet's.
        if (full.portsEnd >= 0 && len >= full.portsEnd) expect(h, `len ${len}`).toBe(full.hash);
      }
    }
  });
});

describe('packetAddressHash and writeHashKey', () => {
  it('hash the key addresses only (the LB-tier fragment rule)', () => {
    const p = new PacketInfo();
    parsePacket(tcp4, 0, tcp4.length, p);
    expect(packetAddressHash(tcp4, p)).toBe(addressesOnly(C4, V4));
    const err = ipv6({ src: R6, dst: V6 }).icmp(2, 0).inner(quote(tcp6Reply, 100)).build();
    parsePacket(err, 0, err.length, p);
    expect(packetAddressHash(err, p)).toBe(addressesOnly(C6, V6));
  });

  it('write the 40-byte key at an offset', () => {
    const p = new PacketInfo();
    parsePacket(tcp6, 0, tcp6.length, p);
    const out = new Uint8Array(50).fill(0xff);
    writeHashKey(tcp6, p, out, 5);
    expect(Buffer.from(out.subarray(5, 45)).toString('hex')).toBe(
      '20000000000000000000000000000007' + '10000000000000000000000000000001' + '0000' + '0600' + '9c40' + '0050',
    );
    expect(out[4]).toBe(0xff);
    expect(out[45]).toBe(0xff);
  });

  it('give 0 for an unparsed packet', () => {
    const p = new PacketInfo();
    parsePacket(new Uint8Array(10), 0, 10, p);
    expect(packetHash(new Uint8Array(10), p, 1)).toBe(0);
    expect(packetAddressHash(new Uint8Array(10), p)).toBe(0);
  });
});

describe('parsePacket arguments', () => {
  it('clamps to the buffer and refuses offsets outside it', () => {
    const p = new PacketInfo();
    parsePacket(tcp4, 0, 1_000_000, p);
    expect(p.end).toBe(tcp4.length);
    parsePacket(tcp4, tcp4.length, 10, p);
    expect(p.family).toBe(0);
    parsePacket(tcp4, -1, 10, p);
    expect(p.family).toBe(0);
    parsePacket(tcp4, 0, -5, p);
    expect(p.family).toBe(0);
    parsePacket(tcp4, NaN, 40, p);
    expect(p.family).toBe(0);
    parsePacket(tcp4, 0, NaN, p);
    expect(p.family).toBe(0);
    parsePacket(tcp4, 0.5, 40, p);
    expect(p.family).toBe(0);
  });

  it('resets every field between packets', () => {
    const p = new PacketInfo();
    const err = ipv6({ src: R6, dst: V6 }).ext('frag', { id: 5, mf: true }).icmp(128, 0, { id: 3 }).build();
    parsePacket(err, 0, err.length, p);
    parsePacket(new Uint8Array(4), 0, 4, p);
    expect({ ...p }).toEqual({ ...new PacketInfo() });
  });

  it('does not write to the packet', () => {
    const copy = tcp6.slice();
    parsePacket(tcp6, 0, tcp6.length, new PacketInfo());
    expect(tcp6).toEqual(copy);
  });
});

describe('packet builder', () => {
  it('writes valid IPv4 header and L4 checksums', () => {
    for (const pkt of [tcp4, udp4, tcp4Reply, ipv4({ src: C4, dst: V4 }).icmp(8, 0, { id: 1 }).payload(7).build()]) {
      expect(checksum(pkt, 0, 20, 0)).toBe(0);
      const proto = pkt[9]!;
      const len = pkt.length - 20;
      const pseudo = proto === PROTO.icmp ? 0 : sumWords(pkt.subarray(12, 20)) + len + proto;
      expect(checksum(pkt, 20, pkt.length, pseudo)).toBe(0);
    }
  });

  it('writes valid IPv6 L4 checksums past extension headers', () => {
    const pkt = ipv6({ src: C6, dst: V6 }).ext('hop').ext('dst').tcp({ sport: 1, dport: 2 }).payload(3).build();
    const len = pkt.length - 56;
    expect(checksum(pkt, 56, pkt.length, sumWords(pkt.subarray(8, 40)) + len + PROTO.tcp)).toBe(0);
    const icmp = ipv6({ src: C6, dst: V6 }).icmp(128, 0, { id: 1 }).build();
    expect(checksum(icmp, 40, icmp.length, sumWords(icmp.subarray(8, 40)) + 8 + PROTO.icmp6)).toBe(0);
  });

  it('computes CRC32c (RFC 3720 test vector) for SCTP', () => {
    expect(crc32c(new Uint8Array(32), 0, 32)).toBe(0x8a9136aa);
    const pkt = sctp4.slice();
    const stored = (pkt[28]! | (pkt[29]! << 8) | (pkt[30]! << 16) | (pkt[31]! << 24)) >>> 0;
    pkt.fill(0, 28, 32);
    expect(stored).toBe(crc32c(pkt, 20, pkt.length));
  });

  it('fragments IPv4 and IPv6 packets that parse as first / later fragments', () => {
    for (const whole of [tcp4Reply, ipv6({ src: V6, dst: C6 }).ext('hop').udp({ sport: 53, dport: 5001 }).payload(3000).build()]) {
      const frags = fragmentPacket(whole, 1232, 77);
      expect(frags.length).toBeGreaterThan(1);
      const p = new PacketInfo();
      let data = 0;
      frags.forEach((f, i) => {
        parsePacket(f, 0, f.length, p);
        expect(p.isFragment).toBe(true);
        expect(p.firstFragment).toBe(i === 0);
        expect(p.moreFragments).toBe(i < frags.length - 1);
        expect(p.fragId).toBe(77);
        expect(p.fragOffset).toBe(data);
        expect(p.hasPorts).toBe(i === 0);
        data += f.length - p.l4Off;
        if (p.family === 4) expect(checksum(f, 0, 20, 0)).toBe(0);
      });
      parsePacket(whole, 0, whole.length, p);
      expect(data).toBe(whole.length - (p.family === 4 ? 20 : 48));
    }
  });
});

function pick(p: PacketInfo, fields: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(fields)) out[k] = p[k as keyof PacketInfo];
  return out;
}

/** Where the key's ports end in the packet (outer or quoted, plain or SCTP-in-UDP). */
function portsEnd(p: PacketInfo): number {
  const l4 = p.icmpError ? p.innerL4Off : p.l4Off;
  return l4 + (p.sctpEncap ? 12 : 4);
}

function sumWords(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i]! << 8) | b[i + 1]!;
  return s;
}

function patch(b: Uint8Array, at: number, v: number): Uint8Array {
  b[at] = v;
  return b;
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
