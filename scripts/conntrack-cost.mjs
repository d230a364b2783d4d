#!/usr/bin/env node
// Per-packet CPU of the nfqlb decision with and without --conntrack, in one process: the same
// packets (FLOWS flows of TCP and UDP over IPv4 and IPv6, in a shuffled order, every flow seen
// many times) through Balancer.fwmarkOf, best of ROUNDS runs each. Needs `make build` (uses dist/).
//   node scripts/conntrack-cost.mjs [flows=100000] [conntrack entries=1000000]
import { Balancer, SingleTable, TargetTable } from '../dist/src/index.js';
import { ConnTrack } from '../dist/src/nfqlb/conntrack.js';

const FLOWS = Number(process.argv[2] ?? 100_000);
const SIZE = Number(process.argv[3] ?? 1_000_000);
const PACKETS = 2_000_000;
const ROUNDS = 5;

function packet(k) {
  const v6 = k % 2 === 1;
  const udp = k % 4 >= 2;
  const l4 = udp ? 8 : 20;
  const ipLen = v6 ? 40 : 20;
  const b = new Uint8Array(ipLen + l4 + 32);
  if (v6) {
    b[0] = 0x60;
    b[4] = (l4 + 32) >> 8; b[5] = (l4 + 32) & 0xff; b[6] = udp ? 17 : 6; b[7] = 64;
    b[8] = 0x20; b[23] = k & 0xff; b[22] = (k >> 8) & 0xff; // src 2000::k
    b[24] = 0x10; // dst 1000::
  } else {
    b[0] = 0x45; b[2] = b.length >> 8; b[3] = b.length & 0xff; b[8] = 64; b[9] = udp ? 17 : 6;
    b[12] = 50; b[14] = (k >> 8) & 0xff; b[15] = k & 0xff; b[16] = 10; // 50.0.x.y -> 10.0.0.0
  }
  const sport = 1024 + (k % 60000);
  b[ipLen] = sport >> 8; b[ipLen + 1] = sport & 0xff; b[ipLen + 2] = 0x13; b[ipLen + 3] = 0x89;
  if (!udp) { b[ipLen + 12] = 0x50; b[ipLen + 13] = 0x10; } // ACK
  return b;
}

const M = 997, N = 20;
const table = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(M, N)), M, N, 0);
for (let i = 1; i <= 10; i++) table.setIndex(i, 100 + i);
const flows = Array.from({ length: FLOWS }, (_, k) => packet(k));
let seed = 12345;
const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
const order = Uint32Array.from({ length: PACKETS }, () => Math.floor(rnd() * FLOWS));

function measure(lb) {
  let best = Infinity, sum = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < PACKETS; i++) { const p = flows[order[i]]; sum += lb.fwmarkOf(p, 0, p.length); }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / PACKETS);
  }
  return { ns: best, sum };
}

const stateless = new Balancer(new SingleTable(table, 't'), { hashMode: 1, notargetsFwmark: -1 });
const ct = new ConnTrack({ size: SIZE, now: 0 });
const tracked = new Balancer(new SingleTable(table, 't'), { hashMode: 1, notargetsFwmark: -1, conntrack: ct });
const a = measure(stateless);
const b = measure(tracked);
const c = measure(stateless);
const base = Math.min(a.ns, c.ns);
console.log(`flows ${FLOWS}, packets ${PACKETS} x ${ROUNDS} rounds, conntrack ${ct.capacity} entries = ${(ConnTrack.byteLength(SIZE) / 2 ** 20).toFixed(1)} MiB`);
console.log(`stateless   ${base.toFixed(1)} ns/packet`);
console.log(`conntrack   ${b.ns.toFixed(1)} ns/packet  (+${(100 * (b.ns / base - 1)).toFixed(0)}%)  ${JSON.stringify(ct.stats())}`);
if (a.sum !== b.sum) console.log('(verdict sums differ: some flow was not recorded or moved)');
