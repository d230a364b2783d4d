// `nfqlb lb` and `nfqlb flowlb`: one NFQUEUE per thread. A single queue runs on the main thread;
// a range a:b runs one worker_thread per queue, so a busy queue never delays another. The main
// thread owns what exists once per process: the tun device, the announcement device (--announce,
// see announce.ts), the fragment statistics file, the trace server, the metrics endpoint and
// (flowlb) the flow server.
import { Worker } from 'node:worker_threads';
import { log } from '../log.js';
import type { MetricsAddress } from '../metrics.js';
import { MetricsServer, newRegistry } from '../metrics.js';
import { kernelQueueStats, NfQueue } from '../nfqueue.js';
import { openShm, publishShm } from '../shm.js';
import { NFQLB_TABLE, TableFollower, TargetStore } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';
import { Announcement } from './announce.js';
import { Balancer, SingleTable, serveQueue, type TargetSelector } from './balancer.js';
import type { Compat } from './compat.js';
import { ConnTrack, type ConnTrackTimeouts } from './conntrack.js';
import { QUEUE_COUNTER, QueueCounters } from './counters.js';
import { FlowServer } from './flow-server.js';
import { FlowSelector, type FlowSpec, MAX_FLOW_SLOTS } from './flow-table.js';
import { FRAG_STAT, FRAG_STATS_BYTES, FragTable } from './frag-table.js';
import { claimLogConfig, followLogLevel, openLogConfig } from './log-level.js';
import { registerNfqlbMetrics } from './metrics.js';
import { compatOffload, Offload, type OffloadOptions } from './offload.js';
import { startTraceServer } from './trace-server.js';
import { Tracer } from './tracer.js';
import { Tun } from './tun.js';

/**
 * What `nfqlb lb` and `nfqlb flowlb` run with. The CLI (cli/nfqlb.ts) maps the reference's
 * option spellings (--tshm, --qlength, --ft_size, ...) to these names.
 */
export interface LbOptions {
  /** The target table's shm name (lb); null for flowlb, whose flows name their tables. */
  targetTable: string | null;
  /** The LB-tier table: a fragment goes to the lb of the tier that owns its addresses; null for none. */
  tierTable: string | null;
  queues: number[];
  /** Packets the kernel keeps waiting for a verdict, per queue. */
  queueLength: number;
  /** A full queue lets packets through unmarked (NFQA_CFG_F_FAIL_OPEN) instead of dropping them. */
  failOpen: boolean;
  mtu: number;
  /** The fwmark of a packet when no target is active; -1 drops it. */
  noTargetFwmark: number;
  hashMode: number;
  batch: number;
  /** Tun device for re-injecting stored fragments, or null (then none are stored). */
  tun: string | null;
  /** The UDP port of SCTP over UDP (RFC 6951), whose packets are hashed as SCTP; 0 for none. */
  sctpEncapPort: number;
  fragments: FragmentOptions;
  traceAddress: string;
  /** A device held while serving, for a routing daemon's VIP announcement; null for none. */
  announce: {
    device: string;
    /** Milliseconds to keep serving after withdrawing on SIGTERM/SIGINT, while routes move. */
    lingerMs: number;
  } | null;
  /** Accept a tcp control address that is not loopback (--allow_remote). */
  allowRemote?: boolean;
  /** Where to serve Prometheus metrics and /healthz (--metrics); without: no endpoint, no per-packet counting. */
  metrics?: MetricsAddress | null;
  /** Connection tracking; absent: stateless. */
  conntrack?: {
    /** Flow entries per queue. */
    entries: number;
    /** Default Cilium's. */
    timeouts?: ConnTrackTimeouts;
  };
  /** flowlb only. */
  flow?: {
    /** The fwmark of a packet that matches no flow; -1 drops it. */
    noMatchFwmark: number;
    /** ICMP echo requests match flows on their addresses only. */
    promiscuousPing: boolean;
  };
  /** lb --offload: whole VIP packets are marked at tc ingress and never reach the queue. */
  offload?: OffloadOptions;
  /** --compat=nfqlb: the reference's fwmark for every packet it forwards (see compat.ts). */
  compat?: Compat | null;
}

/** The fragment table: later fragments follow their first one's target. */
export interface FragmentOptions {
  /** Shm name of the fragment statistics, one block per queue (`nfqlb stats` reads it). */
  statsShm: string;
  /** Hash buckets. */
  size: number;
  /** Extra entries for hash collisions. */
  buckets: number;
  /** Later fragments stored until their first one comes (used only with a tun device). */
  maxStored: number;
  /** Lifetime of an entry, in milliseconds. */
  ttlMs: number;
}

/** Parses the reference's `--queue`: `n`, or `a:b` for queues a..b inclusive. */
export function parseQueueRange(text: string): number[] {
  const m = /^(\d+)(?::(\d+))?$/.exec(text);
  const first = Number(m?.[1]);
  const last = m?.[2] === undefined ? first : Number(m[2]);
  if (!m || first > last || last > 65535) throw new UsageError(`--queue: '${text}' is not a queue number or a range a:b`);
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/** What a queue's thread gets from the main thread. */
export interface QueueContext {
  queue: number;
  /** This queue's block in the fragment statistics file. */
  statsIndex: number;
  /** The main thread's tun fd, shared (a tun device takes one fd). */
  tunFd: number | null;
  /** Trace lines go here (the trace server, or the worker's port to the main thread). */
  traceSink: (line: string) => void;
  /** flowlb: match counters of every queue, MAX_FLOW_SLOTS per queue (queue statsIndex's are ours). */
  flowCounters: SharedArrayBuffer | null;
  /** Every queue's QueueCounters block (block statsIndex is ours). */
  counters: SharedArrayBuffer;
}

export interface QueueHandle {
  stop(): void;
  /** flowlb: the current flow set (sent on every change). */
  setFlows?(flows: FlowSpec[], traceFlows: FlowSpec[]): void;
  balancer: Balancer;
}

/** Serves one queue until `stop` is called. */
export function startQueue(o: LbOptions, ctx: QueueContext): QueueHandle {
  const tracer = new Tracer(openLogConfig(), ctx.traceSink);
  const counters = new QueueCounters(ctx.counters, ctx.statsIndex);
  const ct = o.conntrack;
  const conntrack =
    ct === undefined
      ? null
      : new ConnTrack({ size: ct.entries, timeouts: ct.timeouts, now: performance.now(), counters: counters.conntrackCounters() });
  // With conntrack, each target table comes with its drain list.
  const withDrain = (name: string, t: TargetTable): TargetTable => {
    conntrack?.attachDrain(t, TargetStore.drainList(name));
    return t;
  };
  const flows =
    o.targetTable === null
      ? new FlowSelector({
          promiscuousPing: o.flow?.promiscuousPing ?? false,
          tracer,
          counters:
            ctx.flowCounters === null ? undefined : new Float64Array(ctx.flowCounters, ctx.statsIndex * MAX_FLOW_SLOTS * 8, MAX_FLOW_SLOTS),
          openTable: (name) => withDrain(name, TargetStore.open(NFQLB_TABLE, name).table),
        })
      : null;
  // `init` may re-create a table while we run: followed, and the new one used once it is readable.
  const name = o.targetTable;
  const target = name === null ? null : new TableFollower(NFQLB_TABLE, name, { onReplace: (t) => withDrain(name, t) });
  const single = target === null ? null : new SingleTable(withDrain(target.name, target.table), target.name);
  const tier = o.tierTable === null ? null : new TableFollower(NFQLB_TABLE, o.tierTable);
  const selector: TargetSelector = flows ?? single!;
  const f = o.fragments;
  const statsBuffer = openShm(f.statsShm, true);
  const frags = new FragTable(
    { size: f.size, buckets: f.buckets, maxFragments: o.tun === null ? 0 : f.maxStored, mtu: o.mtu, ttlMs: f.ttlMs },
    new Uint32Array(statsBuffer, ctx.statsIndex * FRAG_STATS_BYTES, FRAG_STAT.WORDS),
  );
  const balancer = new Balancer(selector, {
    counters: counters.counters,
    hashMode: o.hashMode,
    notargetsFwmark: o.noTargetFwmark,
    nolbFwmark: o.flow?.noMatchFwmark ?? -1,
    sctpEncap: o.sctpEncapPort,
    lbTable: tier?.table ?? null,
    frags,
    tun: o.tun === null || ctx.tunFd === null ? null : new Tun(o.tun, ctx.tunFd),
    tracer,
    conntrack,
    compat: o.compat,
  });
  const queue = new NfQueue({
    queue: ctx.queue,
    maxLen: o.queueLength,
    failOpen: o.failOpen,
    batch: o.batch,
    // Stored fragments must be whole; otherwise the headers are all we need (--compat: as many as
    // the reference, which reads --mtu bytes).
    copyRange: o.tun === null && !o.compat ? 256 : o.mtu,
    onError: (e) => log.error({ queue: ctx.queue, err: e.message }, 'verdict handler failed'),
  });
  serveQueue(queue, balancer.fwmarkOf, o.metrics ? counters : null);
  counters.counters[QUEUE_COUNTER.bound] = 1;
  // The addon's own counters, copied for the metrics reader (which may be another thread).
  const copyNative = () => {
    const n = queue.stats();
    counters.counters[QUEUE_COUNTER.enobufs] = n.enobufs;
    counters.counters[QUEUE_COUNTER.verdictErrors] = n.verdictErrors;
  };
  const sweeper = setInterval(() => {
    // Timed-out fragment entries are otherwise reclaimed only when their bucket is reused.
    frags.sweep(performance.now());
    conntrack?.tick(performance.now());
    if (target?.check()) single!.table = target.table;
    if (tier?.check()) balancer.lbTable = tier.table;
    copyNative();
  }, 1000);
  const ctSize = conntrack === null ? undefined : { entries: conntrack.capacity, bytes: ConnTrack.byteLength(conntrack.capacity) };
  log.info(
    {
      queue: ctx.queue,
      tshm: o.targetTable ?? undefined,
      lbshm: o.tierTable ?? undefined,
      tun: o.tun ?? undefined,
      copyRange: queue.copyRange,
      conntrack: ctSize,
    },
    'serving queue',
  );
  return {
    balancer,
    setFlows: flows === null ? undefined : (specs, traceSpecs) => flows.setFlows(specs, traceSpecs),
    stop: () => {
      clearInterval(sweeper);
      queue.stop();
      counters.counters[QUEUE_COUNTER.bound] = 0;
      copyNative();
      // The addon's packets and batches win: ours are counted only with --metrics.
      log.info(
        { queue: ctx.queue, ...counters.record(), conntrack: conntrack?.stats(), ...queue.stats(), kernel: kernelQueueStats(ctx.queue) },
        'queue closed',
      );
    },
  };
}

interface WorkerHandle {
  done: Promise<void>;
  stop(): void;
  setFlows(flows: FlowSpec[], traceFlows: FlowSpec[]): void;
}

function startWorker(o: LbOptions, ctx: Omit<QueueContext, 'traceSink'>, traceSink: (line: string) => void): WorkerHandle {
  const worker = new Worker(new URL('./queue-worker.js', import.meta.url), { workerData: { options: o, ctx } });
  worker.on('message', (m: { trace?: string }) => {
    if (m.trace !== undefined) traceSink(m.trace);
  });
  const done = new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`queue ${ctx.queue} worker exited with ${code}`))));
  });
  return {
    done,
    stop: () => worker.postMessage({ stop: true }),
    setFlows: (flows, traceFlows) => worker.postMessage({ flows, traceFlows }),
  };
}

/** Creates the fragment statistics file afresh, all counters 0: one block per queue (the reference has one). */
function createFragStats(name: string, blocks: number): void {
  publishShm(name, blocks * FRAG_STATS_BYTES, () => undefined);
}

/** Runs until SIGINT/SIGTERM, then releases the queues (so --queue-bypass lets traffic pass). */
export async function runLb(o: LbOptions): Promise<number> {
  // Fail fast, with one line, on a missing table or tun device.
  for (const name of [o.targetTable, o.tierTable]) if (name !== null) TargetStore.open(NFQLB_TABLE, name);
  if (o.sctpEncapPort !== 0 && o.targetTable === null) throw new UsageError('--sctp_encap is a lb option; flows set --udpencap');
  let tun: Tun | null = null;
  if (o.tun !== null) {
    tun = new Tun(o.tun);
    const tunMtu = tun.mtu();
    if (tunMtu < o.mtu) {
      tun.close();
      throw new UsageError(`Tun mtu too small; ${tunMtu} < ${o.mtu}`);
    }
  }
  const counterBlocks = QueueCounters.allocate(o.queues.length);
  const flowCounters = o.targetTable === null ? new SharedArrayBuffer(o.queues.length * MAX_FLOW_SLOTS * 8) : null;
  const counters = flowCounters === null ? null : new Float64Array(flowCounters);
  let flowServer: FlowServer | null = null;
  const metrics = !o.metrics
    ? null
    : await startMetrics(o, o.metrics, counterBlocks, () => flowServer).catch((e: unknown) => {
        tun?.close();
        throw e;
      });
  // Checked and attached before anything else is created (a kernel that dies with us detaches it).
  const offloadOptions = compatOffload(o.offload, o.compat);
  const offload = offloadOptions === undefined ? null : Offload.start(offloadOptions, o.targetTable!, o.hashMode, o.sctpEncapPort);
  const f = o.fragments;
  createFragStats(f.statsShm, o.queues.length);
  const logConfig = claimLogConfig();
  const stopLogLevel = followLogLevel(logConfig);
  const traceServer = await startTraceServer(o.traceAddress, o.queues, logConfig, o.allowRemote);
  const traceSink = (line: string) => traceServer?.write(line);
  const tracer = new Tracer(logConfig, traceSink);
  const frag = tun === null ? 0 : f.maxStored;
  log.info({ size: f.size, buckets: f.buckets, frag, mtu: o.mtu, ttl: f.ttlMs, ftShm: f.statsShm }, 'FragTable');

  // Announced once the queues are bound; a graceful stop withdraws, drains, then stops them.
  let announcement: Announcement | null = null;
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  }).then(() => announcement?.withdraw(o.announce!.lingerMs));
  const tunFd = tun?.fd() ?? null;
  const flowOptions = { allowRemote: o.allowRemote };
  let failed = false;
  try {
    if (o.queues.length === 1) {
      const handle = startQueue(o, { queue: o.queues[0]!, statsIndex: 0, tunFd, traceSink, flowCounters, counters: counterBlocks });
      try {
        if (o.announce !== null) announcement = Announcement.open(o.announce.device);
        if (counters !== null) flowServer = await FlowServer.start((s, t) => handle.setFlows!(s, t), tracer, counters, flowOptions);
        await stopped;
      } finally {
        handle.stop();
      }
    } else {
      const workers = o.queues.map((queue, statsIndex) =>
        startWorker(o, { queue, statsIndex, tunFd, flowCounters, counters: counterBlocks }, traceSink),
      );
      const all = Promise.all(workers.map((w) => w.done));
      // A worker that fails (e.g. its queue is taken) ends the whole lb, releasing the other queues.
      const fail = (e: Error) => {
        failed = true;
        log.error({ err: e.message }, 'queue worker failed');
      };
      try {
        if (o.announce !== null) announcement = Announcement.open(o.announce.device);
        if (counters !== null) {
          flowServer = await FlowServer.start(
            (s, t) => {
              for (const w of workers) w.setFlows(s, t);
            },
            tracer,
            counters,
            flowOptions,
          );
        }
        await Promise.race([stopped, all]).catch(fail);
      } finally {
        for (const w of workers) w.stop();
        await all.catch(fail);
      }
    }
  } finally {
    offload?.close();
    await metrics?.close();
    await flowServer?.close();
    await traceServer?.close();
    stopLogLevel();
    tun?.close();
    announcement?.close();
  }
  return failed ? 1 : 0;
}

/** Listens on --metrics before any queue is bound, so a bad address changes nothing. */
async function startMetrics(
  o: LbOptions,
  address: MetricsAddress,
  counters: SharedArrayBuffer,
  flowServer: () => FlowServer | null,
): Promise<MetricsServer> {
  const flows = () => flowServer()?.flows.all() ?? [];
  const registry = newRegistry();
  const { health, stop } = registerNfqlbMetrics(registry, {
    queues: o.queues,
    counters,
    conntrack: o.conntrack !== undefined,
    tables: () => {
      const names = o.targetTable !== null ? [o.targetTable] : flows().flatMap((f) => (f.target === null ? [] : [f.target]));
      if (o.tierTable !== null) names.push(o.tierTable);
      return [...new Set(names)];
    },
    // '#' flows are internal (the UDP side of an SCTP encapsulation).
    flows:
      o.targetTable !== null
        ? undefined
        : () =>
            flows()
              .filter((f) => !f.name.startsWith('#'))
              .map((f) => ({ name: f.name, matches: flowServer()!.count(f.slot) })),
  });
  try {
    return await MetricsServer.start(address, registry, health, stop);
  } catch (e) {
    stop();
    throw e;
  }
}
