// nfqlb through the kernel: real iptables NFQUEUE rules, policy routing by fwmark, and real TCP
// connections from 100 source addresses to the VIP, over IPv4 and IPv6, with DSR servers.

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Family, vmName as hostName, type Topology } from '../../src/lab/topology.js';
import { kernelQueueStats } from '../../src/nfqueue.js';
import { waitFor } from '../wait.js';
import {
  activateServers,
  createNfqueueLab,
  type Daemon,
  mconnect as mconnectFrom,
  NFQLB,
  nfqlb,
  nfqueueTarget,
  queueEventLoops,
  requireBuild,
  startDaemon,
  tearDownLab,
} from './harness.js';

const PREFIX = 'tlbn-';
const SHM = 'tlbn-targets';
const FT_SHM = 'tlbn-ftshm';
const NVM = 10;

let topo: Topology;
const procs: ChildProcess[] = [];
let router: string;

function startLb(...args: string[]): Promise<Daemon> {
  const lb = topo.spawn(router, ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, ...args]);
  procs.push(lb);
  return startDaemon(lb);
}

const mconnect = (family: Family, nconn = 100, timeout = '3s') => mconnectFrom(topo, family, { nconn, timeout });

beforeAll(() => {
  requireBuild();
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  nfqlb('init', `--shm=${SHM}`, '--M=900', `--N=20`);
  activateServers(SHM, NVM);
});

afterAll(() => {
  expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
});

describe.each([4, 6] as const)('nfqlb lb, IPv%i', (family) => {
  it('spreads 100 connections from 100 sources over all 10 servers', async () => {
    const lb = await startLb('--queue=2');
    try {
      const r = mconnect(family);
      expect(r.failed_connects + r.failed_reads).toBe(0);
      expect(Object.keys(r.hosts).sort()).toEqual(Array.from({ length: NVM }, (_, i) => hostName(i + 1)));
      // Maglev over 10 targets: no server takes a grossly unfair share of 100 random flows.
      for (const count of Object.values(r.hosts)) expect(count).toBeLessThan(30);
    } finally {
      await lb.stop();
    }
  });

  it('sends no new connection to deactivated targets', async () => {
    const lb = await startLb();
    try {
      nfqlb('deactivate', `--shm=${SHM}`, '--index=1');
      nfqlb('deactivate', `--shm=${SHM}`, '102');
      const r = mconnect(family);
      expect(r.failed_connects + r.failed_reads).toBe(0);
      expect(r.hosts[hostName(1)]).toBeUndefined();
      expect(r.hosts[hostName(2)]).toBeUndefined();
      expect(Object.keys(r.hosts)).toHaveLength(NVM - 2);
    } finally {
      nfqlb('activate', `--shm=${SHM}`, '--index=1', '101');
      nfqlb('activate', `--shm=${SHM}`, '--index=2', '102');
      await lb.stop();
    }
  });
});

describe('no active target', () => {
  it('drops packets by default and marks them with --notargets_fwmark', async () => {
    const saved = nfqlb('show', `--shm=${SHM}`);
    for (let n = 1; n <= NVM; n++) nfqlb('deactivate', `--shm=${SHM}`, `--index=${n}`);
    try {
      let lb = await startLb();
      try {
        const r = mconnect(4, 10, '1s');
        expect(r.failed_connects).toBe(10);
      } finally {
        await lb.stop();
      }
      lb = await startLb('--notargets_fwmark=110');
      try {
        const r = mconnect(6, 20);
        expect(r.failed_connects + r.failed_reads).toBe(0);
        expect(r.hosts).toEqual({ [hostName(10)]: 20 });
      } finally {
        await lb.stop();
      }
    } finally {
      activateServers(SHM, NVM);
      expect(nfqlb('show', `--shm=${SHM}`)).toEqual(saved);
    }
  });
});

describe('several queues', () => {
  it('serves --queue=0:1 with one worker per queue and --queue-balance rules', async () => {
    nfqueueTarget(topo, router, '--queue-balance', '0:1');
    const lb = await startLb('--queue=0:1');
    try {
      for (const family of [4, 6] as const) {
        const r = mconnect(family);
        expect(r.failed_connects + r.failed_reads).toBe(0);
        expect(Object.keys(r.hosts)).toHaveLength(NVM);
      }
      const proc = topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']);
      // Both queues are bound by our workers and both saw packets (the last packet id grew).
      for (const q of [0, 1]) expect(kernelQueueStats(q, proc)?.idSequence).toBeGreaterThan(0);
      // Each queue's socket is watched by one event loop, and not the same one: a thread each.
      const loops = queueEventLoops(topo, router, lb.proc.pid!, [0, 1]);
      expect(loops.map((l) => l.length)).toEqual([1, 1]);
      expect(loops[0]![0]).not.toBe(loops[1]![0]);
    } finally {
      await lb.stop();
      nfqueueTarget(topo, router, '--queue-num', '2');
    }
  });
});

describe('re-init while lb runs', () => {
  it('follows a table that init re-created (new size) and keeps the old one until then', async () => {
    const lb = await startLb();
    try {
      // A table of another size is a new file: the running lb must switch to it, not keep
      // balancing over the old, now unlinked, one.
      nfqlb('init', `--shm=${SHM}`, '--M=400', '--N=10');
      nfqlb('activate', `--shm=${SHM}`, '103');
      await waitFor('the lb to switch to the new table', () => lb.output().includes('table re-created by init: using the new one'));
      const r = mconnect(4, 20);
      expect(r.failed_connects + r.failed_reads).toBe(0);
      expect(r.hosts).toEqual({ [hostName(3)]: 20 });
    } finally {
      nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=20');
      activateServers(SHM, NVM);
      await lb.stop();
    }
  });
});
