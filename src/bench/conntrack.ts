// The decision cost of --conntrack in one process: the same packets (many flows of TCP and UDP
// over IPv4 and IPv6, each seen many times, in a shuffled order) through Balancer.fwmarkOf
// with and without the flow table, best of a few rounds each; and the table's memory.
import { Balancer, SingleTable } from '../nfqlb/balancer.js';
import { ConnTrack } from '../nfqlb/conntrack.js';
import { TargetTable } from '../target-table.js';
import { ipv4Header, ipv6Header } from './parse.js';

const FLOWS = 100_000;
const ENTRIES = 1_000_000;
const PACKETS = 2_000_000;
const ROUNDS = 5;
const TCP = 6;
const UDP = 17;

function flowPacket(k: number): Uint8Array {
  const proto = k % 4 >= 2 ? UDP : TCP;
  const sport = 1024 + (k % 60_000);
  const srcLast = (k >> 2) & 0xff;
  const p = k % 2 === 1 ? ipv6Header(proto, 0, proto, sport, 5001, srcLast) : ipv4Header(proto, sport, 5001, srcLast);
  // An established TCP flow's packets carry ACK (the header starts after 20 or 40 bytes of IP).
  if (proto === TCP) p[(p[0]! >> 4 === 6 ? 40 : 20) + 13] = 0x10;
  return p;
}

export function benchConntrack(): void {
  const table = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(997, 20)), 997, 20, 0);
  table.activate(Array.from({ length: 10 }, (_, i) => 101 + i));
  const flows = Array.from({ length: FLOWS }, (_, k) => flowPacket(k));
  let seed = 12345;
  const order = Uint32Array.from({ length: PACKETS }, () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % FLOWS;
  });
  const best = (lb: Balancer): number => {
    let ns = Infinity;
    for (let r = 0; r < ROUNDS; r++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < PACKETS; i++) {
        const p = flows[order[i]!]!;
        lb.fwmarkOf(p, 0, p.length);
      }
      ns = Math.min(ns, Number(process.hrtime.bigint() - t0) / PACKETS);
    }
    return ns;
  };
  const stateless = new Balancer(new SingleTable(table, 't'), { hashMode: 1, notargetsFwmark: -1 });
  const ct = new ConnTrack({ size: ENTRIES, now: 0 });
  const tracked = new Balancer(new SingleTable(table, 't'), { hashMode: 1, notargetsFwmark: -1, conntrack: ct });
  // Stateless before and after, so a drift of the machine is not taken for the table's cost.
  const before = best(stateless);
  const withCt = best(tracked);
  const base = Math.min(before, best(stateless));
  const bytes = ConnTrack.byteLength(ENTRIES);
  console.log(
    `conntrack: decision ${base.toFixed(0)} ns/packet stateless, ${withCt.toFixed(0)} ns/packet with --conntrack=${ENTRIES} ` +
      `(${(withCt / base).toFixed(2)}x; ${FLOWS} flows, ${PACKETS} packets, best of ${ROUNDS}); ` +
      `${bytes / ENTRIES} bytes/entry, ${(bytes / 2 ** 20).toFixed(1)} MiB per queue`,
  );
}
