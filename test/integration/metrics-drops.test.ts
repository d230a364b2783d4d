// Drop metrics that only move when the kernel drops for the lb: made to happen for real by
// stopping the lb (SIGSTOP) under a flood, so that nothing reads its socket, then letting it
// go on (SIGCONT). nfqlb: the netlink socket's receive buffer overruns (ENOBUFS); xdplb: the
// AF_XDP socket runs out of fill-ring frames. Each count is checked against the kernel's own.

import { type ChildProcess, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopology, labNamespaces, type Topology, VIP } from '../../src/lab/topology.js';
import { type KernelQueueStats, kernelQueueStats } from '../../src/nfqueue.js';
import { deleteShm } from '../../src/shm.js';
import { waitFor, waitUntilStable } from '../wait.js';
import {
  activateServers,
  activateXdplbServers,
  createNfqueueLab,
  type Daemon,
  httpGet,
  NFQLB,
  nfqlb,
  ROOT,
  requireBuild,
  Scrape,
  startDaemon,
  startXdplb,
  tearDownLab,
  XDPLB,
} from './harness.js';

const PORT = 9112;
let floodDir: string;
let flood: string;

// The bench's sendmmsg generator (one connected socket per flow, sends until killed): fast
// enough to fill a stopped lb's buffers in well under a second.
beforeAll(() => {
  requireBuild();
  floodDir = mkdtempSync(join(tmpdir(), 'tmo-flood-'));
  flood = join(floodDir, 'udp-flood');
  execFileSync('cc', ['-O2', '-o', flood, `${ROOT}src/bench/udp-flood.c`]);
});

afterAll(() => rmSync(floodDir, { recursive: true, force: true }));

/** Starts the flood to the IPv4 VIP from the tester; stop it with stopFlood. */
function startFlood(topo: Topology, procs: ChildProcess[]): ChildProcess {
  const p = topo.spawn(topo.ns.tester, [flood, VIP[4], '16', '64'], { stdio: ['ignore', 'ignore', 'inherit'] });
  procs.push(p);
  return p;
}

async function stopFlood(p: ChildProcess): Promise<void> {
  const exited = new Promise((r) => p.once('exit', r));
  if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await exited;
}

describe('nfqlb: a receive-buffer overrun (ENOBUFS) is counted', () => {
  const PREFIX = 'tmo-nb-';
  const SHM = 'tmo-nb-targets';
  const FT_SHM = 'tmo-nb-ft';
  const procs: ChildProcess[] = [];
  let topo: Topology | undefined;
  let router: string;
  let lb: Daemon;

  const kernel = (): KernelQueueStats => {
    const k = kernelQueueStats(2, topo!.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']));
    if (k === undefined) throw new Error('queue 2 is not bound');
    return k;
  };
  const scrape = (): Scrape => {
    const r = httpGet(topo!, router, PORT, '/metrics');
    expect(r.status).toBe(200);
    return new Scrape(r.body);
  };

  beforeAll(async () => {
    ({ topo, router } = createNfqueueLab(PREFIX, 2, procs));
    nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=10');
    activateServers(SHM, 2);
    // A queue length far above what the 8 MiB socket buffer holds: the flood must overrun
    // the socket (user_dropped), not the queue (queue_dropped).
    const p = topo.spawn(router, [
      'node',
      NFQLB,
      'lb',
      `--tshm=${SHM}`,
      `--ft_shm=${FT_SHM}`,
      '--queue=2',
      '--qlength=1000000',
      `--metrics=${PORT}`,
    ]);
    procs.push(p);
    lb = await startDaemon(p);
  });

  afterAll(() => {
    // A stopped lb would not die of SIGTERM; SIGKILL works on a stopped process.
    expect(tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM])).toEqual([]);
  });

  it("each overrun while the lb is stopped counts once, the kernel's user_dropped is exported as is", async () => {
    await waitFor('the metrics server', () => httpGet(topo!, router, PORT, '/healthz').status === 200);
    expect(scrape().sum('nfqlb_enobufs_total', { queue: '2' })).toBe(0);
    expect(kernel().userDropped).toBe(0);
    // Two episodes: each one sets the socket error once (the kernel marks the socket
    // congested until it is read empty), so the counter must read 1, then 2.
    for (const episode of [1, 2]) {
      const before = kernel();
      lb.proc.kill('SIGSTOP');
      const f = startFlood(topo!, procs);
      try {
        await waitFor('the kernel dropping packets for the stopped lb', () => kernel().userDropped > before.userDropped, {
          timeout: 15_000,
        });
      } finally {
        await stopFlood(f);
        lb.proc.kill('SIGCONT');
      }
      // The last packets of the flood cross the bridge and reach the queue (or are dropped).
      const k = await waitUntilStable('the kernel queue counters', () => {
        const x = kernel();
        return { id: x.idSequence, user: x.userDropped, full: x.queueDropped };
      });
      expect(k.full).toBe(0);
      // The lb copies the addon's counts every second and reads every queued packet.
      const s = await waitFor(
        `the lb to read the queue and count overrun ${episode}`,
        () => {
          const x = scrape();
          const read = x.sum('nfqlb_packets_total', { queue: '2' }) === k.id - k.user;
          return read && x.sum('nfqlb_enobufs_total', { queue: '2' }) >= episode ? x : null;
        },
        { timeout: 15_000 },
      );
      expect(s.sum('nfqlb_enobufs_total', { queue: '2' })).toBe(episode);
      expect(s.sum('nfqlb_nfqueue_dropped_total', { queue: '2', reason: 'user' })).toBe(k.user);
      expect(s.sum('nfqlb_nfqueue_dropped_total', { queue: '2', reason: 'queue_full' })).toBe(0);
      expect(k.user - before.userDropped).toBeGreaterThan(0);
      // Nothing the lb received was lost on its way through: every packet got a target.
      expect(s.sum('nfqlb_target_packets_total')).toBe(s.sum('nfqlb_packets_total'));
      expect(lb.proc.exitCode).toBeNull();
    }
  });
});

describe('xdplb: frames the kernel drops for want of a fill-ring frame are counted', () => {
  const PREFIX = 'tmo-xd-';
  const SHM = 'tmo-xd-xdplb';
  const procs: ChildProcess[] = [];
  let topo: Topology | undefined;
  let lb: Daemon;
  const router = (): string => topo!.ns.router(1);

  /** The ingress veth's own counters (ethtool -S): what its XDP program redirected. */
  const veth = (): Record<string, number> => {
    const out: Record<string, number> = {};
    const text = topo!.exec(router(), ['ethtool', '-S', 'eth2']);
    for (const m of text.matchAll(/^\s*(\S+): (\d+)$/gm)) out[m[1]!] = Number(m[2]);
    return out;
  };
  const scrape = (): Scrape => {
    const r = httpGet(topo!, router(), PORT, '/metrics');
    expect(r.status).toBe(200);
    return new Scrape(r.body);
  };

  beforeAll(async () => {
    topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
    const xdplb = (...args: string[]) => topo!.exec(router(), [process.execPath, XDPLB, ...args, `--shm=${SHM}`]);
    activateXdplbServers(topo, xdplb, 1);
    lb = await startXdplb(topo, router(), SHM, ['--mode=native', `--vip=${VIP[4]}`, `--metrics=${PORT}`], procs);
  });

  afterAll(() => {
    for (const p of procs) p.kill('SIGKILL');
    topo?.destroy();
    deleteShm(SHM);
    expect(labNamespaces(PREFIX)).toEqual([]);
  });

  it('rx_dropped and fill_ring_empty count, frame for frame, the redirects the kernel failed while the lb was stopped', async () => {
    await waitFor('the metrics server', () => httpGet(topo!, router(), PORT, '/healthz').status === 200);
    const s0 = scrape();
    expect(s0.sum('xdplb_drops_total', { reason: 'rx_dropped' })).toBe(0);
    expect(s0.sum('xdplb_fill_ring_empty_total')).toBe(0);
    const v0 = veth();
    lb.proc.kill('SIGSTOP');
    const f = startFlood(topo!, procs);
    try {
      // Once the UMEM's 4096 frames sit in the rx ring, nobody gives any back: each further VIP
      // frame is a redirect the kernel fails, which the veth counts as a drop of its own.
      await waitFor('the kernel to fail 10000 redirects to the socket', () => veth().rx_queue_0_drops! - v0.rx_queue_0_drops! > 10_000, {
        timeout: 15_000,
      });
    } finally {
      await stopFlood(f);
      lb.proc.kill('SIGCONT');
    }
    const v1 = await waitUntilStable('the veth counters', veth);
    const redirected = v1.rx_queue_0_xdp_redirect! - v0.rx_queue_0_xdp_redirect!;
    const failed = v1.rx_queue_0_drops! - v0.rx_queue_0_drops!;
    expect(redirected).toBeGreaterThanOrEqual(4096);
    // The lb reads (and forwards) every frame the socket got, then its counts are final.
    const s = await waitFor('the lb to read every redirected frame', () => {
      const x = scrape();
      const rx = x.sum('xdplb_packets_total', { direction: 'rx' }) - s0.sum('xdplb_packets_total', { direction: 'rx' });
      return rx === redirected ? x : null;
    });
    expect(s.sum('xdplb_drops_total', { reason: 'rx_dropped' })).toBe(failed);
    expect(s.sum('xdplb_fill_ring_empty_total')).toBe(failed);
    // The rx ring (as big as the UMEM) never filled: the frames ran out first.
    expect(s.sum('xdplb_drops_total', { reason: 'rx_ring_full' })).toBe(0);
    expect(s.sum('xdplb_packets_total', { direction: 'tx' }) - s0.sum('xdplb_packets_total', { direction: 'tx' })).toBe(redirected);
    expect(lb.proc.exitCode).toBeNull();
  });
});
