// Worker thread body for `nfqlb lb --queue=a:b`: serves one queue until the main thread says stop.
import { parentPort, workerData } from 'node:worker_threads';
import { startQueue, type LbOptions } from './run.js';

const { options, queue } = workerData as { options: LbOptions; queue: number };
const stop = startQueue(options, queue);
parentPort?.once('message', () => {
  stop();
  parentPort?.close();
});
