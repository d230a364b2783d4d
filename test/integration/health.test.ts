// nfqlb health through the kernel: a router namespace holds the target tables and routes fwmark
// 100+n to server n, whose loopback holds the VIPs. Each server runs a small HTTP server whose
// VIP listeners (one per family) the test closes and opens again, while its listener on the
// server's own address stays. Real probes with SO_MARK must then take each target's own route:
// without the mark the router has no route to the VIPs at all.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addFwmarkRoutes, serverFwmark } from '../../src/lab/rules.js';
import { createTopology, serverAddr, type Topology, VIP } from '../../src/lab/topology.js';
import { VIP_PORT, VipServers } from '../../src/lab/vip-servers.js';
import { NFQLB_TABLE, TargetStore } from '../../src/target-store.js';
import { waitFor } from '../wait.js';
import { docCommands } from './doc-blocks.js';
import { type Daemon, httpGet, NFQLB, nfqlb, ROOT, requireBuild, Scrape, startDaemon, tearDownLab } from './harness.js';

const PREFIX = 'thc-h';
const SHM = 'thc-vip';
const SHM_OWN = 'thc-own';
const NVM = 3;
const PORT = VIP_PORT;
const VIPS = `${VIP[4]},${VIP[6]}`;

let topo: Topology | undefined;
let router: string;
const procs: ChildProcess[] = [];
let servers: VipServers;
let vipChecker: Daemon | undefined;

/** The active fwmarks of a table by slot (-1: free). */
const active = (shm: string): number[] => [...TargetStore.open(NFQLB_TABLE, shm).table.active];

function startHealth(args: readonly string[]): Promise<Daemon> {
  const proc = topo!.spawn(router, ['node', NFQLB, 'health', ...args]);
  procs.push(proc);
  return startDaemon(proc, 'health checking');
}

const scrape = (port: number): Scrape => new Scrape(httpGet(topo!, router, port, '/metrics').body);

/** Slots 1..NVM hold servers 1..NVM, as `activate --index=n 100+n` puts them. */
function initTable(shm: string): number[] {
  nfqlb('init', `--shm=${shm}`, '--N=32');
  for (let i = 1; i <= NVM; i++) nfqlb('activate', `--shm=${shm}`, `--index=${i}`, String(serverFwmark(i)));
  return active(shm);
}

beforeAll(async () => {
  requireBuild();
  topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: 1 });
  router = topo.ns.router(1);
  addFwmarkRoutes(topo, router, (family) =>
    Array.from({ length: NVM }, (_, k) => [serverFwmark(k + 1), serverAddr(k + 1, family)] as const),
  );
  servers = await VipServers.start(topo, procs);
});

afterAll(() => {
  const left = tearDownLab(PREFIX, topo, procs, [SHM, SHM_OWN]);
  expect(left).toEqual([]);
});

describe('nfqlb health', () => {
  it('refuses bad options with one line and changes nothing', () => {
    const r = spawn('node', [NFQLB, 'health', '--shm=thc-none', `--vip=${VIP[4]}`, '--health=udp:80']);
    return new Promise<void>((resolve) => {
      let err = '';
      r.stderr.on('data', (d: Buffer) => (err += d.toString()));
      r.on('close', (code) => {
        expect(code).toBe(1);
        expect(err).toBe("nfqlb health: --health: 'udp:80' is not tcp:PORT or http:PORT/PATH\n");
        resolve();
      });
    });
  });

  it('takes a target whose VIP listener stops out within 3.5 s, though its own address answers; puts it back when it rises', async () => {
    const table = initTable(SHM);
    const ownTable = initTable(SHM_OWN);
    // Both checkers run with the defaults but for the warm-up (its own test below).
    const vip = await startHealth([`--shm=${SHM}`, `--vip=${VIPS}`, `--health=http:${PORT}/healthz`, '--hc_warmup=0', '--metrics=9201']);
    await startHealth([`--shm=${SHM_OWN}`, `--vip=${VIPS}`, `--health=tcp:${PORT}`, '--hc_addr=target', '--hc_warmup=0', '--metrics=9202']);
    await waitFor('every target up', () => scrape(9201).sum('nfqlb_target_up') === NVM && scrape(9202).sum('nfqlb_target_up') === NVM);

    for (const family of [4, 6] as const) {
      const t0 = Date.now();
      await servers.vipListener(1, 'close', family);
      await waitFor(`fwmark 101 out (IPv${family})`, () => !active(SHM).includes(101), { timeout: 6000 });
      const detection = Date.now() - t0;
      console.log(`health: IPv${family} target down -> out of the table in ${detection} ms (defaults: 1 s interval, fall 3)`);
      expect(detection).toBeLessThanOrEqual(3500);
      expect(active(SHM)).toEqual(table.map((fw) => (fw === 101 ? -1 : fw)));
      // Draining, not deleted: an lb with --conntrack keeps its flows.
      expect(TargetStore.open(NFQLB_TABLE, SHM).draining()).toEqual([101]);
      const s = scrape(9201);
      expect(s.sum('nfqlb_target_up', { service: SHM, fwmark: '101' })).toBe(0);
      expect(s.sum('nfqlb_health_transitions_total', { service: SHM, fwmark: '101', to: 'down' })).toBe(family === 4 ? 1 : 2);
      // The checker of the targets' own addresses sees nothing wrong: it would keep sending the VIP's clients there.
      expect(scrape(9202).sum('nfqlb_target_up', { fwmark: '101' })).toBe(1);
      expect(active(SHM_OWN)).toEqual(ownTable);

      const t1 = Date.now();
      await servers.vipListener(1, 'open', family);
      await waitFor(`fwmark 101 back (IPv${family})`, () => active(SHM).includes(101), { timeout: 6000 });
      console.log(`health: IPv${family} target up again -> back in the table in ${Date.now() - t1} ms (rise 2)`);
      // Back in its slot: the same Maglev table as before, and no longer draining.
      expect(active(SHM)).toEqual(table);
      expect(TargetStore.open(NFQLB_TABLE, SHM).draining()).toEqual([]);
    }
    expect(scrape(9201).sum('nfqlb_health_probe_seconds_count', { service: SHM })).toBeGreaterThan(0);
    vipChecker = vip;
  });

  it('keeps every target when all are down (fail open) and says so', async () => {
    const table = active(SHM);
    for (let n = 1; n <= NVM; n++) await servers.vipListener(n, 'close', 4);
    await waitFor('the all-down metric', () => scrape(9201).sum('nfqlb_service_all_down', { service: SHM }) === 1, { timeout: 8000 });
    expect(scrape(9201).sum('nfqlb_target_up', { service: SHM })).toBe(0);
    expect(active(SHM)).toEqual(table);
    for (let n = 1; n <= NVM; n++) await servers.vipListener(n, 'open', 4);
    await waitFor('every target up again', () => scrape(9201).sum('nfqlb_target_up', { service: SHM }) === NVM, { timeout: 8000 });
    expect(scrape(9201).sum('nfqlb_service_all_down', { service: SHM })).toBe(0);
    expect(active(SHM)).toEqual(table);
  });

  it('takes nothing out during the warm-up, follows a table made anew, and puts back what it took out when stopped', async () => {
    const table = active(SHM);
    await vipChecker!.stop();
    await servers.vipListener(2, 'close', 6);
    const start = Date.now();
    const d = await startHealth([`--shm=${SHM}`, `--vip=${VIPS}`, `--health=http:${PORT}/healthz`, '--hc_warmup=3000', '--metrics=9203']);
    // The first probe settles the unknown state: down at once, but the target stays in.
    await waitFor('fwmark 102 seen down', () => scrape(9203).series('nfqlb_target_up', { fwmark: '102' })[0]?.value === 0);
    expect(active(SHM)).toEqual(table);
    expect(Date.now() - start).toBeLessThan(3000);
    await waitFor('fwmark 102 out after the warm-up', () => !active(SHM).includes(102), { timeout: 6000 });
    expect(Date.now() - start).toBeGreaterThanOrEqual(3000);
    // `init` makes the table anew, the operator's whole set: the checker follows the new file
    // and takes the dead target out of it too. (It may do so before initTable reads the table
    // back.) A new table drains nothing: 102 draining there is the checker's deactivation.
    initTable(SHM);
    await waitFor('fwmark 102 out of the new table', () => TargetStore.open(NFQLB_TABLE, SHM).draining().includes(102), {
      timeout: 6000,
    });
    expect(active(SHM)).toEqual(table.map((fw) => (fw === 102 ? -1 : fw)));
    await d.stop();
    expect(active(SHM)).toEqual(table);
    await servers.vipListener(2, 'open', 6);
  });
});

describe('docs/health.md runs as written', () => {
  it("Running it: on the README's table, in a /dev/shm of its own", async () => {
    const holder = topo!.spawn(router, [
      'unshare',
      '--mount',
      '--propagation=private',
      'sh',
      '-c',
      'mount -t tmpfs thc-shm /dev/shm && echo ready && exec sleep 3600',
    ]);
    procs.push(holder);
    await startDaemon(holder, 'ready');
    const there = (line: string): string[] => ['nsenter', '-t', String(holder.pid), '-m', '-n', 'sh', '-c', `cd ${ROOT} && ${line}`];
    const sh = (line: string) => spawnSync(there(line)[0]!, there(line).slice(1), { encoding: 'utf8', timeout: 20_000 });
    // The table of the README's "Using nfqlb".
    for (const line of ['bin/nfqlb init --shm=nfqlb --M=900 --N=20', 'bin/nfqlb activate 101 102 103']) expect(sh(line).status).toBe(0);
    const lines = docCommands(['docs/health.md', 'Running it']);
    const daemons: Daemon[] = [];
    for (const [i, line] of lines.entries()) {
      if (line.startsWith('#')) continue;
      if (line.endsWith('&')) {
        const argv = there(`exec ${line.replace(/\s*&$/, '')}`);
        const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
        procs.push(proc);
        daemons.push(await startDaemon(proc, 'health checking'));
        continue;
      }
      // A comment line after a command is its output (`...`: any text); the probes may need a moment to settle it.
      const comment = lines[i + 1]?.startsWith('#') ? lines[i + 1]! : null;
      const want = comment === null ? null : new RegExp(`^${comment.replace(/^#\s*/, '').split('...').map(escapeRegExp).join('.*')}$`, 's');
      await waitFor(`'${line}' to print ${comment ?? 'nothing on stderr'}`, () => {
        const r = sh(line);
        return r.status === 0 && (want === null ? r.stderr === '' : want.test(r.stdout));
      });
    }
    expect(daemons).toHaveLength(1);
    for (const d of daemons) await d.stop();
  });
});

const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
