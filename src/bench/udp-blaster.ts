// A small-packet generator for the benchmarks: 60-byte UDP/IPv4 frames sent through an
// AF_XDP socket (the xsk addon's transmit), from 64 source ports so flows spread over
// targets; one of the candidates generators.ts measures.
//
// Standalone: node dist/src/bench/udp-blaster.js <dev> <dstMac> <src> <dst> [seconds]
// prints {"sent": n, "seconds": s}; without seconds it sends until a signal ends it.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseIPv4 } from '../address.js';
import { parseMac } from '../xdp/table.js';
import { xskAddon } from '../xdp/xsk.js';

export const FRAME_BYTES = 60;
const FRAMES = 4096;
const FRAME_SIZE = 4096;
const BATCH = 64;
const FLOWS = 64;
const DPORT = 9; // discard

function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v >> 8;
  b[at + 1] = v & 0xff;
}

/** Writes a 60-byte Ethernet/IPv4/UDP frame (UDP checksum 0: none) at b[at]. */
function writeFrame(
  b: Uint8Array,
  at: number,
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  sport: number,
): void {
  b.fill(0, at, at + FRAME_BYTES);
  b.set(dstMac, at);
  b.set(srcMac, at + 6);
  put16(b, at + 12, 0x0800);
  const ip = at + 14;
  b[ip] = 0x45;
  put16(b, ip + 2, FRAME_BYTES - 14);
  b[ip + 8] = 64;
  b[ip + 9] = 17;
  b.set(src, ip + 12);
  b.set(dst, ip + 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += (b[ip + i]! << 8) | b[ip + i + 1]!;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  put16(b, ip + 10, ~sum & 0xffff);
  const udp = ip + 20;
  put16(b, udp, sport);
  put16(b, udp + 2, DPORT);
  put16(b, udp + 4, FRAME_BYTES - 34);
}

export interface BlastResult {
  sent: number;
  seconds: number;
}

/** Sends as fast as possible for `seconds` (Infinity: until killed) on `dev`, inside the sender's namespace. */
export function blastUdp(dev: string, dstMac: string, src: string, dst: string, seconds: number): BlastResult {
  const s = parseIPv4(src);
  const d = parseIPv4(dst);
  if (!s || !d) throw new Error(`blastUdp: IPv4 addresses expected, got ${src} ${dst}`);
  const srcMac = parseMac(readFileSync(`/sys/class/net/${dev}/address`, 'utf8').trim());
  const addon = xskAddon();
  const umem = new addon.Umem(FRAMES, FRAME_SIZE);
  const sock = new addon.XskSocket(umem, dev, 0, { tx: true });
  try {
    const mem = new Uint8Array(umem.buffer);
    for (let f = 0; f < FRAMES; f++) writeFrame(mem, f * FRAME_SIZE, parseMac(dstMac), srcMac, s, d, 10000 + (f % FLOWS));
    const addr = new Uint32Array(BATCH);
    const len = new Uint32Array(BATCH).fill(FRAME_BYTES);
    // Frames are never changed after this, so one may be in flight more than once: cycling
    // through all of them keeps the kernel's copies apart anyway.
    let next = 0;
    let sent = 0;
    const t0 = process.hrtime.bigint();
    const end = Number.isFinite(seconds) ? t0 + BigInt(Math.round(seconds * 1e9)) : null;
    let now = t0;
    while (end === null || now < end) {
      for (let i = 0; i < BATCH; i++) addr[i] = ((next + i) % FRAMES) * FRAME_SIZE;
      const n = sock.transmit(addr, len, BATCH);
      next = (next + n) % FRAMES;
      sent += n;
      now = process.hrtime.bigint();
    }
    return { sent, seconds: Number(now - t0) / 1e9 };
  } finally {
    sock.close();
    umem.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [dev, dstMac, src, dst, seconds] = process.argv.slice(2);
  if (!dev || !dstMac || !src || !dst) {
    process.stderr.write('usage: udp-blaster <dev> <dstMac> <srcIPv4> <dstIPv4> [seconds]\n');
    process.exitCode = 1;
  } else {
    console.log(JSON.stringify(blastUdp(dev, dstMac, src, dst, seconds === undefined ? Infinity : Number(seconds))));
  }
}
