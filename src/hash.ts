// The flow hash of nfqlb: the key layout, and the hash of a tuple or of a parsed packet. Every
// instance of a load-balancer tier, ours or the reference C one, must map a flow to the same
// target, so the key layout and the hash are bit-exact copies of the reference's (pinned by
// test/conformance/nfqlb-vectors.json).
//
// Key (40 bytes, zeroed, then filled):
//   0  src[16]         IPv4 as ::ffff:a.b.c.d
//   16 dst[16]
//   32 user_defined    u16, the ICMP echo identifier (bytes as on the wire) or 0
//   34 proto           u16 in host order (little-endian): the IP protocol number
//   36 sport, 38 dport u16, network order
import { parseEndpoint, toKeyAddress } from './address.js';
import { IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from './packet.js';

export const HASH_KEY_BYTES = 40;
export const KEY_SRC = 0;
export const KEY_DST = 16;
export const KEY_USER = 32;
export const KEY_PROTO = 34;
export const KEY_PORTS = 36;
/** The key bytes hashed when only addresses count (no protocol, fragments). */
export const KEY_ADDRESS_BYTES = 32;

/** hash_mode 0: the whole key for every protocol. */
export const HASH_MODE_TUPLE = 0;
/**
 * hash_mode 1 (nfqlb's default): SCTP hashes its ports only, because a multi-homed SCTP
 * association uses several addresses and all its paths must reach the same target.
 */
export const HASH_MODE_SCTP_PORTS = 1;

/** djb2 (h = h * 33 + byte) over bytes[start, end), as a uint32. */
export function djb2(bytes: Uint8Array, start: number, end: number, seed = 5381): number {
  let h = seed | 0;
  for (let i = start; i < end; i++) h = (Math.imul(h, 33) + bytes[i]!) | 0;
  return h >>> 0;
}

/** The hash of a filled 40-byte key at key[off] under nfqlb's hash_mode. */
export function hashKey(key: Uint8Array, hashMode: number, off = 0): number {
  const sctpPortsOnly = hashMode === HASH_MODE_SCTP_PORTS && key[off + KEY_PROTO] === IPPROTO_SCTP && key[off + KEY_PROTO + 1] === 0;
  if (sctpPortsOnly) return djb2(key, off + KEY_PORTS, off + HASH_KEY_BYTES);
  return djb2(key, off, off + HASH_KEY_BYTES);
}

/** The address-only hash nfqlb uses for fragments and for a tuple without a protocol. */
export function hashAddresses(key: Uint8Array, off = 0): number {
  return djb2(key, off, off + KEY_ADDRESS_BYTES);
}

const PROTOCOLS: Record<string, number> = { tcp: IPPROTO_TCP, udp: IPPROTO_UDP, sctp: IPPROTO_SCTP };

/**
 * The hash `nfqlb fwmark` prints: src/dst are 'a.b.c.d:port' or '[v6]:port'; with proto null
 * only the addresses count (a bare address is then accepted). Throws one line on bad input.
 */
export function hashTuple(t: { proto: 'tcp' | 'udp' | 'sctp' | null; src: string; dst: string }, hashMode: number): number {
  const portRequired = t.proto !== null;
  const src = parseEndpoint(t.src, portRequired);
  const dst = parseEndpoint(t.dst, portRequired);
  const key = new Uint8Array(HASH_KEY_BYTES);
  key.set(toKeyAddress(src.address), KEY_SRC);
  key.set(toKeyAddress(dst.address), KEY_DST);
  if (t.proto === null) return hashAddresses(key);
  const proto = PROTOCOLS[t.proto];
  if (proto === undefined) throw new Error(`Failed to parse protocol [${String(t.proto)}]`);
  key[KEY_PROTO] = proto;
  writeU16(key, KEY_PORTS, src.port ?? 0);
  writeU16(key, KEY_PORTS + 2, dst.port ?? 0);
  return hashKey(key, hashMode);
}

function writeU16(out: Uint8Array, off: number, v: number): void {
  out[off] = v >> 8;
  out[off + 1] = v & 0xff;
}

/**
 * Writes the 40-byte nfqlb hash key of a parsed packet (family != 0) at out[o]. The key of a
 * non-first fragment has no protocol or ports; hash it with hashAddresses.
 */
export function writeHashKey(buf: Uint8Array, p: PacketInfo, out: Uint8Array, o = 0): void {
  out.fill(0, o, o + HASH_KEY_BYTES);
  if (p.addrLen === 4) {
    out[o + KEY_SRC + 10] = 0xff;
    out[o + KEY_SRC + 11] = 0xff;
    out[o + KEY_DST + 10] = 0xff;
    out[o + KEY_DST + 11] = 0xff;
    for (let i = 0; i < 4; i++) {
      out[o + KEY_SRC + 12 + i] = buf[p.srcOff + i]!;
      out[o + KEY_DST + 12 + i] = buf[p.dstOff + i]!;
    }
  } else if (p.addrLen === 16) {
    for (let i = 0; i < 16; i++) {
      out[o + KEY_SRC + i] = buf[p.srcOff + i]!;
      out[o + KEY_DST + i] = buf[p.dstOff + i]!;
    }
  }
  if (p.isFragment && !p.firstFragment) return;
  out[o + KEY_USER] = p.echoId >> 8;
  out[o + KEY_USER + 1] = p.echoId & 0xff;
  if (p.proto >= 0) out[o + KEY_PROTO] = p.proto;
  if (p.hasPorts) {
    out[o + KEY_PORTS] = p.sport >> 8;
    out[o + KEY_PORTS + 1] = p.sport & 0xff;
    out[o + KEY_PORTS + 2] = p.dport >> 8;
    out[o + KEY_PORTS + 3] = p.dport & 0xff;
  }
}

// packetHash does not build the key. djb2 is linear: over n bytes,
//   h = 5381 * 33^n + sum(b[i] * 33^(n-1-i))   (mod 2^32)
// so each key byte contributes independently. Summing independent products lets the CPU
// multiply in parallel instead of waiting on a 40-step chain, and the key's zero bytes drop
// out. The result is bit-identical to djb2 over writeHashKey's key (the fuzz test checks).

/** POW33[k] = 33^k mod 2^32, as int32 (what Math.imul wants). */
const POW33 = new Int32Array(HASH_KEY_BYTES + 1);
POW33[0] = 1;
for (let k = 1; k <= HASH_KEY_BYTES; k++) POW33[k] = Math.imul(POW33[k - 1]!, 33);

function pow33(k: number): number {
  return POW33[k]!;
}

/**
 * The sum of the address bytes' terms for a key hashed over its first `n` bytes (40 for the
 * whole key, 32 for addresses only): IPv4 adds its ::ffff: prefix bytes.
 */
function addressTerms(buf: Uint8Array, p: PacketInfo, n: number): number {
  const top = n - 1;
  let sum = 0;
  const s = p.srcOff;
  const d = p.dstOff;
  if (p.addrLen === 4) {
    sum = Math.imul(0xff, pow33(top - KEY_SRC - 10) + pow33(top - KEY_SRC - 11) + pow33(top - KEY_DST - 10) + pow33(top - KEY_DST - 11));
    for (let i = 0; i < 4; i++) {
      sum += Math.imul(buf[s + i]!, pow33(top - KEY_SRC - 12 - i)) + Math.imul(buf[d + i]!, pow33(top - KEY_DST - 12 - i));
      sum |= 0;
    }
  } else {
    for (let i = 0; i < 16; i++) {
      sum += Math.imul(buf[s + i]!, pow33(top - KEY_SRC - i)) + Math.imul(buf[d + i]!, pow33(top - KEY_DST - i));
      sum |= 0;
    }
  }
  return sum;
}

/** The ports are the last 4 key bytes in both the whole key and the SCTP ports-only hash. */
function portTerms(p: PacketInfo): number {
  return (
    Math.imul(p.sport >> 8, pow33(3)) +
    Math.imul(p.sport & 0xff, pow33(2)) +
    Math.imul(p.dport >> 8, pow33(1)) +
    Math.imul(p.dport & 0xff, pow33(0))
  );
}

const ADDRESS_SEED = Math.imul(5381, POW33[KEY_ADDRESS_BYTES]!);
const KEY_SEED = Math.imul(5381, POW33[HASH_KEY_BYTES]!);
const PORTS_SEED = Math.imul(5381, POW33[4]!);

/**
 * The nfqlb flow hash (uint32) of a parsed packet: djb2 of writeHashKey's key under the
 * hash_mode (1: SCTP on its ports only). Non-first fragments and truncated packets hash their
 * addresses only; family 0 gives 0 (the caller decides that verdict).
 */
export function packetHash(buf: Uint8Array, p: PacketInfo, hashMode: number): number {
  if (p.family === 0) return 0;
  if (p.truncated || (p.isFragment && !p.firstFragment)) {
    return (ADDRESS_SEED + addressTerms(buf, p, KEY_ADDRESS_BYTES)) >>> 0;
  }
  if (hashMode === HASH_MODE_SCTP_PORTS && p.proto === IPPROTO_SCTP) {
    return (PORTS_SEED + portTerms(p)) >>> 0;
  }
  const proto = Math.max(p.proto, 0);
  const tail =
    Math.imul(p.echoId >> 8, pow33(HASH_KEY_BYTES - 1 - KEY_USER)) +
    Math.imul(p.echoId & 0xff, pow33(HASH_KEY_BYTES - 2 - KEY_USER)) +
    Math.imul(proto, pow33(HASH_KEY_BYTES - 1 - KEY_PROTO)) +
    portTerms(p); // 0 without ports
  return (KEY_SEED + addressTerms(buf, p, HASH_KEY_BYTES) + tail) >>> 0;
}

/** The address-only hash: nfqlb uses it for fragments when it picks an LB-tier peer. */
export function packetAddressHash(buf: Uint8Array, p: PacketInfo): number {
  if (p.family === 0) return 0;
  return (ADDRESS_SEED + addressTerms(buf, p, KEY_ADDRESS_BYTES)) >>> 0;
}
