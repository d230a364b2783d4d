// xdplb's forwarding program (native/bpf/xdplb.bpf.c, xdplb_forward: `xdplb lb --offload`) run by
// the kernel with BPF_PROG_TEST_RUN against the TypeScript FrameForwarder: every frame it
// redirects must leave with the MAC addresses the forwarder writes (the same target), every
// whole TCP/UDP/SCTP packet the forwarder sends must be redirected, and the rest declined (to
// the AF_XDP socket: none is bound here, so declined frames pass, counted as declined) or, not
// to a VIP, passed. The devmap holds lo: a test run only returns the action, nothing is sent.

import { afterEach, describe, expect, it } from 'vitest';
import { FrameForwarder } from '../../src/xdp/forwarder.js';
import { ENTRY_WORDS, targetEntries } from '../../src/xdp/offload.js';
import { parseMac, vipKey, XdpTable } from '../../src/xdp/table.js';
import { VERDICT_TX, XDP_PASS, XDP_REDIRECT, type XdpProgram, xskAddon } from '../../src/xdp/xsk.js';
import { fixtureGroups, VIP4, VIP6 } from '../fixtures/nfqlb-fixtures.js';
import { conformanceScenarios, declinedPackets, eth, offloadable, randomWholePacket } from '../fixtures/offload-cases.js';
import { ipv4, ipv6 } from '../fixtures/packet-builder.js';
import { prng } from '../fixtures/prng.js';

const SRC_MAC = parseMac('02:00:00:00:ee:01');
const programs: XdpProgram[] = [];

afterEach(() => {
  for (const p of programs.splice(0)) p.close();
});

/** Target i's MAC. */
function targetMac(i: number): Uint8Array {
  return Uint8Array.from([0x0a, 0, 0, 0xee, i >> 8, i & 255]);
}

/** An xdplb table with these targets active. */
function xdpTable(active: number[], M = 997, N = 20): XdpTable {
  const t = XdpTable.initialize(new ArrayBuffer(XdpTable.byteLength(M, N)), M, N);
  for (const i of active) t.activate(i, targetMac(i));
  return t;
}

function publish(p: XdpProgram, table: XdpTable): void {
  const entries = new Int32Array(table.M * ENTRY_WORDS);
  targetEntries(table, entries);
  p.publish(entries);
}

function load(table: XdpTable, vips = [VIP4, VIP6]): XdpProgram {
  const p = new (xskAddon().XdpProgram)(undefined, undefined, table.N);
  programs.push(p);
  p.setEgress('lo', SRC_MAC);
  for (const v of vips) p.addVip(vipKey(v));
  publish(p, table);
  return p;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** What the TypeScript forwarder does with a frame: the MAC header it sends it with, or null (dropped). */
function twin(table: XdpTable): (frame: Uint8Array) => string | null {
  const umem = new Uint8Array(1 << 16);
  const fw = new FrameForwarder(umem, table, SRC_MAC);
  return (frame) => {
    umem.set(frame);
    return fw.forward(0, frame.length) === VERDICT_TX ? hex(umem.subarray(0, 12)) : null;
  };
}

/** What the program does with a frame: the MAC header it redirects it with, 'declined' or 'passed'. */
function outcome(p: XdpProgram, frame: Uint8Array): string {
  const declined = p.counters().declined;
  const f = frame.slice();
  const action = p.testRun(f);
  if (action === XDP_REDIRECT) return hex(f.subarray(0, 12));
  expect(action).toBe(XDP_PASS);
  return p.counters().declined > declined ? 'declined' : 'passed';
}

/** The MAC header of a frame sent to target `slot`. */
const macsOf = (slot: number): string => hex(targetMac(slot)) + hex(SRC_MAC);

describe('xdplb_forward vs the TypeScript forwarder', () => {
  it('the packet fixtures: whole TCP/UDP/SCTP packets to the same target, the rest not forwarded', () => {
    const table = xdpTable([0, 1, 2, 5, 9]);
    const prog = load(table);
    const ts = twin(table);
    let forwarded = 0;
    let others = 0;
    for (const f of fixtureGroups().flatMap((g) => g.fixtures)) {
      for (const pkt of f.packets) {
        const frame = eth(pkt);
        const got = outcome(prog, frame);
        const want = ts(frame);
        if (offloadable(pkt, 0) && want !== null) {
          expect(got, f.description).toBe(want);
          forwarded++;
        } else {
          expect(['declined', 'passed'], f.description).toContain(got);
          others++;
        }
      }
    }
    expect(forwarded).toBeGreaterThan(20);
    expect(others).toBeGreaterThan(10);
    expect(prog.counters().forwarded).toBe(forwarded);
    expect(prog.counters().targets.reduce((a, b) => a + b, 0)).toBe(forwarded);
  });

  it('the reference conformance vectors: the target of the reference fwmark, declined without one', () => {
    let checked = 0;
    for (const s of conformanceScenarios()) {
      const table = XdpTable.initialize(new ArrayBuffer(XdpTable.byteLength(s.M, s.N)), s.M, s.N);
      // The reference's table as recorded: slot i active (holding i for xdplb) where it had a fwmark.
      s.active.forEach((fwmark, slot) => {
        if (fwmark < 0) return;
        table.macs.set(targetMac(slot), slot * 8);
        table.targets.active[slot] = slot;
      });
      table.targets.lookup.set(s.lookup);
      // xdplb hashes as nfqlb's hash mode 1; the modes differ for SCTP only.
      const queries = s.queries.filter((q) => q.hashMode === 1 || q.proto !== 'sctp');
      checked += queries.length;
      const prog = load(table, [...new Set(queries.map((q) => q.vip))]);
      const ts = twin(table);
      for (const q of queries) {
        const frame = eth(q.packet);
        const want = q.fwmark < 0 ? 'declined' : macsOf(s.active.indexOf(q.fwmark));
        expect(outcome(prog, frame), `${s.name}: ${q.proto} ${q.src} -> ${q.dst}`).toBe(want);
        expect(ts(frame) ?? 'declined').toBe(want);
      }
      prog.close();
      programs.splice(programs.indexOf(prog), 1);
    }
    expect(checked).toBeGreaterThan(100);
  });

  it('3000 random TCP/UDP/SCTP packets (IPv4 options, IPv6 extension headers) go to the same target', () => {
    const table = xdpTable([1, 3, 4, 8, 13, 19]);
    const prog = load(table);
    const ts = twin(table);
    const rnd = prng(21);
    const slots = new Set<string>();
    for (let i = 0; i < 3000; i++) {
      const frame = eth(randomWholePacket(rnd, 0));
      const want = ts(frame);
      expect(want).not.toBeNull();
      expect(outcome(prog, frame), `packet ${i}`).toBe(want);
      slots.add(want!);
    }
    expect(slots.size).toBe(6);
    expect(Array.from(prog.counters().targets, (n) => n > 0)).toEqual(
      Array.from({ length: 20 }, (_, i) => [1, 3, 4, 8, 13, 19].includes(i)),
    );
  });

  it('declines fragments, ICMP, other protocols, cut headers, partial checksums and no target; passes other addresses', () => {
    const table = xdpTable([0, 1]);
    const prog = load(table);
    const cases = declinedPackets();
    const got = cases.map(([what, pkt]) => [what, outcome(prog, eth(pkt))]);
    expect(got).toEqual(cases.map(([what], i) => [what, i < cases.length - 2 ? 'declined' : 'passed']));

    // A local veth sender with checksum offload leaves the pseudo-header sum in the field; the
    // lb completes it (FrameForwarder), the program cannot.
    const ts = twin(table);
    for (const b of [() => ipv4({ src: '50.0.0.1', dst: VIP4 }), () => ipv6({ src: '2000::1', dst: VIP6 })]) {
      for (const proto of ['tcp', 'udp'] as const) {
        const pkt = (proto === 'tcp' ? b().tcp({ sport: 7, dport: 80 }) : b().udp({ sport: 7, dport: 53 })).payload(40).build();
        const frame = eth(pkt);
        expect(outcome(prog, frame), `${proto} with its checksum`).toMatch(/^0a0000ee/);
        withPartialChecksum(frame, proto);
        expect(outcome(prog, frame), `${proto} with a partial checksum`).toBe('declined');
        expect(ts(frame)).not.toBeNull();
      }
    }
    // IPv4 UDP without a checksum (0) is whole.
    const noSum = eth(ipv4({ src: '50.0.0.1', dst: VIP4 }).udp({ sport: 7, dport: 53 }).payload(40).build());
    noSum[14 + 20 + 6] = noSum[14 + 20 + 7] = 0;
    expect(outcome(prog, noSum)).toBe(ts(noSum));

    // No active target: declined, and the forwarder counts it as no_target.
    const tcp = eth(ipv4({ src: '50.0.0.1', dst: VIP4 }).tcp({ sport: 1, dport: 2 }).build());
    expect(outcome(prog, tcp)).toMatch(/^0a0000ee/);
    table.deactivate(0);
    table.deactivate(1);
    publish(prog, table);
    expect(outcome(prog, tcp)).toBe('declined');
    expect(ts(tcp)).toBeNull();
  });
});

/** Puts in the frame's TCP/UDP checksum field what checksum offload leaves there: the folded pseudo-header sum. */
function withPartialChecksum(frame: Uint8Array, proto: 'tcp' | 'udp'): void {
  const v6 = frame[12] === 0x86;
  const l3 = 14;
  const l4 = l3 + (v6 ? 40 : (frame[l3]! & 15) * 4);
  const [from, to] = v6 ? [l3 + 8, l3 + 40] : [l3 + 12, l3 + 20];
  let sum = (proto === 'tcp' ? 6 : 17) + (frame.length - l4);
  for (let i = from; i < to; i += 2) sum += (frame[i]! << 8) | frame[i + 1]!;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  const field = l4 + (proto === 'tcp' ? 16 : 6);
  frame[field] = sum >> 8;
  frame[field + 1] = sum & 0xff;
}
