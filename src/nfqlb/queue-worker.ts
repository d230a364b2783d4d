// Worker thread body for `nfqlb lb|flowlb --queue=a:b`: serves one queue until the main thread
// says stop; receives flowlb's flow set on every change and sends trace lines to the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import type { FlowSpec } from './flow-table.js';
import { type LbOptions, type QueueContext, startQueue } from './run.js';

const { options, ctx } = workerData as { options: LbOptions; ctx: Omit<QueueContext, 'traceSink'> };
const handle = startQueue(options, { ...ctx, traceSink: (line) => parentPort?.postMessage({ trace: line }) });
parentPort?.on('message', (m: { stop?: boolean; flows?: FlowSpec[]; traceFlows?: FlowSpec[] }) => {
  if (m.flows !== undefined) handle.setFlows?.(m.flows, m.traceFlows ?? []);
  if (m.stop) {
    handle.stop();
    parentPort?.close();
  }
});
