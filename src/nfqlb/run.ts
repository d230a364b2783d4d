// `nfqlb lb`: one NFQUEUE per thread. A single queue runs on the main thread; a range a:b runs one
// worker_thread per queue, so a busy queue never delays another.
import { Worker } from 'node:worker_threads';
import { UsageError } from '../cli/options.js';
import { log } from '../log.js';
import { NfQueue, kernelQueueStats } from '../nfqueue.js';
import { openShm } from '../shm.js';
import { TargetTable } from '../target-table.js';
import { Balancer, serveQueue } from './lb.js';

export interface LbOptions {
  tshm: string;
  queues: number[];
  qlength: number;
  mtu: number;
  notargetsFwmark: number;
  hashMode: number;
  batch: number;
}

/** Parses the reference's `--queue`: `n`, or `a:b` for queues a..b inclusive. */
export function parseQueueRange(text: string): number[] {
  const m = /^(\d+)(?::(\d+))?$/.exec(text);
  const first = Number(m?.[1]);
  const last = m?.[2] === undefined ? first : Number(m[2]);
  if (!m || first > last || last > 65535) throw new UsageError(`--queue: '${text}' is not a queue number or a range a:b`);
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/** Serves one queue until `stop` is called; returns the stop function. */
export function startQueue(o: LbOptions, queueNum: number): () => void {
  const balancer = new Balancer(new TargetTable(openShm(o.tshm, false)), o);
  const queue = new NfQueue({
    queue: queueNum,
    maxLen: o.qlength,
    batch: o.batch,
    onError: (e) => log.error({ queue: queueNum, err: e.message }, 'verdict handler failed'),
  });
  serveQueue(queue, balancer.fwmarkOf);
  log.info({ queue: queueNum, tshm: o.tshm, M: balancer.targets.M, N: balancer.targets.N }, 'serving queue');
  return () => {
    queue.stop();
    log.info({ queue: queueNum, ...queue.stats(), kernel: kernelQueueStats(queueNum) }, 'queue closed');
  };
}

function startWorker(o: LbOptions, queueNum: number): { done: Promise<void>; stop(): void } {
  const worker = new Worker(new URL('./queue-worker.js', import.meta.url), { workerData: { options: o, queue: queueNum } });
  const done = new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`queue ${queueNum} worker exited with ${code}`))));
  });
  return { done, stop: () => worker.postMessage('stop') };
}

/** Runs until SIGINT/SIGTERM, then releases the queues (so --queue-bypass lets traffic pass). */
export async function runLb(o: LbOptions): Promise<number> {
  new TargetTable(openShm(o.tshm, false)); // fail fast, with one line, on a missing table
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  if (o.queues.length === 1) {
    const stop = startQueue(o, o.queues[0]!);
    await stopped;
    stop();
    return 0;
  }
  const workers = o.queues.map((q) => startWorker(o, q));
  const all = Promise.all(workers.map((w) => w.done));
  // A worker that fails (e.g. its queue is taken) ends the whole lb, releasing the other queues.
  let failed = false;
  const fail = (e: Error) => {
    failed = true;
    log.error({ err: e.message }, 'queue worker failed');
  };
  await Promise.race([stopped, all]).catch(fail);
  for (const w of workers) w.stop();
  await all.catch(fail);
  return failed ? 1 : 0;
}
