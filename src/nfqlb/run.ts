// `nfqlb lb` and `nfqlb flowlb`: one NFQUEUE per thread. A single queue runs on the main thread;
// a range a:b runs one worker_thread per queue, so a busy queue never delays another. The main
// thread owns what exists once per process: the tun device, the announcement device (--announce,
// see announce.ts), the fragment statistics file, the trace server, the metrics endpoint and
// (flowlb) the flow server.
import { Worker } from 'node:worker_threads';
import { renameSync, statSync } from 'node:fs';
import { UsageError } from '../usage-error.js';
import type { MetricsAddress } from '../metrics.js';
import { log } from '../log.js';
import { NfQueue, kernelQueueStats } from '../nfqueue.js';
import { createShm, openShm, shmPath } from '../shm.js';
import { TargetTable } from '../target-table.js';
import { FragTable, FRAG_STAT, FRAG_STATS_BYTES } from './frag-table.js';
import { Tun } from './tun.js';
import { Tracer } from './tracer.js';
import { claimLogConfig, followLogLevel, openLogConfig } from './log-level.js';
import { startTraceServer } from './trace-server.js';
import { Balancer, SingleTable, serveQueue, type TargetSelector } from './balancer.js';
import { FlowSelector, MAX_FLOW_SLOTS, type FlowSpec } from './flow-table.js';
import { FlowServer } from './flow-server.js';
import { Offload, type OffloadOptions } from './offload.js';
import { Announcement } from './announce.js';
import { QUEUE_COUNTER, QueueCounters } from './counters.js';
import { MetricsServer, newRegistry } from '../metrics.js';
import { registerNfqlbMetrics } from './metrics.js';
import { ConnTrack, type ConnTrackTimeouts } from './conntrack.js';
import { DrainList } from './drain.js';
import { compatOffload, type Compat } from './compat.js';

export interface LbOptions {
  /** Target table (lb); null for flowlb, whose flows name their tables. */
  tshm: string | null;
  /** The LB-tier table (--lbshm), or null. */
  lbshm: string | null;
  queues: number[];
  qlength: number;
  /** A full queue lets packets through unmarked (NFQA_CFG_F_FAIL_OPEN) instead of dropping them. */
  failOpen: boolean;
  mtu: number;
  notargetsFwmark: number;
  hashMode: number;
  batch: number;
  /** Tun device for re-injecting stored fragments, or null (then none are stored). */
  tun: string | null;
  sctpEncap: number;
  ftShm: string;
  ftSize: number;
  ftBuckets: number;
  ftFrag: number;
  ftTtl: number;
  traceAddress: string;
  /** Device held while serving, for a routing daemon's VIP announcement (--announce), or null. */
  announce: string | null;
  /** With announce: ms to keep serving after withdrawing on SIGTERM/SIGINT (--drain). */
  drainMs: number;
  /** Accept a tcp control address that is not loopback (--allow_remote). */
  allowRemote?: boolean;
  /** Where to serve Prometheus metrics and /healthz (--metrics); without: no endpoint, no per-packet counting. */
  metrics?: MetricsAddress | null;
  /** Connection tracking: entries per queue (absent or 0: stateless) and timeouts (default Cilium's). */
  conntrack?: number;
  ctTimeouts?: ConnTrackTimeouts;
  /** flowlb only. */
  flow?: { nolbFwmark: number; promiscuousPing: boolean };
  /** lb --offload: whole VIP packets are marked at tc ingress and never reach the queue. */
  offload?: OffloadOptions;
  /** --compat=nfqlb: the reference's fwmark for every packet it forwards (see compat.ts). */
  compat?: Compat | null;
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
  const conntrack = (o.conntrack ?? 0) > 0
    ? new ConnTrack({ size: o.conntrack!, timeouts: o.ctTimeouts, now: performance.now(), counters: counters.conntrackCounters() })
    : null;
  // With conntrack, each target table comes with its drain list (created here if missing, so a
  // later `deactivate` writes into the file this lb already maps).
  const openTarget = (name: string): TargetTable => {
    const t = new TargetTable(openShm(name, false));
    conntrack?.attachDrain(t, DrainList.create(name));
    return t;
  };
  const flows =
    o.tshm === null
      ? new FlowSelector({
          promiscuousPing: o.flow?.promiscuousPing ?? false,
          tracer,
          counters: ctx.flowCounters === null ? undefined : new Float64Array(ctx.flowCounters, ctx.statsIndex * MAX_FLOW_SLOTS * 8, MAX_FLOW_SLOTS),
          openTable: openTarget,
        })
      : null;
  const single = o.tshm === null ? null : new SingleTable(openTarget(o.tshm), o.tshm);
  const selector: TargetSelector = flows ?? single!;
  const statsBuffer = openShm(o.ftShm, true);
  const frags = new FragTable(
    { size: o.ftSize, buckets: o.ftBuckets, maxFragments: o.tun === null ? 0 : o.ftFrag, mtu: o.mtu, ttlMs: o.ftTtl },
    new Uint32Array(statsBuffer, ctx.statsIndex * FRAG_STATS_BYTES, FRAG_STAT.WORDS),
  );
  const balancer = new Balancer(selector, {
    counters: counters.counters,
    hashMode: o.hashMode,
    notargetsFwmark: o.notargetsFwmark,
    nolbFwmark: o.flow?.nolbFwmark ?? -1,
    sctpEncap: o.sctpEncap,
    lbTable: o.lbshm === null ? null : new TargetTable(openShm(o.lbshm, false)),
    frags,
    tun: o.tun === null || ctx.tunFd === null ? null : new Tun(o.tun, ctx.tunFd),
    tracer,
    conntrack,
    compat: o.compat,
  });
  const queue = new NfQueue({
    queue: ctx.queue,
    maxLen: o.qlength,
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
  const follow = [
    ...(single === null ? [] : [followTable(o.tshm!, openTarget, (t) => (single.table = t))]),
    ...(o.lbshm === null ? [] : [followTable(o.lbshm, (name) => new TargetTable(openShm(name, false)), (t) => (balancer.lbTable = t))]),
  ];
  const sweeper = setInterval(() => {
    // Timed-out fragment entries are otherwise reclaimed only when their bucket is reused.
    frags.sweep(performance.now());
    conntrack?.tick(performance.now());
    for (const check of follow) check();
    copyNative();
  }, 1000);
  log.info({ queue: ctx.queue, tshm: o.tshm ?? undefined, lbshm: o.lbshm ?? undefined, tun: o.tun ?? undefined, copyRange: queue.copyRange,
    conntrack: conntrack === null ? undefined : { entries: conntrack.capacity, bytes: ConnTrack.byteLength(conntrack.capacity) } }, 'serving queue');
  return {
    balancer,
    setFlows: flows === null ? undefined : (specs, traceSpecs) => flows.setFlows(specs, traceSpecs),
    stop: () => {
      clearInterval(sweeper);
      queue.stop();
      counters.counters[QUEUE_COUNTER.bound] = 0;
      copyNative();
      // The addon's packets and batches win: ours are counted only with --metrics.
      log.info({ queue: ctx.queue, ...counters.record(), conntrack: conntrack?.stats(), ...queue.stats(), kernel: kernelQueueStats(ctx.queue) }, 'queue closed');
    },
  };
}

/**
 * `nfqlb init` builds a new file and renames it over the old one, so a running lb never maps
 * a half-built or shrunken table; this returns a check that switches to the new file once it
 * appears. Until then, and if it cannot be read, the last good table stays in use.
 */
export function followTable(name: string, open: (name: string) => TargetTable, replace: (t: TargetTable) => void): () => void {
  let ino = statSync(shmPath(name)).ino;
  let warned = false;
  return () => {
    try {
      const now = statSync(shmPath(name)).ino;
      if (now === ino) return;
      replace(open(name));
      ino = now;
      warned = false;
      log.info({ shm: name }, 'table re-created by init: using the new one');
    } catch (e) {
      if (!warned) log.warn({ shm: name, err: (e as Error).message }, 'table unreadable: keeping the last good one');
      warned = true;
    }
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
  return { done, stop: () => worker.postMessage({ stop: true }), setFlows: (flows, traceFlows) => worker.postMessage({ flows, traceFlows }) };
}

/** Creates the fragment statistics file afresh: one block per queue (the reference has one). */
function createFragStats(name: string, blocks: number): void {
  const tmp = `.${name}.lb-${process.pid}`;
  new Uint8Array(createShm(tmp, blocks * FRAG_STATS_BYTES)).fill(0);
  renameSync(shmPath(tmp), shmPath(name));
}

/** Runs until SIGINT/SIGTERM, then releases the queues (so --queue-bypass lets traffic pass). */
export async function runLb(o: LbOptions): Promise<number> {
  // Fail fast, with one line, on a missing table or tun device.
  if (o.tshm !== null) new TargetTable(openShm(o.tshm, false));
  if (o.lbshm !== null) new TargetTable(openShm(o.lbshm, false));
  if (o.sctpEncap !== 0 && o.tshm === null) throw new UsageError('--sctp_encap is a lb option; flows set --udpencap');
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
  const flowCounters = o.tshm === null ? new SharedArrayBuffer(o.queues.length * MAX_FLOW_SLOTS * 8) : null;
  const counters = flowCounters === null ? null : new Float64Array(flowCounters);
  let flowServer: FlowServer | null = null;
  const metrics = !o.metrics ? null : await startMetrics(o, o.metrics, counterBlocks, () => flowServer).catch((e: unknown) => {
    tun?.close();
    throw e;
  });
  // Checked and attached before anything else is created (a kernel that dies with us detaches it).
  const offloadOptions = compatOffload(o.offload, o.compat);
  const offload = offloadOptions === undefined ? null : Offload.start(offloadOptions, o.tshm!, o.hashMode, o.sctpEncap);
  createFragStats(o.ftShm, o.queues.length);
  const logConfig = claimLogConfig();
  const stopLogLevel = followLogLevel(logConfig);
  const traceServer = await startTraceServer(o.traceAddress, o.queues, logConfig, o.allowRemote);
  const traceSink = (line: string) => traceServer?.write(line);
  const tracer = new Tracer(logConfig, traceSink);
  log.info(
    { size: o.ftSize, buckets: o.ftBuckets, frag: tun === null ? 0 : o.ftFrag, mtu: o.mtu, ttl: o.ftTtl, ftShm: o.ftShm },
    'FragTable',
  );

  // Announced once the queues are bound; a graceful stop withdraws, drains, then stops them.
  let announcement: Announcement | null = null;
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  }).then(() => announcement?.withdraw(o.drainMs));
  const tunFd = tun?.fd() ?? null;
  let failed = false;
  try {
    if (o.queues.length === 1) {
      const handle = startQueue(o, { queue: o.queues[0]!, statsIndex: 0, tunFd, traceSink, flowCounters, counters: counterBlocks });
      try {
        if (o.announce !== null) announcement = Announcement.open(o.announce);
        if (counters !== null) flowServer = await FlowServer.start((f, t) => handle.setFlows!(f, t), tracer, counters, { allowRemote: o.allowRemote });
        await stopped;
      } finally {
        handle.stop();
      }
    } else {
      const workers = o.queues.map((queue, statsIndex) => startWorker(o, { queue, statsIndex, tunFd, flowCounters, counters: counterBlocks }, traceSink));
      const all = Promise.all(workers.map((w) => w.done));
      // A worker that fails (e.g. its queue is taken) ends the whole lb, releasing the other queues.
      const fail = (e: Error) => {
        failed = true;
        log.error({ err: e.message }, 'queue worker failed');
      };
      try {
        if (o.announce !== null) announcement = Announcement.open(o.announce);
        if (counters !== null) flowServer = await FlowServer.start((f, t) => workers.forEach((w) => w.setFlows(f, t)), tracer, counters, { allowRemote: o.allowRemote });
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
async function startMetrics(o: LbOptions, address: MetricsAddress, counters: SharedArrayBuffer, flowServer: () => FlowServer | null): Promise<MetricsServer> {
  const flows = () => flowServer()?.flows.all() ?? [];
  const registry = newRegistry();
  const { health, stop } = registerNfqlbMetrics(registry, {
    queues: o.queues,
    counters,
    conntrack: (o.conntrack ?? 0) > 0,
    tables: () => {
      const names = o.tshm !== null ? [o.tshm] : flows().flatMap((f) => (f.target === null ? [] : [f.target]));
      if (o.lbshm !== null) names.push(o.lbshm);
      return [...new Set(names)];
    },
    // '#' flows are internal (the UDP side of an SCTP encapsulation).
    flows: o.tshm !== null ? undefined : () => flows().filter((f) => !f.name.startsWith('#')).map((f) => ({ name: f.name, matches: flowServer()!.count(f.slot) })),
  });
  try {
    return await MetricsServer.start(address, registry, health, stop);
  } catch (e) {
    stop();
    throw e;
  }
}
