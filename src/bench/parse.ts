// Parse + hash cost per packet on a mix of IPv4/IPv6 TCP/UDP headers, as NFQUEUE delivers them
// (IP header first). The packets are written by hand here so the bench needs no test fixtures.

import { packetHash } from '../hash.js';
import { PacketInfo, parsePacket } from '../packet.js';

export function ipv4Header(proto: number, sport: number, dport: number, srcLast: number): Uint8Array {
  const p = new Uint8Array(60);
  p.set([0x45, 0, 0, 60, 0, 1, 0x40, 0, 64, proto, 0, 0, 50, 0, 0, srcLast, 10, 0, 0, 1]);
  p.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff], 20);
  return p;
}

export function ipv6Header(nextHeader: number, extLen: number, proto: number, sport: number, dport: number, srcLast: number): Uint8Array {
  const p = new Uint8Array(40 + extLen + 20);
  p.set([0x60, 0, 0, 0, 0, extLen + 20, nextHeader, 64]);
  p.set([0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, srcLast], 8);
  p.set([0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 24);
  if (extLen > 0) p.set([proto, extLen / 8 - 1, 1, extLen - 4], 40); // one options header, PadN
  p.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff], 40 + extLen);
  return p;
}

/** Prints ns/packet and Mpps for parsePacket + packetHash over a header mix. */
export function benchParse(): void {
  const TCP = 6;
  const UDP = 17;
  const DSTOPTS = 60;
  const mix = [
    ipv4Header(TCP, 40000, 80, 7),
    ipv4Header(UDP, 5001, 53, 8),
    ipv4Header(TCP, 40001, 443, 9),
    ipv4Header(UDP, 5002, 5001, 10),
    ipv6Header(TCP, 0, TCP, 40000, 80, 7),
    ipv6Header(UDP, 0, UDP, 5001, 53, 8),
    ipv6Header(DSTOPTS, 8, TCP, 40002, 80, 9),
    ipv6Header(UDP, 0, UDP, 5003, 5001, 10),
  ];
  // One contiguous buffer, like a batch of copied headers.
  const stride = 128;
  const batch = new Uint8Array(stride * mix.length);
  for (const [i, p] of mix.entries()) batch.set(p, i * stride);
  const p = new PacketInfo();
  let sink = 0;
  const run = (n: number): void => {
    for (let i = 0; i < n; i++) {
      const slot = i & 7;
      parsePacket(batch, slot * stride, mix[slot]!.length, p);
      sink = (sink + packetHash(batch, p, 1)) | 0;
    }
  };
  run(200_000); // warm-up: let the JIT settle
  const n = 5_000_000;
  const t0 = process.hrtime.bigint();
  run(n);
  const ns = Number(process.hrtime.bigint() - t0) / n;
  console.log(
    `parse+hash: ${ns.toFixed(1)} ns/packet, ${(1000 / ns).toFixed(2)} Mpps ` +
      `(${n} packets, mix of IPv4/IPv6 TCP/UDP; checksum ${sink >>> 0})`,
  );
}
