// The connection-tracking table of `nfqlb lb --conntrack`: entries, hits, timeouts per TCP
// state, drain and removed targets, eviction order, the stateless fall-back of a full table,
// and no allocation per packet. Pure: in-memory target tables and drain lists.

import { PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { DRAIN_BYTES, DrainList } from '../../src/drain-list.js';
import { packetHash } from '../../src/hash.js';
import { Balancer, SingleTable } from '../../src/nfqlb/balancer.js';
import { ConnTrack, CT_DEFAULT_TIMEOUTS, CT_STAT, CT_WAYS, MIN_EVICT_AGE_MS } from '../../src/nfqlb/conntrack.js';
import { PacketInfo, parsePacket } from '../../src/packet.js';
import { TargetTable } from '../../src/target-table.js';
import { buildTable, fixtureBalancer, fixtureGroups, type TableName } from '../fixtures/nfqlb-fixtures.js';
import { ipv4, ipv6, TCP_FLAGS } from '../fixtures/packet-builder.js';

const M = 997;
const FW = (n: number) => 100 + n;
const { syn, ack, fin, rst } = TCP_FLAGS;

/** A target table with targets 101..100+n in slots 1..n, as the lab sets it up. */
function table(n = 10): TargetTable {
  const t = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(M, 20)), M, 20, 0);
  for (let i = 1; i <= n; i++) t.setIndex(i, FW(i));
  return t;
}

const tcp = (sport: number, flags: number, src = '50.0.0.1') => ipv4({ src, dst: '10.0.0.0' }).tcp({ sport, dport: 5001, flags }).build();
const udp = (sport: number) => ipv6({ src: '2000::1', dst: '1000::' }).udp({ sport, dport: 5001 }).build();

/** One conntrack and a `nfqlb lb` Balancer over it. */
function setup(o: { size?: number; t?: TargetTable } = {}) {
  const t = o.t ?? table();
  const ct = new ConnTrack({ size: o.size ?? 1000, now: 0 });
  const drain = new DrainList(new ArrayBuffer(DRAIN_BYTES));
  ct.attachDrain(t, drain);
  const lb = new Balancer(new SingleTable(t, 't'), { hashMode: 1, notargetsFwmark: -1, conntrack: ct });
  const send = (pkt: Uint8Array) => lb.fwmarkOf(pkt, 0, pkt.length);
  const c = (k: keyof typeof CT_STAT): number => ct.counters[CT_STAT[k]]!;
  return { t, ct, drain, lb, send, c };
}

/** The stateless choice for a packet. */
function maglev(t: TargetTable, pkt: Uint8Array): number {
  const p = new PacketInfo();
  parsePacket(pkt, 0, pkt.length, p);
  return t.fwmarkOf(packetHash(pkt, p, 1));
}

/** A flow (source port) that Maglev sends to target fw. */
function flowTo(t: TargetTable, fw: number, from = 1000): number {
  for (let sport = from; ; sport++) if (maglev(t, tcp(sport, syn)) === fw) return sport;
}

describe('ConnTrack', () => {
  it('records a new flow with the Maglev choice and hits it afterwards', () => {
    const { t, send, c, ct } = setup();
    const first = send(tcp(1234, syn));
    expect(first).toBe(maglev(t, tcp(1234, syn)));
    expect([c('MISS_SYN'), c('HITS'), ct.entries]).toEqual([1, 0, 1]);
    expect(send(tcp(1234, ack))).toBe(first);
    expect(send(tcp(1234, ack))).toBe(first);
    expect([c('MISS_SYN'), c('HITS'), ct.entries]).toEqual([1, 2, 1]);
    // Another source port is another flow, and a flow first seen mid-way is counted apart.
    send(tcp(1235, ack));
    send(udp(7));
    expect([c('MISS_NON_SYN'), c('MISS_OTHER'), ct.entries]).toEqual([1, 1, 2 + 1]);
  });

  it('keeps established flows on their target when targets are added', () => {
    const { t, send, c } = setup({ t: table(5) });
    const before = Array.from({ length: 300 }, (_, k) => send(tcp(2000 + k, syn)));
    for (let i = 6; i <= 10; i++) t.setIndex(i, FW(i));
    const moved = before.filter((fw, k) => maglev(t, tcp(2000 + k, ack)) !== fw).length;
    expect(moved).toBeGreaterThan(50); // stateless, about half of them would move
    expect(before.map((_, k) => send(tcp(2000 + k, ack)))).toEqual(before);
    expect(c('HITS')).toBe(300);
    // New flows use the new targets.
    const fresh = new Set(Array.from({ length: 300 }, (_, k) => send(tcp(9000 + k, syn))));
    expect(fresh).toContain(FW(8));
  });

  it('drains a deactivated target: its flows stay, new flows avoid it', () => {
    const { t, drain, send, c } = setup();
    const sport = flowTo(t, FW(3));
    expect(send(tcp(sport, syn))).toBe(FW(3));
    drain.add(FW(3));
    t.clearIndex(3);
    expect(send(tcp(sport, ack))).toBe(FW(3));
    expect(c('DRAINING')).toBe(1);
    for (let k = 0; k < 200; k++) expect(send(tcp(20000 + k, syn))).not.toBe(FW(3));
    // With every target gone, the draining flow still reaches its own.
    for (let i = 1; i <= 10; i++) t.clearIndex(i);
    expect(send(tcp(sport, ack))).toBe(FW(3));
    expect(send(tcp(sport + 1, syn))).toBe(-1);
  });

  it('sends the flows of a removed target (not draining) back to Maglev', () => {
    const { t, send, c } = setup();
    const sport = flowTo(t, FW(4));
    send(tcp(sport, syn));
    t.clearIndex(4);
    const now = send(tcp(sport, ack));
    expect(now).toBe(maglev(t, tcp(sport, ack)));
    expect(now).not.toBe(FW(4));
    expect(c('REPLACED')).toBe(1);
    // Recorded again with its new target.
    t.setIndex(4, FW(4));
    expect(send(tcp(sport, ack))).toBe(now);
  });

  it('follows a target re-activated in another slot', () => {
    const { t, send, c } = setup();
    const sport = flowTo(t, FW(2));
    send(tcp(sport, syn));
    t.clearIndex(2);
    t.setIndex(15, FW(2));
    expect(send(tcp(sport, ack))).toBe(FW(2));
    expect(c('HITS')).toBe(1);
  });

  it('treats a SYN after the handshake as a new connection on the same ports', () => {
    const { t, drain, send, c } = setup();
    const sport = flowTo(t, FW(5));
    send(tcp(sport, syn));
    expect(send(tcp(sport, syn))).toBe(FW(5)); // a retransmitted SYN: same connection
    send(tcp(sport, ack));
    drain.add(FW(5));
    t.clearIndex(5);
    expect(send(tcp(sport, fin | ack))).toBe(FW(5));
    // The port is reused: the new connection must avoid the draining target.
    expect(send(tcp(sport, syn))).not.toBe(FW(5));
    expect([c('MISS_SYN'), c('HITS')]).toEqual([2, 3]);
  });

  describe.each([
    ['SYN seen', [syn], CT_DEFAULT_TIMEOUTS.synMs],
    ['established', [syn, ack], CT_DEFAULT_TIMEOUTS.establishedMs],
    ['after FIN', [syn, ack, fin | ack], CT_DEFAULT_TIMEOUTS.closeMs],
    ['after RST', [syn, ack, rst], CT_DEFAULT_TIMEOUTS.closeMs],
    ['mid-flow pickup', [ack], CT_DEFAULT_TIMEOUTS.establishedMs],
  ] as const)('timeout %s', (_name, flags, timeoutMs) => {
    it(`lives ${timeoutMs / 1000} s idle, no longer`, () => {
      for (const gap of [timeoutMs, timeoutMs + 1]) {
        const { send, c, ct } = setup();
        for (const f of flags) send(tcp(4000, f));
        const hits = c('HITS');
        ct.now += gap;
        send(tcp(4000, ack));
        expect(c('HITS') - hits, `after ${gap} ms`).toBe(gap === timeoutMs ? 1 : 0);
        expect(c('EXPIRED')).toBe(gap === timeoutMs ? 0 : 1);
      }
    });
  });

  it('times out UDP after 30 s idle, and a packet restarts the clock', () => {
    const { send, c, ct } = setup();
    send(udp(53));
    ct.now += 20_000;
    send(udp(53));
    ct.now += 30_000;
    send(udp(53));
    expect(c('HITS')).toBe(2);
    ct.now += 30_001;
    send(udp(53));
    expect([c('HITS'), c('EXPIRED'), c('MISS_OTHER')]).toEqual([2, 1, 2]);
  });

  it('sweeps timed-out entries in slices and across the clock wrap', () => {
    const { send, ct } = setup({ size: 64 });
    ct.tick(2 ** 32 - 5000); // the uint32 clock wraps 5 s from now
    for (let k = 0; k < 40; k++) send(udp(k));
    expect(ct.entries).toBe(40);
    for (let s = 1; s <= 16; s++) ct.tick(2 ** 32 - 5000 + 10_000 * s); // 10..160 s later, after the wrap
    expect(ct.entries).toBe(0);
    expect(ct.counters[CT_STAT.EXPIRED]).toBe(40);
  });

  it('evicts the least recently seen entry of a full bucket', () => {
    const { send, c, ct } = setup({ size: CT_WAYS }); // one bucket
    for (let k = 0; k < CT_WAYS; k++) {
      send(udp(k));
      ct.now += MIN_EVICT_AGE_MS;
    }
    send(udp(0)); // flow 0 is now the most recently seen, flow 1 the least
    ct.now += MIN_EVICT_AGE_MS;
    send(udp(100));
    expect([c('EVICTIONS'), ct.entries]).toEqual([1, CT_WAYS]);
    const hits = c('HITS');
    send(udp(0));
    expect(c('HITS')).toBe(hits + 1);
    send(udp(1)); // evicted: a miss, which evicts flow 2 in turn
    expect([c('HITS'), c('EVICTIONS')]).toEqual([hits + 1, 2]);
  });

  it('balances statelessly when every entry of the bucket is active, and never drops', () => {
    const { t, send, c, ct } = setup({ size: CT_WAYS });
    for (let k = 0; k < CT_WAYS; k++) send(tcp(3000 + k, syn));
    for (let k = 0; k < 50; k++) expect(send(tcp(5000 + k, syn))).toBe(maglev(t, tcp(5000 + k, syn)));
    expect([c('NO_ROOM'), c('EVICTIONS'), ct.entries]).toEqual([50, 0, CT_WAYS]);
  });

  it('keys ICMP errors on the flow they quote, without starting a flow', () => {
    const { t, send, c, ct } = setup();
    const sport = flowTo(t, FW(6));
    send(tcp(sport, syn));
    t.clearIndex(6);
    t.setIndex(6, FW(6));
    const quoted = ipv4({ src: '10.0.0.0', dst: '50.0.0.1' })
      .tcp({ sport: 5001, dport: sport, flags: syn | ack })
      .build();
    const err = ipv4({ src: '192.168.1.1', dst: '50.0.0.1' }).icmp(3, 4, { rest: 1400 }).inner(quoted).build();
    // The error travels towards the client here, but the key is the quoted packet's, swapped.
    expect(send(err)).toBe(FW(6));
    expect(c('HITS')).toBe(1);
    const orphan = ipv4({ src: '192.168.1.1', dst: '50.0.0.2' }).icmp(3, 4, { rest: 1400 }).inner(quoted).build();
    send(orphan);
    expect(ct.entries).toBe(1);
  });

  it('keys SCTP on its ports under hash_mode 1: a multihomed association is one entry', () => {
    const { send, c, ct } = setup();
    const path = (src: string) => ipv4({ src, dst: '10.0.0.0' }).sctp({ sport: 7000, dport: 5001 }).build();
    const fw = send(path('50.0.0.1'));
    expect(send(path('60.0.0.9'))).toBe(fw);
    expect([c('MISS_OTHER'), c('HITS'), ct.entries]).toEqual([1, 1, 1]);
    // Other ports: another association.
    send(ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).sctp({ sport: 7001, dport: 5001 }).build());
    expect(ct.entries).toBe(2);
  });

  it('gives every fixture packet the stateless verdict while the targets do not change', () => {
    for (const group of fixtureGroups()) {
      const tables = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') } as Record<TableName, TargetTable>;
      const stateless = fixtureBalancer(group.config, tables, []);
      const tracked = fixtureBalancer(group.config, tables, [], () => 0, { conntrack: new ConnTrack({ size: 4096 }) });
      for (const f of group.fixtures) {
        for (const pkt of f.packets) {
          const a = stateless.fwmarkOf(pkt, 0, pkt.length);
          expect(tracked.fwmarkOf(pkt, 0, pkt.length), `${group.name}: ${f.description}`).toBe(a);
        }
      }
    }
  });

  it('refuses a bad size or timeout', () => {
    expect(() => new ConnTrack({ size: 0 })).toThrow(RangeError);
    expect(() => new ConnTrack({ size: 8, timeouts: { ...CT_DEFAULT_TIMEOUTS, closeMs: 0 } })).toThrow(RangeError);
  });

  it('takes 64 bytes an entry: 1 M entries fit in 64 MB', () => {
    expect(ConnTrack.byteLength(1_000_000)).toBe(64_000_000);
    expect(ConnTrack.byteLength(1_000_000)).toBeLessThan(64 * 2 ** 20);
  });

  it('allocates nothing per packet, and its memory does not grow with the flows', async () => {
    const pkts = Array.from({ length: 8192 }, (_, k) => (k % 3 === 0 ? udp(k) : tcp(k, k % 2 ? syn : ack)));
    /** Scavenges (young-generation collections) while `send` handles `n` packets. */
    async function scavenges(send: (p: Uint8Array) => number, n: number): Promise<number> {
      for (let k = 0; k < 100_000; k++) send(pkts[k % pkts.length]!); // warm up (JIT)
      let count = 0;
      const obs = new PerformanceObserver((list) => (count += list.getEntries().length));
      obs.observe({ entryTypes: ['gc'] });
      for (let k = 0; k < n; k++) send(pkts[k % pkts.length]!);
      await new Promise((r) => setTimeout(r, 20));
      obs.disconnect();
      return count;
    }
    // The stateless path itself allocates a little (a few bytes a packet): conntrack adds nothing.
    const stateless = new Balancer(new SingleTable(table(), 't'), { hashMode: 1, notargetsFwmark: -1 });
    const base = await scavenges((p) => stateless.fwmarkOf(p, 0, p.length), 2_000_000);
    const { send, ct } = setup({ size: 4096 });
    expect(await scavenges(send, 2_000_000)).toBeLessThanOrEqual(base + 1);
    // 300 000 new flows through a table of 4096: evictions, never growth.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const before = process.memoryUsage();
    for (let k = 0; k < 300_000; k++) {
      ct.now += 10;
      send(tcp(k & 0xffff, syn, `50.${(k >> 16) & 0xff}.1.2`));
    }
    gc();
    const after = process.memoryUsage();
    expect(ct.counters[CT_STAT.EVICTIONS]).toBeGreaterThan(250_000);
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(100_000);
    expect(after.heapUsed - before.heapUsed).toBeLessThan(2_000_000);
  }, 120_000);
});

describe('DrainList', () => {
  it('adds, finds, removes (moving the last one in) and clears', () => {
    const d = new DrainList(new ArrayBuffer(DRAIN_BYTES));
    for (const fw of [5, 6, 7, 6]) d.add(fw);
    expect(d.list()).toEqual([5, 6, 7]);
    d.remove(5);
    expect(d.list()).toEqual([7, 6]);
    expect([d.has(6), d.has(5)]).toEqual([true, false]);
    expect(d.hasRoomFor([1, 2])).toBe(true);
    d.clear();
    expect(d.size).toBe(0);
  });

  it('refuses a file that is not a drain list', () => {
    const buf = new ArrayBuffer(DRAIN_BYTES);
    new Int32Array(buf)[0] = 42;
    expect(() => new DrainList(buf)).toThrow('not a drain list');
    expect(() => new DrainList(new ArrayBuffer(16))).toThrow('not a drain list');
  });
});
