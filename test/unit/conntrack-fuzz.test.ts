// Property test of the conntrack table under random traffic, time and target changes (drain,
// removal with --now, re-activation): every verdict is an active or draining target (-1 only
// with no target active), a recorded flow keeps its target while it lives and its target may
// take it, and the counters add up. A large table (no eviction) and a tiny one (constant
// eviction and stateless fall-back).
import { describe, expect, it } from 'vitest';
import { DRAIN_BYTES, DrainList } from '../../src/drain-list.js';
import { Balancer, SingleTable } from '../../src/nfqlb/balancer.js';
import { ConnTrack, CT_STAT } from '../../src/nfqlb/conntrack.js';
import { TargetTable } from '../../src/target-table.js';
import { ipv4, ipv6, TCP_FLAGS } from '../fixtures/packet-builder.js';
import { prng } from '../fixtures/prng.js';

const ROUNDS = 200_000;
const FLOWS = 300;
const TARGETS = 10;
const FLAGS = [TCP_FLAGS.syn, TCP_FLAGS.ack, TCP_FLAGS.ack, TCP_FLAGS.ack | TCP_FLAGS.psh, TCP_FLAGS.fin | TCP_FLAGS.ack, TCP_FLAGS.rst];

describe.each([
  ['large table', 4096],
  ['tiny table', 16],
])('ConnTrack fuzz: %s', (_name, size) => {
  it(`keeps its invariants over ${ROUNDS} random events`, () => {
    const rnd = prng(0xc0ffee + size);
    const t = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(97, 16)), 97, 16, 0);
    for (let i = 1; i <= TARGETS; i++) t.setIndex(i, 100 + i);
    const drain = new DrainList(new ArrayBuffer(DRAIN_BYTES));
    const ct = new ConnTrack({ size, now: 0 });
    ct.attachDrain(t, drain);
    const lb = new Balancer(new SingleTable(t, 't'), { hashMode: 1, notargetsFwmark: -1, conntrack: ct });
    const packets = Array.from({ length: FLOWS * FLAGS.length }, (_, k) => {
      const flow = Math.floor(k / FLAGS.length);
      return flow % 5 === 0
        ? ipv6({ src: `2000::${flow}`, dst: '1000::' })
            .udp({ sport: 1000 + flow, dport: 53 })
            .build()
        : ipv4({ src: `50.0.${flow & 7}.1`, dst: '10.0.0.0' })
            .tcp({ sport: 1000 + flow, dport: 80, flags: FLAGS[k % FLAGS.length] })
            .build();
    });
    /** Per flow: the last verdict and when. */
    const last = new Map<number, { fw: number; at: number }>();
    let now = 0;
    let tracked = 0;
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS && failures.length < 5; round++) {
      const r = rnd() % 100;
      if (r < 3) {
        const i = 1 + (rnd() % TARGETS);
        const fw = t.active[i]!;
        if (r === 0 && fw >= 0) {
          drain.add(fw); // deactivate: drain
          t.clearIndex(i);
        } else if (r === 1) {
          t.clearIndex(i); // deactivate --now
          drain.remove(100 + i);
        } else {
          t.setIndex(i, 100 + i); // activate
          drain.remove(100 + i);
        }
        continue;
      }
      if (r < 10) {
        now += rnd() % 5000;
        ct.tick(now);
        continue;
      }
      const flow = rnd() % FLOWS;
      const udp = flow % 5 === 0;
      const which = rnd() % FLAGS.length;
      const flags = FLAGS[which]!;
      const pkt = packets[flow * FLAGS.length + which]!;
      const fw = lb.fwmarkOf(pkt, 0, pkt.length);
      tracked++;
      const anyActive = t.active.some((f) => f >= 0);
      if (fw < 0 && anyActive) failures.push(`round ${round}: dropped with targets active`);
      if (fw >= 0 && !t.active.includes(fw) && !drain.has(fw)) failures.push(`round ${round}: fwmark ${fw} neither active nor draining`);
      const prev = last.get(flow);
      const bareSyn = !udp && flags === TCP_FLAGS.syn;
      // Large table: a flow seen within the shortest timeout (10 s) keeps a target that may still take it.
      const prevReachable = prev !== undefined && prev.fw >= 0 && (t.active.includes(prev.fw) || drain.has(prev.fw));
      if (size > FLOWS && prevReachable && now - prev.at <= 10_000 && !bareSyn && fw !== prev.fw) {
        failures.push(`round ${round}: flow ${flow} moved from ${prev.fw} to ${fw}`);
      }
      last.set(flow, { fw, at: now });
      if (round % 97 !== 0) continue;
      const inUse = ct.countInUse();
      if (inUse !== ct.entries || inUse > ct.capacity) failures.push(`round ${round}: ${inUse} entries in use, gauge ${ct.entries}`);
    }
    const c = ct.counters;
    expect(failures).toEqual([]);
    expect(c[CT_STAT.HITS]! + c[CT_STAT.MISS_SYN]! + c[CT_STAT.MISS_NON_SYN]! + c[CT_STAT.MISS_OTHER]!).toBe(tracked);
    expect(c[CT_STAT.HITS]).toBeGreaterThan(0);
    expect(c[CT_STAT.DRAINING]).toBeGreaterThan(0);
    expect(c[CT_STAT.REPLACED]).toBeGreaterThan(0);
    if (size < FLOWS) expect(c[CT_STAT.EVICTIONS]! + c[CT_STAT.NO_ROOM]!).toBeGreaterThan(0);
  }, 120_000);
});
