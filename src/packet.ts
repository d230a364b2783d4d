// IP packet parsing for the load-balancer's hot path: NFQUEUE hands us the IP header first
// (no Ethernet). Zero allocation: the caller owns one PacketInfo and reuses it. Never throws on
// packet bytes; every read is bounds-checked against the usable end of the packet.
//
// What the flow key is (the reference nfqlb's choices, kept for hash compatibility):
// - TCP, UDP, SCTP: addresses, protocol and ports.
// - ICMP/ICMPv6 errors: the quoted packet's addresses and ports, swapped, because the quoted
//   packet is one the target sent, and the error must reach that target.
// - ICMP echo request: addresses, protocol and the echo identifier.
// - anything else (and other ICMP): addresses and protocol.
// - non-first fragments: addresses only (they carry no ports; the fragment table maps them).
//
// PARSE_NFQLB (`--compat=nfqlb`) keys packets as the reference does wherever it forwards them,
// its bugs included; where it drops a packet, the correct parse is used (docs/compatibility.md).

// IP protocol numbers (IANA), the ones the parser and the flow key know.
export const IPPROTO_HOPOPTS = 0;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ROUTING = 43;
export const IPPROTO_FRAGMENT = 44;
export const IPPROTO_AH = 51;
export const IPPROTO_ICMPV6 = 58;
export const IPPROTO_DSTOPTS = 60;
export const IPPROTO_SCTP = 132;

/** parsePacket modes: the correct parse, or the reference nfqlb 1.2.0's keys (`--compat=nfqlb`). */
export const PARSE_CORRECT = 0;
export const PARSE_NFQLB = 1;

const ICMP_ECHO_REPLY = 0;
const ICMP_ECHO_REQUEST = 8;
const ICMP6_ECHO_REQUEST = 128;
const ICMP6_ECHO_REPLY = 129;

/** A chain longer than this is an attack or garbage; the packet is treated as truncated. */
const MAX_EXTENSION_HEADERS = 16;

/** The parse result. All fields are numbers or booleans so the object stays monomorphic. */
export class PacketInfo {
  /** The parse mode (PARSE_CORRECT or PARSE_NFQLB); a re-parse of the packet uses the same. */
  mode = PARSE_CORRECT;
  /** 0: not an IP packet we can read (too short, bad version or header length); else 4 or 6. */
  family = 0;
  /** Offset of the IP header. */
  l3Off = 0;
  /** One past the last usable byte: min(off + len, buf.length, end of the IP datagram). */
  end = 0;
  /**
   * Offset of the first byte after the IP header(s) (the transport header, or fragment data
   * for a non-first fragment); -1 if the IPv6 extension chain could not be walked.
   */
  l4Off = -1;
  /** The outer upper-layer protocol after extension headers (1 or 58 for any ICMP); -1 unknown. */
  l4Proto = -1;

  /** Flow key protocol: l4Proto, or the quoted packet's for ICMP errors, 132 for SCTP-in-UDP. */
  proto = -1;
  /** Offsets of the flow key's addresses in the buffer (the quoted ones, swapped, for ICMP errors). */
  srcOff = 0;
  dstOff = 0;
  /** 4 or 16: the length of the key addresses (0 while family is 0). */
  addrLen = 0;
  /** True when sport/dport are part of the flow key. */
  hasPorts = false;
  sport = 0;
  dport = 0;
  /** The key's user_defined word: the ICMP echo identifier (of the request, or of a quoted reply), else 0. */
  echoId = 0;
  /**
   * The addresses are valid but a header the key needs is cut (transport header, extension
   * header, ICMP header or quoted packet): hash on the addresses only.
   */
  truncated = false;

  /** Fragment (IPv4 MF or offset, IPv6 fragment header other than an atomic one). */
  isFragment = false;
  /** Offset 0: carries the transport header; later fragments must follow its target. */
  firstFragment = false;
  moreFragments = false;
  /** IPv4: the 16-bit identification; IPv6: the 32-bit fragment header identification. */
  fragId = 0;
  /** Fragment offset in bytes. */
  fragOffset = 0;

  /** ICMP/ICMPv6 type and code, -1 when not ICMP (or the ICMP header is cut). */
  icmpType = -1;
  icmpCode = -1;
  /** An ICMP error whose quoted packet gave the flow key. */
  icmpError = false;
  /** An IPv4 ICMP error that is itself fragmented: dropped with its later fragments, as the reference does. */
  fragmentedIcmpError = false;
  /** The quoted packet's IP header and transport header offsets (-1 if none). */
  innerL3Off = -1;
  innerL4Off = -1;
  /** UDP to the SCTP encapsulation port: proto is 132 and the ports are the inner SCTP ones. */
  sctpEncap = false;

  reset(): void {
    this.mode = PARSE_CORRECT;
    this.family = 0;
    this.l3Off = 0;
    this.end = 0;
    this.l4Off = -1;
    this.l4Proto = -1;
    this.proto = -1;
    this.srcOff = 0;
    this.dstOff = 0;
    this.addrLen = 0;
    this.hasPorts = false;
    this.sport = 0;
    this.dport = 0;
    this.echoId = 0;
    this.truncated = false;
    this.isFragment = false;
    this.firstFragment = false;
    this.moreFragments = false;
    this.fragId = 0;
    this.fragOffset = 0;
    this.icmpType = -1;
    this.icmpCode = -1;
    this.icmpError = false;
    this.fragmentedIcmpError = false;
    this.innerL3Off = -1;
    this.innerL4Off = -1;
    this.sctpEncap = false;
  }
}

function u16(buf: Uint8Array, at: number): number {
  return (buf[at]! << 8) | buf[at + 1]!;
}

function u32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}

/**
 * Parses the IP packet in buf[off, off + len) into p. `sctpEncapPort` (nfqlb's --sctp_encap,
 * 0 = off) is the UDP port that carries SCTP; such packets are keyed as SCTP. `mode`: PARSE_*.
 */
export function parsePacket(buf: Uint8Array, off: number, len: number, p: PacketInfo, sctpEncapPort = 0, mode = PARSE_CORRECT): void {
  p.reset();
  p.mode = mode;
  let end = off + len;
  if (end > buf.length) end = buf.length;
  // Also refuses NaN and fractional offsets (a caller's bug must not become a wild read).
  if (!(off >= 0 && end > off) || (off | 0) !== off) return;
  const version = buf[off]! >> 4;
  if (version === 4) parseIPv4(buf, off, end, p, sctpEncapPort);
  else if (version === 6) parseIPv6(buf, off, end, p, sctpEncapPort);
}

function parseIPv4(buf: Uint8Array, off: number, end: number, p: PacketInfo, encap: number): void {
  if (end - off < 20) return;
  const headerLen = (buf[off]! & 0x0f) * 4;
  if (headerLen < 20 || off + headerLen > end) return;
  // Total length 0 is what a GSO super-packet carries: trust the capture then.
  const totalLen = u16(buf, off + 2);
  if (totalLen !== 0) {
    if (totalLen < headerLen) return;
    if (off + totalLen < end) end = off + totalLen;
  }
  p.family = 4;
  p.l3Off = off;
  p.end = end;
  p.addrLen = 4;
  p.srcOff = off + 12;
  p.dstOff = off + 16;
  const proto = buf[off + 9]!;
  p.l4Proto = proto;
  p.proto = proto;
  p.l4Off = off + headerLen;
  const frag = u16(buf, off + 6);
  const fragOffset = (frag & 0x1fff) * 8;
  const more = (frag & 0x2000) !== 0;
  if (more || fragOffset !== 0) {
    p.isFragment = true;
    p.firstFragment = fragOffset === 0;
    p.moreFragments = more;
    p.fragId = u16(buf, off + 4);
    p.fragOffset = fragOffset;
    if (fragOffset !== 0) return;
  }
  parseTransport(buf, p.l4Off, end, proto, p, encap);
}

function parseIPv6(buf: Uint8Array, off: number, end: number, p: PacketInfo, encap: number): void {
  if (end - off < 40) return;
  // Payload length 0 is a jumbogram or a GSO super-packet: trust the capture then.
  const payloadLen = u16(buf, off + 4);
  if (payloadLen !== 0 && off + 40 + payloadLen < end) end = off + 40 + payloadLen;
  p.family = 6;
  p.l3Off = off;
  p.end = end;
  p.addrLen = 16;
  p.srcOff = off + 8;
  p.dstOff = off + 24;
  const nh = buf[off + 6]!;
  let l4 = p.mode === PARSE_NFQLB ? walkNfqlb(buf, off + 40, end, nh, true) : -1;
  const nfqlbWalk = l4 >= 0;
  if (!nfqlbWalk) l4 = walkExtensions(buf, off + 40, end, nh);
  if (walkFragOff >= 0) {
    const offsetFlags = u16(buf, walkFragOff + 2);
    const fragOffset = offsetFlags & 0xfff8;
    const more = (offsetFlags & 1) !== 0;
    // An atomic fragment (offset 0, no M flag, RFC 6946) is a whole packet; the reference's walk
    // makes it a first fragment.
    if (more || fragOffset !== 0 || nfqlbWalk) {
      p.isFragment = true;
      p.firstFragment = fragOffset === 0;
      p.moreFragments = more;
      p.fragId = u32(buf, walkFragOff + 4);
      p.fragOffset = fragOffset;
    }
  }
  if (l4 < 0) {
    p.truncated = true;
    return;
  }
  p.l4Proto = walkNext;
  p.proto = walkNext;
  // Only the reference's walk ends past the packet; it keys that on the addresses and protocol.
  if (l4 > end) return;
  p.l4Off = l4;
  if (p.isFragment && !p.firstFragment) return;
  parseTransport(buf, l4, end, walkNext, p, encap);
}

// Results of the last walkExtensions call; module state so that walking allocates nothing.
let walkNext = 0;
let walkFragOff = -1;

/**
 * Skips IPv6 extension headers starting with next-header `nh` at `at`. Returns the offset of
 * the upper-layer header (its protocol in walkNext), or -1 if a header is cut or the chain is
 * too long. Stops after a non-first fragment header: what follows is fragment data. ESP and
 * no-next-header end the chain like any upper-layer protocol.
 */
function walkExtensions(buf: Uint8Array, at: number, end: number, nh: number): number {
  walkFragOff = -1;
  for (let n = 0; n < MAX_EXTENSION_HEADERS; n++) {
    switch (nh) {
      case IPPROTO_HOPOPTS:
      case IPPROTO_ROUTING:
      case IPPROTO_DSTOPTS:
        if (at + 2 > end) return -1;
        nh = buf[at]!;
        at += (buf[at + 1]! + 1) * 8;
        break;
      case IPPROTO_AH:
        if (at + 2 > end) return -1;
        nh = buf[at]!;
        at += (buf[at + 1]! + 2) * 4;
        break;
      case IPPROTO_FRAGMENT:
        if (at + 8 > end) return -1;
        walkFragOff = at;
        nh = buf[at]!;
        at += 8;
        if ((u16(buf, walkFragOff + 2) & 0xfff8) !== 0) {
          walkNext = nh;
          return at <= end ? at : -1;
        }
        break;
      default:
        if (at > end) return -1;
        walkNext = nh;
        return at;
    }
  }
  return -1;
}

/**
 * The reference's extension walk (getHashKeyIpv6 and getInnerHashKeyIpv6 in its iputils.c), for
 * PARSE_NFQLB: it advances ip6e_len * 8 bytes, one 8-byte unit short, refuses a length of 0 and
 * does not know AH. `outer` stops at a fragment header (nfqlbFragment); in a quoted packet a
 * fragment header is one more header, of length 0. Returns where the reference reads the upper
 * layer (its protocol in walkNext; possibly past `end`), or -1 where it drops the packet.
 */
function walkNfqlb(buf: Uint8Array, at: number, end: number, nh: number, outer: boolean): number {
  walkFragOff = -1;
  while (isNfqlbExtension(nh)) {
    if (outer && nh === IPPROTO_FRAGMENT) return nfqlbFragment(buf, at, end);
    if (at + 2 > end || buf[at + 1] === 0) return -1;
    nh = buf[at]!;
    at += buf[at + 1]! * 8;
  }
  walkNext = nh;
  return at;
}

/**
 * The reference at an outer fragment header. A later fragment ends the walk. After a first
 * fragment (offset 0, an atomic one too) it walks on from the fragment header itself, whose
 * reserved byte is its "length": the upper layer is read at the fragment header, whose first 4
 * bytes become the ports. -1 where it would read past the packet or loop for ever.
 */
function nfqlbFragment(buf: Uint8Array, at: number, end: number): number {
  if (at + 8 > end) return -1;
  walkFragOff = at;
  if ((u16(buf, at + 2) & 0xfff8) !== 0) {
    walkNext = buf[at]!;
    return at + 8;
  }
  let nh = IPPROTO_FRAGMENT;
  for (let n = 0; isNfqlbExtension(nh); n++) {
    if (n === MAX_EXTENSION_HEADERS || at + 2 > end) return -1;
    nh = buf[at]!;
    at += buf[at + 1]! * 8;
  }
  walkNext = nh;
  return at;
}

function isNfqlbExtension(nh: number): boolean {
  return nh === IPPROTO_HOPOPTS || nh === IPPROTO_ROUTING || nh === IPPROTO_FRAGMENT || nh === IPPROTO_DSTOPTS;
}

function parseTransport(buf: Uint8Array, l4: number, end: number, proto: number, p: PacketInfo, encap: number): void {
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP || proto === IPPROTO_SCTP) {
    readPorts(buf, l4, end, proto, p, encap, false);
  } else if (proto === (p.family === 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6)) {
    parseIcmp(buf, l4, end, p, encap);
  }
}

/** Ports at `l4`; `swapped` for a quoted packet, whose source is our destination. */
function readPorts(buf: Uint8Array, l4: number, end: number, proto: number, p: PacketInfo, encap: number, swapped: boolean): void {
  if (l4 + 4 > end) {
    p.truncated = true;
    return;
  }
  let at = l4;
  if (encap !== 0 && proto === IPPROTO_UDP && u16(buf, swapped ? l4 : l4 + 2) === encap) {
    at = l4 + 8;
    if (at + 4 > end) {
      p.truncated = true;
      return;
    }
    p.proto = IPPROTO_SCTP;
    p.sctpEncap = true;
  }
  const first = u16(buf, at);
  const second = u16(buf, at + 2);
  p.sport = swapped ? second : first;
  p.dport = swapped ? first : second;
  p.hasPorts = true;
}

function isIcmpError(p: PacketInfo, type: number): boolean {
  // IPv4: destination unreachable (incl. fragmentation needed), source quench, redirect,
  // time exceeded, parameter problem. IPv6: destination unreachable, packet too big, time
  // exceeded, parameter problem. The reference follows neither parameter problem, nor ICMPv6
  // time exceeded.
  const all = p.mode !== PARSE_NFQLB;
  if (p.family === 4) return type === 3 || type === 4 || type === 5 || type === 11 || (type === 12 && all);
  return type === 1 || type === 2 || ((type === 3 || type === 4) && all);
}

function parseIcmp(buf: Uint8Array, l4: number, end: number, p: PacketInfo, encap: number): void {
  const echoRequest = p.family === 4 ? ICMP_ECHO_REQUEST : ICMP6_ECHO_REQUEST;
  if (l4 + 8 > end) {
    // The reference keys a cut ICMP header on what it can read (an error's quote it cannot).
    const type = l4 < end ? buf[l4]! : -1;
    if (p.mode === PARSE_NFQLB && type >= 0 && !isIcmpError(p, type) && (type !== echoRequest || l4 + 6 <= end)) {
      p.icmpType = type;
      if (type === echoRequest) p.echoId = u16(buf, l4 + 4);
      return;
    }
    p.truncated = true;
    return;
  }
  const type = buf[l4]!;
  p.icmpType = type;
  p.icmpCode = buf[l4 + 1]!;
  if (isIcmpError(p, type)) {
    // A fragmented error is not followed into its quoted packet. An ICMP error is at most 576
    // bytes, so an IPv4 one that is fragmented is dropped, as the reference does; an IPv6 one
    // keeps the outer key (the key the reference gives it).
    if (!p.isFragment) parseQuoted(buf, l4 + 8, end, p, encap);
    else p.fragmentedIcmpError = p.family === 4;
    return;
  }
  if (type === echoRequest) p.echoId = u16(buf, l4 + 4);
}

/**
 * The packet quoted by an ICMP error at `at`; its fields go into the key swapped. The reference
 * (PARSE_NFQLB) does not check the quoted packet's version, reads a quoted later IPv4
 * fragment's data as ports, puts no echo identifier in the key, and walks a quoted IPv6
 * packet's extension headers its own way (walkNfqlb).
 */
function parseQuoted(buf: Uint8Array, at: number, end: number, p: PacketInfo, encap: number): void {
  const nfqlb = p.mode === PARSE_NFQLB;
  let l4: number;
  let proto: number;
  let nonFirstFragment: boolean;
  if (p.family === 4) {
    if (at + 20 > end || (buf[at]! >> 4 !== 4 && !nfqlb) || (buf[at]! & 0x0f) < 5) {
      p.truncated = true;
      return;
    }
    proto = buf[at + 9]!;
    l4 = at + (buf[at]! & 0x0f) * 4;
    nonFirstFragment = (u16(buf, at + 6) & 0x1fff) !== 0 && !nfqlb;
    p.srcOff = at + 16;
    p.dstOff = at + 12;
  } else {
    if (at + 40 > end || (buf[at]! >> 4 !== 6 && !nfqlb)) {
      p.truncated = true;
      return;
    }
    l4 = nfqlb ? walkNfqlb(buf, at + 40, end, buf[at + 6]!, false) : -1;
    if (l4 < 0) l4 = walkExtensions(buf, at + 40, end, buf[at + 6]!);
    if (l4 < 0) {
      p.truncated = true;
      return;
    }
    proto = walkNext;
    nonFirstFragment = walkFragOff >= 0 && (u16(buf, walkFragOff + 2) & 0xfff8) !== 0;
    p.srcOff = at + 24;
    p.dstOff = at + 8;
  }
  p.icmpError = true;
  p.innerL3Off = at;
  p.proto = proto;
  if (l4 > end) {
    // The reference keys that on the addresses and protocol.
    p.truncated = !nfqlb;
    return;
  }
  p.innerL4Off = l4;
  // A quoted later fragment has no ports: its key is the swapped addresses and protocol.
  if (nonFirstFragment) return;
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP || proto === IPPROTO_SCTP) {
    readPorts(buf, l4, end, proto, p, encap, true);
  } else if (proto === (p.family === 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6)) {
    // An error about an echo reply belongs to the target that got the echo request.
    const replyType = p.family === 4 ? ICMP_ECHO_REPLY : ICMP6_ECHO_REPLY;
    if (l4 + 8 <= end && buf[l4] === replyType && !nfqlb) p.echoId = u16(buf, l4 + 4);
  }
}

/**
 * The packet's addresses as eight big-endian 32-bit words, source then destination, IPv4 mapped
 * into IPv6 (::ffff:a.b.c.d) as in the hash key: what the flow and fragment tables key on. An
 * Int32Array and a Uint32Array get the same bits.
 */
export function addressWords(buf: Uint8Array, p: PacketInfo, out: Int32Array | Uint32Array): void {
  if (p.addrLen === 4) {
    out[0] = 0;
    out[1] = 0;
    out[2] = 0xffff;
    out[3] = be32(buf, p.srcOff);
    out[4] = 0;
    out[5] = 0;
    out[6] = 0xffff;
    out[7] = be32(buf, p.dstOff);
  } else {
    for (let k = 0; k < 4; k++) {
      out[k] = be32(buf, p.srcOff + 4 * k);
      out[4 + k] = be32(buf, p.dstOff + 4 * k);
    }
  }
}

function be32(b: Uint8Array, o: number): number {
  return (b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!;
}
