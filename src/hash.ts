// The flow hash of nfqlb. Every instance of a load-balancer tier, ours or the reference C one,
// must map a flow to the same target, so the key layout and the hash are bit-exact copies of
// the reference's (pinned by test/conformance/nfqlb-vectors.json).
//
// Key (40 bytes, zeroed, then filled):
//   0  src[16]         IPv4 as ::ffff:a.b.c.d
//   16 dst[16]
//   32 user_defined    u16, the ICMP echo identifier (bytes as on the wire) or 0
//   34 proto           u16 in host order (little-endian): the IP protocol number
//   36 sport, 38 dport u16, network order
import { parseEndpoint, toKeyAddress } from './address.js';

export const HASH_KEY_BYTES = 40;
export const KEY_SRC = 0;
export const KEY_DST = 16;
export const KEY_USER = 32;
export const KEY_PROTO = 34;
export const KEY_PORTS = 36;
/** The key bytes hashed when only addresses count (no protocol, fragments). */
export const KEY_ADDRESS_BYTES = 32;

export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_SCTP = 132;

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
  const sctpPortsOnly =
    hashMode === HASH_MODE_SCTP_PORTS && key[off + KEY_PROTO] === IPPROTO_SCTP && key[off + KEY_PROTO + 1] === 0;
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
export function hashTuple(
  t: { proto: 'tcp' | 'udp' | 'sctp' | null; src: string; dst: string },
  hashMode: number,
): number {
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
