// The reference nfqlb's own verdicts for 893 packets (nfqlb-packet-vectors.json, see README.md
// beside this file), replayed in file order through the Balancer over the same table:
// - with compat 'nfqlb', every packet the reference forwards gets its fwmark and hash (and
//   through flows, as `nfqlb flowlb`, every one a TCP/UDP/SCTP flow balances its fwmark);
// - without, every packet that gets another fwmark or hash belongs to a class that
//   docs/compatibility.md lists, and each of those classes does occur.
// Both modes print their match counts per class.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { packetHash } from '../../src/hash.js';
import { Balancer, SingleTable, type TargetSelector } from '../../src/nfqlb/balancer.js';
import type { Compat } from '../../src/nfqlb/compat.js';
import { FlowSelector, FlowSet } from '../../src/nfqlb/flow-table.js';
import { FragTable } from '../../src/nfqlb/frag-table.js';
import { PARSE_CORRECT, PARSE_NFQLB, PacketInfo, parsePacket } from '../../src/packet.js';
import { TargetTable } from '../../src/target-table.js';

interface Vector {
  case: string;
  hashMode: number;
  sctpEncap: number;
  hex: string;
  /** The reference's verdict: a fwmark, or -1 = dropped. */
  fwmark: number;
  /** The hash of the reference's key; null where it computes none or drops the packet. */
  hash: number | null;
}
interface VectorFile {
  table: { init: string[]; activate: number[] };
  packets: Vector[];
}

const file = JSON.parse(readFileSync(new URL('./nfqlb-packet-vectors.json', import.meta.url), 'utf8')) as VectorFile;
const docs = readFileSync(new URL('../../docs/compatibility.md', import.meta.url), 'utf8');

/**
 * The classes of packets the default mode keys differently from the reference (their names are
 * the ones docs/compatibility.md uses). Those the vectors cannot show (IPv6 AH, cut headers)
 * are listed there too.
 */
const CLASSES = [
  'ipv6-extension-headers',
  'ipv6-fragments',
  'icmpv6-quoting-extension-headers',
  'icmp-quoting-later-fragment',
  'icmp-parameter-problem',
  'icmpv6-time-exceeded-parameter-problem',
  'icmp-quoting-echo-reply',
  'repeated-first-fragment',
] as const;
type ClassName = (typeof CLASSES)[number] | 'other';

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

/** The extension headers before the upper layer (the real walk; it stops at a fragment header). */
function ipv6Chain(b: Uint8Array, at: number, nh: number): { headers: number[]; upper: number; at: number } {
  const headers: number[] = [];
  while ([0, 43, 44, 51, 60].includes(nh) && at + 8 <= b.length) {
    headers.push(nh);
    if (nh === 44) break;
    const next = b[at]!;
    at += nh === 51 ? (b[at + 1]! + 2) * 4 : (b[at + 1]! + 1) * 8;
    nh = next;
  }
  return { headers, upper: nh, at };
}

/**
 * Which class a packet is in, from its bytes alone (no parser of ours). Call it for every packet
 * in file order: a repeated first fragment is one whose addresses and id came before.
 */
function classify(b: Uint8Array, firstFragments: Set<string>): ClassName {
  if (b[0]! >> 4 === 4) {
    const ihl = (b[0]! & 0x0f) * 4;
    const frag = u16(b, 6);
    if ((frag & 0x1fff) !== 0) return 'other';
    if ((frag & 0x2000) !== 0) {
      const key = `${Buffer.from(b.subarray(12, 20)).toString('hex')}/${u16(b, 4)}`;
      if (firstFragments.has(key)) return 'repeated-first-fragment';
      firstFragments.add(key);
    }
    if (b[9] !== 1) return 'other';
    const type = b[ihl]!;
    if (type === 12) return 'icmp-parameter-problem';
    if (![3, 4, 5, 11].includes(type)) return 'other';
    const q = ihl + 8;
    if ((u16(b, q + 6) & 0x1fff) !== 0) return 'icmp-quoting-later-fragment';
    if (b[q + 9] === 1 && b[q + (b[q]! & 0x0f) * 4] === 0) return 'icmp-quoting-echo-reply';
    return 'other';
  }
  const outer = ipv6Chain(b, 40, b[6]!);
  if (outer.headers.includes(44)) return 'ipv6-fragments';
  if (outer.headers.some((h) => h !== 51)) return 'ipv6-extension-headers';
  if (outer.upper !== 58) return 'other';
  const type = b[outer.at]!;
  if (type === 3 || type === 4) return 'icmpv6-time-exceeded-parameter-problem';
  if (type !== 1 && type !== 2) return 'other';
  const q = outer.at + 8;
  const inner = ipv6Chain(b, q + 40, b[q + 6]!);
  if (inner.headers.length > 0) return 'icmpv6-quoting-extension-headers';
  if (inner.upper === 58 && b[inner.at] === 129) return 'icmp-quoting-echo-reply';
  return 'other';
}

interface Outcome {
  v: Vector;
  index: number;
  klass: ClassName;
  fwmark: number;
  hash: number;
}

/**
 * All packets through one fragment table, as the reference's run; a Balancer per option set.
 * `flowlb`: the Balancers select the table through a flow for TCP, UDP and SCTP (with the
 * vector's SCTP encapsulation port), as `nfqlb flowlb` does.
 */
function replay(compat: Compat | null, flowlb = false): Outcome[] {
  const M = TargetTable.adjustM(Number(/--M=(\d+)/.exec(file.table.init.join(' '))![1]));
  const N = Number(/--N=(\d+)/.exec(file.table.init.join(' '))![1]);
  const table = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(M, N)), M, N, 0);
  table.activate(file.table.activate);
  // Without --tun nothing is stored; all packets come within one fragment lifetime.
  const frags = new FragTable({ size: 500, buckets: 500, maxFragments: 0, mtu: 1500, ttlMs: 200 });
  const balancers = new Map<string, Balancer>();
  const balancer = (hashMode: number, sctpEncap: number): Balancer => {
    const key = `${hashMode}/${sctpEncap}`;
    let b = balancers.get(key);
    if (b === undefined) {
      let selector: TargetSelector = new SingleTable(table, 'vectors');
      if (flowlb) {
        const flows = new FlowSet();
        flows.set({ name: 'tcp-udp', target: 'vectors', priority: 0, protocols: ['tcp', 'udp'] });
        flows.set({ name: 'sctp', target: 'vectors', priority: 1, protocols: ['sctp'], udpencap: sctpEncap || undefined });
        const s = new FlowSelector({ promiscuousPing: false, openTable: () => table });
        s.setFlows(flows.specs());
        selector = s;
      }
      const o = { hashMode, notargetsFwmark: -1, sctpEncap: flowlb ? 0 : sctpEncap, frags, now: () => 0, compat };
      b = new Balancer(selector, o);
      balancers.set(key, b);
    }
    return b;
  };
  const p = new PacketInfo();
  const firstFragments = new Set<string>();
  return file.packets.map((v, index) => {
    const pkt = Buffer.from(v.hex, 'hex');
    const fwmark = balancer(v.hashMode, v.sctpEncap).fwmarkOf(pkt, 0, pkt.length);
    parsePacket(pkt, 0, pkt.length, p, v.sctpEncap, compat === 'nfqlb' ? PARSE_NFQLB : PARSE_CORRECT);
    return { v, index, klass: classify(pkt, firstFragments), fwmark, hash: packetHash(pkt, p, v.hashMode) };
  });
}

const sameAsReference = (o: Outcome) => o.fwmark === o.v.fwmark && (o.v.hash === null || o.hash === o.v.hash);
const describeOutcome = (o: Outcome) =>
  `#${o.index} ${o.v.case} (${o.klass}): fwmark ${o.fwmark} hash ${o.hash}, reference ${o.v.fwmark} / ${o.v.hash}: ` +
  o.v.hex.slice(0, 120);

/** One line per class: packets, how many get the reference's fwmark and hash, and the rest. */
function report(mode: string, outcomes: Outcome[]): void {
  const lines = [...CLASSES, 'other' as const].map((klass) => {
    const all = outcomes.filter((o) => o.klass === klass);
    const same = all.filter(sameAsReference).length;
    const forwardedNotDropped = all.filter((o) => !sameAsReference(o) && o.v.fwmark < 0 && o.fwmark >= 0).length;
    const other = all.length - same - forwardedNotDropped;
    return (
      `  ${klass.padEnd(40)} ${String(all.length).padStart(4)} packets ${String(same).padStart(4)} same` +
      `${String(forwardedNotDropped).padStart(4)} forwarded where the reference drops ${String(other).padStart(4)} differ`
    );
  });
  const total = outcomes.filter(sameAsReference).length;
  console.log(`nfqlb packet vectors, ${mode}: ${total}/${outcomes.length} get the reference's fwmark and hash\n${lines.join('\n')}`);
}

describe('nfqlb packet vectors (the reference lb callback, packet by packet)', () => {
  it('cover the kinds of packets they claim', () => {
    expect(file.packets.length).toBe(893);
    const classes = new Set(replay(null).map((o) => o.klass));
    expect([...classes].sort()).toEqual([...CLASSES, 'other'].sort());
  });

  it("compat 'nfqlb': every packet the reference forwards gets its fwmark and hash", () => {
    const outcomes = replay('nfqlb');
    report("compat 'nfqlb'", outcomes);
    const forwarded = outcomes.filter((o) => o.v.fwmark >= 0);
    expect(forwarded.length).toBeGreaterThan(800);
    expect(forwarded.filter((o) => !sameAsReference(o)).map(describeOutcome)).toEqual([]);
    // Where the reference drops a packet we may forward it: it sends that packet nowhere.
    const dropped = outcomes.filter((o) => o.v.fwmark < 0);
    expect(dropped.length).toBeGreaterThan(20);
  });

  it("flowlb, compat 'nfqlb': every packet a TCP, UDP and SCTP flow balances gets the reference's fwmark", () => {
    const outcomes = replay('nfqlb', true);
    const balanced = outcomes.filter((o) => o.fwmark >= 0 && o.v.fwmark >= 0);
    expect(balanced.length).toBeGreaterThan(500);
    expect(balanced.filter((o) => o.fwmark !== o.v.fwmark).map(describeOutcome)).toEqual([]);
  });

  it('default: every difference is in a class docs/compatibility.md lists', () => {
    const outcomes = replay(null);
    report('default', outcomes);
    const differ = outcomes.filter((o) => !sameAsReference(o));
    expect(differ.filter((o) => o.klass === 'other').map(describeOutcome)).toEqual([]);
    // Each class is real (the vectors show it) and documented.
    expect(CLASSES.filter((k) => !differ.some((o) => o.klass === k))).toEqual([]);
    expect(CLASSES.filter((k) => !docs.includes(`\`${k}\``))).toEqual([]);
    // Most packets are keyed the same way.
    expect(outcomes.length - differ.length).toBeGreaterThan(700);
  });
});
