// Drain through the kernel: `nfqlb lb --conntrack` behind real iptables NFQUEUE rules and policy
// routing, 100 long-lived TCP connections (ctraffic) from 100 sources to 10 DSR servers.
// `nfqlb deactivate` of 2 targets loses no connection while new connections avoid them;
// `deactivate --now` loses exactly the connections on the removed target.

import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LossReport, lossReport, type ScaleEvent } from '../../src/lab/report.js';
import { CLIENT_CIDR, type Topology, VIP, vmName } from '../../src/lab/topology.js';
import { asStats } from '../../src/lab/traffic/stats.js';
import { toolArgv } from '../../src/lab/traffic/tools.js';
import { waitFor } from '../wait.js';
import {
  activateServers,
  createNfqueueLab,
  type Daemon,
  establishedTo,
  mconnect,
  NFQLB,
  nfqlb,
  requireBuild,
  startDaemon,
  tearDownLab,
} from './harness.js';

const PREFIX = 'tct-k';
const SHM = 'tct-targets';
const FT_SHM = 'tct-ftshm';
const NVM = 10;

let topo: Topology;
let router: string;
let out: string;
let lb: Daemon;
const procs: ChildProcess[] = [];

/**
 * 100 ctraffic connections for `ms`; `change` runs at 40% of the run (the scale event on
 * `targets`), but not before all 100 are established, `during` at 60%. Returns the loss report.
 */
async function traffic(ms: number, targets: string[], change: () => void, during: () => void = () => {}): Promise<LossReport> {
  const statsFile = join(out, `ctraffic-${Date.now()}.json`);
  const client = topo.spawn(
    topo.ns.tester,
    [
      ...toolArgv('ctraffic'),
      `--address=${VIP[4]}:5003`,
      '--nconn=100',
      '--rate=500',
      `--timeout=${ms}ms`,
      `--srccidr=${CLIENT_CIDR[4]}`,
      `--stats-file=${statsFile}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  procs.push(client);
  const exited = new Promise<number | null>((r) => client.once('close', r));
  const started = Date.now();
  // The report's "before" is who served at the event: every connection must be up by then.
  await waitFor('100 ctraffic connections established', () => establishedTo(topo.ns.tester, 5003) === 100);
  // The rest is the run's schedule, not a wait for some state: traffic before the event and
  // between it and `during`, on the traffic's own clock.
  await sleep(Math.max(0, started + 0.4 * ms - Date.now()));
  const at = Date.now();
  change();
  await sleep(Math.max(0, started + 0.6 * ms - Date.now()));
  during();
  expect(await exited).toBe(0);
  const stats = asStats(JSON.parse(readFileSync(statsFile, 'utf8')));
  const event: ScaleEvent = { t: at - Date.parse(stats.started), kind: 'scale-in', targets };
  return lossReport(stats, [event]);
}

beforeAll(async () => {
  requireBuild();
  out = mkdtempSync(join(tmpdir(), 'tct-'));
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs));
  nfqlb('init', `--shm=${SHM}`, '--M=900', '--N=20');
  activateServers(SHM, NVM);
  const p = topo.spawn(router, ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--conntrack=10000']);
  procs.push(p);
  lb = await startDaemon(p);
});

afterAll(async () => {
  const log = await lb?.stop();
  const leftover = tearDownLab(PREFIX, topo, procs, [SHM, FT_SHM]);
  rmSync(out, { recursive: true, force: true });
  expect(leftover).toEqual([]);
  expect(existsSync(`/dev/shm/${SHM}-drain`)).toBe(false);
  // The lb counted what it did: hits for the established flows, and drained ones.
  expect(log).toMatch(/"conntrack":\{"entries":\d+,"hits":[1-9]/);
  expect(log).toMatch(/"draining":[1-9]/);
});

describe('nfqlb lb --conntrack', () => {
  it('drains deactivated targets: 0 of 100 connections lost, new connections avoid them', async () => {
    let fresh: ReturnType<typeof mconnect> | undefined;
    const report = await traffic(
      8000,
      [vmName(1), vmName(2)],
      () => {
        nfqlb('deactivate', `--shm=${SHM}`, '--index=1');
        nfqlb('deactivate', `--shm=${SHM}`, '102');
      },
      () => (fresh = mconnect(topo, 4, { nconn: 100 })),
    );
    expect(report.neverConnected).toBe(0);
    expect(report.lostBefore).toBe(0);
    const [phase] = report.phases;
    expect(phase!.ideal).toBeGreaterThan(0); // vm-001/002 had connections to lose
    expect(phase!.lost).toBe(0);
    expect(report.after).toEqual(report.before);
    expect(fresh!.failed_connects + fresh!.failed_reads).toBe(0);
    expect(fresh!.hosts[vmName(1)]).toBeUndefined();
    expect(fresh!.hosts[vmName(2)]).toBeUndefined();
    expect(Object.keys(fresh!.hosts)).toHaveLength(NVM - 2);
  });

  it('activate takes a drained target back; deactivate --now loses exactly its connections', async () => {
    nfqlb('activate', `--shm=${SHM}`, '--index=1', '101');
    nfqlb('activate', `--shm=${SHM}`, '--index=2', '102');
    const report = await traffic(6000, [vmName(3)], () => nfqlb('deactivate', '--now', `--shm=${SHM}`, '--index=3'));
    expect(report.neverConnected).toBe(0);
    expect(report.lostBefore).toBe(0);
    const [phase] = report.phases;
    expect(phase!.ideal).toBeGreaterThan(0);
    expect(phase!.lost).toBe(phase!.ideal);
    expect(Object.keys(phase!.lostByHost)).toEqual([vmName(3)]);
    expect(report.after[vmName(3)]).toBeUndefined();
  });
});
