// `nfqlb lb --fail_open`: an lb that stops reading (SIGSTOP) fills its queue; then the kernel
// drops the VIP's packets by default, and with --fail_open accepts them unmarked, so they
// follow the router's main-table route (here server 2; the lb's fwmark would pick server 1).

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Topology } from '../../src/lab/topology.js';
import { kernelQueueStats } from '../../src/nfqueue.js';
import { activateServers, createNfqueueLab, mconnect, NFQLB, nfqlb, requireBuild, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'tfc-fo-';
const SHM = 'tfc-fo-targets';
const FT_SHM = 'tfc-fo-ftshm';
const QLENGTH = 32;

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, 2, procs));
  topo.setRouterVipRoute(1, [2]);
  nfqlb('init', `--shm=${SHM}`, '--M=100', '--N=4');
  activateServers(SHM, [1]);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
});

describe.each([[false], [true]])('an lb that stops reading, --fail_open %s', (failOpen) => {
  it(failOpen ? 'lets the overflow through unmarked' : 'has the overflow dropped', async () => {
    const proc = topo.spawn(router, [
      'node',
      NFQLB,
      'lb',
      `--tshm=${SHM}`,
      `--ft_shm=${FT_SHM}`,
      `--qlength=${QLENGTH}`,
      ...(failOpen ? ['--fail_open'] : []),
    ]);
    procs.push(proc);
    const lb = await startDaemon(proc);
    try {
      // Served, the flows go to server 1 (fwmark 101).
      expect(mconnect(topo, 4, { nconn: 10 }).hosts).toEqual({ 'vm-001': 10 });
      proc.kill('SIGSTOP');
      const r = mconnect(topo, 4, { nconn: 100, timeout: '2s' });
      const q = kernelQueueStats(2, topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']))!;
      expect(q.queued).toBe(QLENGTH);
      if (failOpen) {
        expect(r.failed_connects).toBeLessThanOrEqual(QLENGTH);
        expect(r.hosts).toEqual({ 'vm-002': 100 - r.failed_connects });
        expect(q.queueDropped).toBe(0);
      } else {
        expect(r.failed_connects).toBe(100);
        expect(q.queueDropped).toBeGreaterThan(0);
      }
    } finally {
      proc.kill('SIGCONT');
      await lb.stop('SIGTERM');
    }
  });
});
