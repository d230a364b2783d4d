// The nfqlb counters behind --metrics: the per-queue block (fwmark hash table, overflow), the
// counting done by serveQueue over a fake queue fed with the nfqlb fixtures (every packet ends
// up in exactly one place: a target, a drop reason, or the fragment store), and the Prometheus
// text the collectors make of the blocks.

import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { parseMetricsAddress } from '../../src/cli/options.js';
import { Balancer, SingleTable, serveQueue } from '../../src/nfqlb/balancer.js';
import { ConnTrack } from '../../src/nfqlb/conntrack.js';
import { fwmarkTotals, MAX_FWMARKS, QUEUE_COUNTER as QC, QueueCounters } from '../../src/nfqlb/counters.js';
import { registerNfqlbMetrics } from '../../src/nfqlb/metrics.js';
import { DESC, type NativeNfQueue, NF_ACCEPT, NfQueue, type NfQueueStats } from '../../src/nfqueue.js';
import { TargetTable } from '../../src/target-table.js';
import { buildTable, fixtureBalancer, fixtureGroups, type TableName } from '../fixtures/nfqlb-fixtures.js';
import { ipv4, TCP_FLAGS } from '../fixtures/packet-builder.js';

/** A queue without the kernel: `deliver` runs one batch through the verdict function. */
class FakeQueue {
  queue!: NfQueue;
  private onBatch: ((count: number) => void) | null = null;

  constructor(copyRange = 256, batch = 16) {
    const fake = this;
    class Native implements NativeNfQueue {
      start(onBatch: (count: number) => void): void {
        fake.onBatch = onBatch;
      }
      close(): void {}
      stats(): NfQueueStats {
        return { packets: 0, batches: 0, verdicts: 0, sendmsgCalls: 0, recvCalls: 0, enobufs: 0, verdictErrors: 0, sendErrors: 0 };
      }
    }
    this.queue = new NfQueue({ queue: 1, copyRange, batch }, Native);
  }

  /** Fills desc/data as the addon does (len: what the kernel says the packet's length is); returns the verdicts. */
  deliver(packets: Uint8Array[], len = (p: Uint8Array) => p.length): { verdict: number; fwmark: number }[] {
    const { desc, data, verdicts, copyRange } = this.queue;
    packets.forEach((p, i) => {
      const caplen = Math.min(p.length, copyRange);
      data.set(p.subarray(0, caplen), i * copyRange);
      desc.set([i + 1, i * copyRange, caplen, len(p)], i * DESC.WORDS);
    });
    this.onBatch!(packets.length);
    return packets.map((_, i) => ({ verdict: verdicts[2 * i]!, fwmark: verdicts[2 * i + 1]! }));
  }
}

const tables: Record<TableName, TargetTable> = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') };

describe('QueueCounters', () => {
  it('counts packets and bytes per fwmark, in blocks of one shared buffer summed by fwmarkTotals', () => {
    const buffer = QueueCounters.allocate(2);
    const [a, b] = [new QueueCounters(buffer, 0), new QueueCounters(buffer, 1)];
    const marks = [0, 1, 100, 101, 0x7fffffff, 65536, 200];
    marks.forEach((fw, i) => {
      for (let n = 0; n <= i; n++) a.countTarget(fw, 100);
      b.countTarget(fw, 1);
    });
    const totals = fwmarkTotals([a, b]);
    expect(new Set(totals.keys())).toEqual(new Set(marks));
    for (const [i, fw] of marks.entries()) expect(totals.get(fw)).toEqual({ packets: i + 2, bytes: 100 * (i + 1) + 1 });
    a.counters[QC.noTarget] = 5;
    expect(new QueueCounters(buffer, 0).record().noTarget).toBe(5);
    expect(new QueueCounters(buffer, 1).record().noTarget).toBe(0);
  });

  it(`keeps ${MAX_FWMARKS} distinct fwmarks apart and counts the rest as one overflow (-1)`, () => {
    const c = new QueueCounters();
    for (let fw = 0; fw < MAX_FWMARKS + 10; fw++) c.countTarget(fw * 7919, 10);
    for (let fw = 0; fw < MAX_FWMARKS; fw++) c.countTarget(fw * 7919, 10);
    const totals = fwmarkTotals([c]);
    expect(totals.size).toBe(MAX_FWMARKS + 1);
    expect(totals.get(-1)).toEqual({ packets: 10, bytes: 100 });
    expect(totals.get(0)).toEqual({ packets: 2, bytes: 20 });
    expect(totals.get((MAX_FWMARKS - 1) * 7919)).toEqual({ packets: 2, bytes: 20 });
  });
});

describe('serveQueue with counters', () => {
  it.each(fixtureGroups().map((g) => [g.name, g] as const))(
    '%s: every packet is counted once, bytes are the kernel length',
    (_name, group) => {
      const q = new FakeQueue();
      const counters = new QueueCounters();
      const injected: Uint8Array[] = [];
      // The balancer counts into the same block as serveQueue, as startQueue wires them.
      const balancer = fixtureBalancer(group.config, tables, injected, () => 0, { counters: counters.counters });
      serveQueue(q.queue, balancer.fwmarkOf, counters);
      const accepted = new Map<number, { packets: number; bytes: number }>();
      let packets = 0;
      let batches = 0;
      const run = (pkts: Uint8Array[]) => {
        for (let i = 0; i < pkts.length; i += 16) {
          const batch = pkts.slice(i, i + 16);
          q.deliver(batch, (p) => p.length + 3).forEach((v, k) => {
            if (v.verdict !== NF_ACCEPT) return;
            const t = accepted.get(v.fwmark) ?? { packets: 0, bytes: 0 };
            t.packets++;
            t.bytes += batch[k]!.length + 3;
            accepted.set(v.fwmark, t);
          });
          packets += batch.length;
          batches++;
        }
      };
      for (const fx of group.fixtures) {
        run(fx.packets);
        // Re-injected fragments come back through the queue.
        while (injected.length > 0) run(injected.splice(0));
      }
      const c = counters.record();
      expect(c.packets).toBe(packets);
      expect(c.batches).toBe(batches);
      expect(fwmarkTotals([counters])).toEqual(accepted);
      const acceptedPackets = [...accepted.values()].reduce((n, t) => n + t.packets, 0);
      expect(acceptedPackets + c.parseErrors + c.noTarget + c.noFlowMatch + c.fragsDropped + c.fragsStored).toBe(packets);
    },
  );

  it('counts each drop under its reason', () => {
    const empty = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(13, 4)), 13, 4, 0);
    const counters = new QueueCounters();
    const q = new FakeQueue();
    serveQueue(
      q.queue,
      new Balancer(new SingleTable(empty, 'empty'), { hashMode: 0, notargetsFwmark: -1, counters: counters.counters }).fwmarkOf,
      counters,
    );
    const udp = ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: 1000, dport: 5001 }).payload(10).build();
    q.deliver([udp, udp, new Uint8Array([0x45, 0, 0])]);
    expect(counters.record()).toMatchObject({ packets: 3, batches: 1, noTarget: 2, parseErrors: 1, noFlowMatch: 0 });
    expect(fwmarkTotals([counters]).size).toBe(0);
  });

  it('counts a batch whose verdict function threw as verdict errors', () => {
    const counters = new QueueCounters();
    const q = new FakeQueue();
    serveQueue(
      q.queue,
      () => {
        throw new Error('bug');
      },
      counters,
    );
    expect(() => q.deliver([new Uint8Array(20), new Uint8Array(20)])).toThrow('bug');
    expect(counters.record()).toMatchObject({ packets: 2, batches: 1, handlerErrors: 2 });
  });
});

describe('the nfqlb metrics', () => {
  it('sum the queues (or label them by queue) and name fwmarks, reasons and results', async () => {
    const buffer = QueueCounters.allocate(2);
    const [q0, q1] = [new QueueCounters(buffer, 0), new QueueCounters(buffer, 1)];
    q0.counters[QC.packets] = 10;
    q1.counters[QC.packets] = 7;
    q1.counters[QC.bound] = 1;
    q0.counters[QC.noTarget] = 2;
    q1.counters[QC.noTarget] = 3;
    q1.counters[QC.handlerErrors] = 1;
    q0.counters[QC.verdictErrors] = 4;
    q0.counters[QC.fragsDropped] = 1;
    q1.counters[QC.fragsInjectFailed] = 2;
    q0.countTarget(101, 1500);
    q1.countTarget(101, 60);
    q1.countTarget(102, 40);
    const registry = new Registry();
    const { health, stop } = registerNfqlbMetrics(registry, {
      queues: [4, 5],
      counters: buffer,
      tables: () => [],
      flows: () => [{ name: 'web', matches: 9 }],
    });
    try {
      const text = await registry.metrics();
      for (const line of [
        'nfqlb_packets_total{queue="4"} 10',
        'nfqlb_packets_total{queue="5"} 7',
        'nfqlb_queue_bound{queue="5"} 1',
        'nfqlb_queue_bound{queue="4"} 0',
        'nfqlb_drops_total{reason="no_target"} 5',
        'nfqlb_drops_total{reason="verdict_error"} 5',
        'nfqlb_drops_total{reason="frag_discarded"} 3',
        'nfqlb_fragments_total{result="discarded"} 3',
        'nfqlb_fragments_total{result="stored"} 0',
        'nfqlb_target_packets_total{fwmark="101"} 2',
        'nfqlb_target_bytes_total{fwmark="101"} 1560',
        'nfqlb_target_packets_total{fwmark="102"} 1',
        'nfqlb_flow_matches_total{flow="web"} 9',
        '# TYPE nfqlb_drops_total counter',
        '# TYPE nfqlb_nfqueue_queue_length gauge',
      ])
        expect(text.split('\n')).toContain(line);
      // Neither queue is bound in the kernel (there is none here).
      expect(health()).toBe('queue 4 not bound; queue 5 not bound');
    } finally {
      stop();
    }
  });
});

describe('conntrack metrics', () => {
  it("export the counts a queue's flow table keeps in its block", async () => {
    const buffer = QueueCounters.allocate(1);
    const block = new QueueCounters(buffer, 0);
    const t = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(997, 4)), 997, 4, 0);
    t.activate([101]);
    const ct = new ConnTrack({ size: 64, now: 0, counters: block.conntrackCounters() });
    const lb = new Balancer(new SingleTable(t, 't'), { hashMode: 0, notargetsFwmark: -1, conntrack: ct });
    const syn = ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).tcp({ sport: 4000, dport: 80, flags: TCP_FLAGS.syn }).build();
    const ack = ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).tcp({ sport: 4000, dport: 80, flags: TCP_FLAGS.ack }).build();
    for (const pkt of [syn, ack, ack]) expect(lb.fwmarkOf(pkt, 0, pkt.length)).toBe(101);
    const registry = new Registry();
    const { stop } = registerNfqlbMetrics(registry, { queues: [3], counters: buffer, tables: () => [], conntrack: true });
    try {
      const lines = (await registry.metrics()).split('\n');
      for (const line of [
        'nfqlb_conntrack_entries{queue="3"} 1',
        'nfqlb_conntrack_lookups_total{result="miss_syn"} 1',
        'nfqlb_conntrack_lookups_total{result="hit"} 2',
        'nfqlb_conntrack_evictions_total 0',
      ])
        expect(lines).toContain(line);
      // The block's own counters are not touched by the table.
      expect(block.record().packets).toBe(0);
    } finally {
      stop();
    }
  });

  it('are absent without --conntrack', async () => {
    const registry = new Registry();
    const { stop } = registerNfqlbMetrics(registry, { queues: [3], counters: QueueCounters.allocate(1), tables: () => [] });
    try {
      expect(await registry.metrics()).not.toContain('nfqlb_conntrack_');
    } finally {
      stop();
    }
  });
});

describe('--metrics', () => {
  it.each([
    ['9110', { host: '127.0.0.1', port: 9110 }],
    ['0.0.0.0:9110', { host: '0.0.0.0', port: 9110 }],
    ['192.168.1.5:1', { host: '192.168.1.5', port: 1 }],
    ['[::]:65535', { host: '::', port: 65535 }],
    ['[fd00::1]:9110', { host: 'fd00::1', port: 9110 }],
  ])('%s', (text, want) => expect(parseMetricsAddress(text)).toEqual(want));

  it.each([
    '',
    ':9110',
    '0',
    '65536',
    '9110:',
    '1.2.3:9110',
    '1.2.3.256:9110',
    'localhost:9110',
    '::1:9110',
    '[1.2.3.4]:9110',
    '[::1]',
    'x',
  ])('rejects %j with a UsageError naming --metrics', (text) => expect(() => parseMetricsAddress(text)).toThrow(/^--metrics: /));
});
