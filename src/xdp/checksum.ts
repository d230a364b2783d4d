// Completing partial TCP/UDP checksums in frames that left a veth peer with checksum
// offload on (CHECKSUM_PARTIAL): such a frame carries only the pseudo-header sum in its
// checksum field, the rest is normally filled in by the NIC or the receiving stack. An
// AF_XDP frame loses that skb state, so the receiver would drop it (NOTES-KERNEL).
import type { PacketInfo } from '../packet.js';

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/** One's complement sum of big-endian 16-bit words in buf[from, to), not folded. */
function sum16(buf: Uint8Array, from: number, to: number, acc: number): number {
  let i = from;
  for (; i + 1 < to; i += 2) acc += (buf[i]! << 8) | buf[i + 1]!;
  if (i < to) acc += buf[i]! << 8;
  return acc;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * If the TCP or UDP checksum of the parsed packet holds just its pseudo-header sum,
 * writes the full checksum and returns true. A complete checksum is recognised in O(1)
 * (it equals the pseudo-header sum only by a 1-in-65535 chance, and then "completing"
 * it recomputes the same value), so only partial frames pay for summing the payload.
 */
export function completePartialChecksum(buf: Uint8Array, p: PacketInfo): boolean {
  if (p.family === 0 || p.l4Off < 0 || p.isFragment || p.icmpError) return false;
  const proto = p.l4Proto;
  const field = proto === IPPROTO_TCP ? p.l4Off + 16 : proto === IPPROTO_UDP ? p.l4Off + 6 : -1;
  if (field < 0 || field + 2 > p.end) return false;
  const stored = (buf[field]! << 8) | buf[field + 1]!;
  if (proto === IPPROTO_UDP && stored === 0) return false; // IPv4 UDP without checksum
  const l4Len = p.end - p.l4Off;
  const addrLen = p.family === 4 ? 8 : 32;
  const addrOff = p.l3Off + (p.family === 4 ? 12 : 8); // source and destination, adjacent
  const pseudo = fold(sum16(buf, addrOff, addrOff + addrLen, proto + l4Len));
  // 0 and 0xffff are the same one's complement number.
  if (stored % 0xffff !== pseudo % 0xffff) return false;
  let csum = 0xffff - fold(sum16(buf, p.l4Off, p.end, 0));
  if (csum === 0 && proto === IPPROTO_UDP) csum = 0xffff;
  buf[field] = csum >> 8;
  buf[field + 1] = csum & 0xff;
  return true;
}
