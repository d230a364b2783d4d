// Restart under load: 100 long-lived TCP connections (ctraffic) through `nfqlb lb`; the lb is
// killed (SIGKILL, then SIGTERM) and started again on the same table and queue at once. The
// table is stateless and shared, so every connection must survive: TCP retransmits what the
// kernel dropped while no lb was bound. Prints the restart gaps, the longest wait for an echo
// and the kernel's drops.

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CLIENT_CIDR, type Topology, VIP } from '../../src/lab/topology.js';
import { analyze, asStats } from '../../src/lab/traffic/stats.js';
import { toolArgv } from '../../src/lab/traffic/tools.js';
import { type KernelQueueStats, kernelQueueStats } from '../../src/nfqueue.js';
import { waitFor } from '../wait.js';
import { activateServers, createNfqueueLab, type Daemon, NFQLB, nfqlb, requireBuild, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'tfc-rs-';
const SHM = 'tfc-rs-targets';
const FT_SHM = 'tfc-rs-ftshm';
const NVM = 4;
const QUEUE = 2;
const NCONN = 100;

let topo: Topology;
let router: string;
let dir: string;
const procs: ChildProcess[] = [];

function startLb(): Promise<Daemon> {
  const lb = topo.spawn(router, ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, `--queue=${QUEUE}`]);
  procs.push(lb);
  return startDaemon(lb);
}

/** The kernel's counters of our queue in the router's namespace (undefined: nobody bound). */
function queueStats(): KernelQueueStats | undefined {
  return kernelQueueStats(QUEUE, topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']));
}

/** The client's connections to the VIP, by local address:port: bytes the server acknowledged, and whether TCP is retransmitting. */
function clientConnections(): Map<string, { acked: number; retransmitting: boolean }> {
  const out = topo.exec(topo.ns.tester, ['ss', '-Htin', 'state', 'established', 'dport', '=', ':5003']);
  const conns = new Map<string, { acked: number; retransmitting: boolean }>();
  // A socket's line, then its indented info line(s).
  for (const entry of out.split(/\n(?=\S)/).filter((e) => e.trim() !== '')) {
    const local = entry.trim().split(/\s+/)[2]!;
    // backoff: an RTO expired unanswered; retrans:N/..: N segments retransmitted and not yet acknowledged.
    const acked = Number(/bytes_acked:(\d+)/.exec(entry)?.[1] ?? 0);
    conns.set(local, { acked, retransmitting: /\bbackoff:|\bretrans:[1-9]/.test(entry) });
  }
  return conns;
}

/**
 * Waits until each of the NCONN connections has had data acknowledged since `since` (its
 * bytes_acked then) and none is retransmitting: traffic flows on every one of them.
 */
async function allFlowing(what: string, since: Map<string, { acked: number }> = new Map()): Promise<void> {
  await waitFor(
    what,
    () => {
      const now = clientConnections();
      const behind = [...now].filter(([local, c]) => c.retransmitting || c.acked <= (since.get(local)?.acked ?? 0)).length;
      if (now.size !== NCONN || behind > 0)
        throw new Error(`${now.size} of ${NCONN} connections established, ${behind} of them not flowing`);
      return true;
    },
    { timeout: 30_000, interval: 100 },
  );
}

/** Packets the IPv4 NFQUEUE rule has seen (queued to an lb, or dropped while none was bound). */
function rulePackets(): number {
  const line = topo
    .exec(router, ['iptables', '-t', 'mangle', '-nvxL', 'PREROUTING'])
    .split('\n')
    .find((l) => l.includes('NFQUEUE'));
  return Number(line!.trim().split(/\s+/)[0]);
}

beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'tfc-rs-'));
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=20');
  activateServers(SHM, NVM);
});

afterAll(() => {
  const leftover = tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM]);
  if (dir) rmSync(dir, { recursive: true, force: true });
  expect(leftover).toEqual([]);
});

it(`keeps ${NCONN} connections through an lb restart after SIGKILL and after SIGTERM`, async () => {
  let lb = await startLb();
  const statsFile = join(dir, 'ctraffic.json');
  // 10 messages/s per connection; the lost timeout is long, so only TCP itself can lose one. The
  // client runs until SIGTERM (then it writes its stats and exits 0); --timeout only ends a stuck test.
  const client = topo.spawn(topo.ns.tester, [
    ...toolArgv('ctraffic'),
    `--address=${VIP[4]}:5003`,
    `--nconn=${NCONN}`,
    '--rate=1000',
    '--timeout=100s',
    `--srccidr=${CLIENT_CIDR[4]}`,
    '--lost-timeout=10s',
    `--stats-file=${statsFile}`,
  ]);
  procs.push(client);
  const clientDone = new Promise<number | null>((r) => client.once('exit', r));
  await allFlowing(`${NCONN} connections flowing through the lb`);

  const report: string[] = [];
  let queued = 0;
  let kernelDrops = 0;
  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    const before = queueStats()!;
    queued += before.idSequence;
    kernelDrops += before.queueDropped + before.userDropped;
    const t0 = performance.now();
    await lb.stop(signal);
    lb = await startLb();
    const gap = Math.round(performance.now() - t0);
    // Until every connection is back (TCP retransmitted what was dropped), before the next stop.
    await allFlowing(`every connection flowing through the lb started after ${signal}`, clientConnections());
    report.push(`${signal}: no lb bound for ${gap} ms; every connection through the new lb after ${Math.round(performance.now() - t0)} ms`);
  }
  const last = queueStats()!;
  queued += last.idSequence;
  kernelDrops += last.queueDropped + last.userDropped;
  const seen = rulePackets();
  client.kill('SIGTERM');
  expect(await clientDone).toBe(0);
  await lb.stop('SIGTERM');

  const stats = asStats(JSON.parse(readFileSync(statsFile, 'utf8')));
  const a = analyze(stats);
  console.log(
    [
      `restart under load: ${NCONN} connections, ${stats.rate} msg/s`,
      ...report,
      `longest wait for an echo: ${stats.maxDelay} ms`,
      `NFQUEUE rule: ${seen} packets; queued to an lb: ${queued}; dropped unqueued while no lb was bound: about ${seen - queued}`,
      `kernel queue drops (queue full + socket overrun): ${kernelDrops}`,
      `messages sent/received: ${a.sent}/${a.received}; lost connections: ${a.lostConnections}; failed connects: ${a.failedConnects}`,
    ].join('\n  '),
  );
  expect(a.neverConnected).toBe(0);
  expect(a.failedConnects).toBe(0);
  expect(a.lostEvents).toBe(0);
  // The restarts really stalled the path (a gap no wait shows would mean the kill did nothing).
  expect(stats.maxDelay).toBeGreaterThan(100);
  expect(a.received).toBeGreaterThan(a.sent * 0.9);
});
