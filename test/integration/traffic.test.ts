// The traffic tools on the lab network, with kernel ECMP on router 1 as the load-balancer:
// mconnect spreads over the servers without failures; removing a next-hop during a ctraffic
// run loses exactly the connections on that server, which reconnect elsewhere.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLIENT_CIDR, createTopology, destroyLab, type Family, type Topology, VIP, vmName } from '../../src/lab/topology.js';
import type { MconnectResult } from '../../src/lab/traffic/mconnect.js';
import { analyze, asStats } from '../../src/lab/traffic/stats.js';
import { spawnServer, toolArgv } from '../../src/lab/traffic/tools.js';
import { waitFor } from '../wait.js';

const PREFIX = 'ttf-';
const SERVERS = [1, 2, 3];
const addr = (family: Family, port: number): string => (family === 4 ? `${VIP[4]}:${port}` : `[${VIP[6]}]:${port}`);

function kill(p: ChildProcess): void {
  if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
    try {
      process.kill(p.pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  }
}

describe('traffic tools over ECMP', () => {
  let topo: Topology;
  let dir: string;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ttf-traffic-'));
    topo = createTopology({ prefix: PREFIX, nvm: SERVERS.length, nrouters: 1 });
    topo.setRouterVipRoute(1, SERVERS);
    for (const n of SERVERS) procs.push(await spawnServer(topo.ns.server(n), vmName(n)));
  });
  afterAll(() => {
    for (const p of procs) kill(p);
    destroyLab(PREFIX);
    rmSync(dir, { recursive: true, force: true });
  });

  test('router 1 hashes on L4 so one client spreads over next-hops', () => {
    expect(topo.exec(topo.ns.router(1), ['sysctl', '-n', 'net.ipv4.fib_multipath_hash_policy', 'net.ipv6.fib_multipath_hash_policy'])).toBe(
      '1\n1\n',
    );
  });

  test.each([4, 6] as Family[])('mconnect over IPv%i reaches several servers without failures', (family) => {
    const out = topo.exec(topo.ns.tester, [
      ...toolArgv('mconnect'),
      `--address=${addr(family, 5001)}`,
      '--nconn=100',
      `--srccidr=${CLIENT_CIDR[family]}`,
      '--output=json',
    ]);
    const r = JSON.parse(out) as MconnectResult;
    expect(r.connections).toBe(100);
    expect(r.failed_connects).toBe(0);
    expect(r.failed_reads).toBe(0);
    expect(Object.keys(r.hosts).length).toBeGreaterThan(1);
    for (const h of Object.keys(r.hosts)) expect(['vm-001', 'vm-002', 'vm-003']).toContain(h);
    expect(Object.values(r.hosts).reduce((a, b) => a + b, 0)).toBe(100);
  });

  test('mconnect counts failed connects and exits 1 (nothing listens on port 5009)', () => {
    const p = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        topo.ns.tester,
        ...toolArgv('mconnect'),
        `--address=${addr(4, 5009)}`,
        '--nconn=10',
        `--srccidr=${CLIENT_CIDR[4]}`,
        '--output=json',
      ],
      { encoding: 'utf8' },
    );
    expect(p.status).toBe(1);
    expect(JSON.parse(p.stdout)).toEqual({ connections: 10, failed_connects: 10, failed_reads: 0, hosts: {} });
  });

  test('mconnect refuses bad options with one line and exit 2', () => {
    const p = spawnSync(toolArgv('mconnect')[0]!, [toolArgv('mconnect')[1]!, '--address=10.0.0.0', '--nconn=5'], { encoding: 'utf8' });
    expect(p.status).toBe(2);
    expect(p.stderr.trim().split('\n')).toHaveLength(1);
    expect(p.stderr).toContain("address '10.0.0.0'");
  });

  test.each([4, 6] as Family[])("ctraffic over IPv%i: removing a next-hop loses only that server's connections", async (family) => {
    topo.setRouterVipRoute(1, SERVERS);
    const statsFile = join(dir, `ctraffic-${family}.json`);
    const nconn = 30;
    const client = topo.spawn(topo.ns.tester, [
      ...toolArgv('ctraffic'),
      `--address=${addr(family, 5003)}`,
      `--nconn=${nconn}`,
      '--rate=300',
      '--timeout=5s',
      `--srccidr=${CLIENT_CIDR[family]}`,
      '--monitor',
      `--stats-file=${statsFile}`,
    ]);
    let monitor = '';
    client.stderr!.on('data', (d: Buffer) => {
      monitor += d.toString();
    });
    let summary = '';
    client.stdout!.on('data', (d: Buffer) => {
      summary += d.toString();
    });
    try {
      // Scale in once every connection is up and echoes come back (the monitor line, each second).
      const up = new RegExp(`conn act/connecting ${nconn}/0 .* msg sent/rec/dropped \\d+/[1-9]`);
      await waitFor(`ctraffic to have ${nconn} connections with traffic`, () => up.test(monitor), { timeout: 4000 });
      topo.setRouterVipRoute(1, [1, 3]); // scale in: vm-002 leaves
      // 'close', not 'exit': the summary (stdout) and the last monitor lines may still be in the pipes.
      await once(client, 'close');
      expect(client.exitCode).toBe(0);
    } finally {
      kill(client);
      topo.setRouterVipRoute(1, SERVERS);
    }
    expect(monitor).toMatch(/conn act\/connecting \d+\/\d+ lost/);
    const stats = asStats(JSON.parse(readFileSync(statsFile, 'utf8')));
    expect(JSON.parse(summary)).toMatchObject({ nconn, sent: stats.sent, lostEvents: stats.lostEvents });
    const a = analyze(stats);
    expect(a.connections).toBe(nconn);
    expect(a.neverConnected).toBe(0);
    expect(a.failedConnects).toBe(0);
    expect(Object.keys(a.hosts).length).toBeGreaterThan(1);
    // Hash-threshold ECMP keeps the flows of the remaining next-hops where they were.
    expect(a.hosts['vm-002']).toBeGreaterThan(0);
    expect(a.lostByHost).toEqual({ 'vm-002': a.hosts['vm-002'] });
    expect(a.lostConnections).toBe(a.hosts['vm-002']);
    expect(a.finalHosts['vm-002']).toBeUndefined();
    expect(Object.values(a.finalHosts).reduce((x, y) => x + y, 0)).toBe(nconn);
    // Traffic flowed all along: 300 msg/s for ~5 s, and samples cover the run.
    expect(stats.sent).toBeGreaterThan(1000);
    expect(stats.received).toBeGreaterThan(stats.sent - 10 * nconn);
    expect(stats.samples.length).toBeGreaterThan(15);
    expect(stats.samples.at(-1)?.active).toBe(nconn);
    expect(stats.samples.at(-1)?.lost).toBe(a.lostEvents);

    // The analyze subcommand prints the same figures.
    const cli = spawnSync(toolArgv('ctraffic')[0]!, [toolArgv('ctraffic')[1]!, 'analyze', `--stats-file=${statsFile}`, '--output=json'], {
      encoding: 'utf8',
    });
    expect(cli.status).toBe(0);
    expect(JSON.parse(cli.stdout)).toEqual(a);
  });
});
