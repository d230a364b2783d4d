// What the kernel tests of nfqlb share: the CLI built in dist/, daemons started in a namespace
// (ready when they log a line, stopped by PID), the reference router setup and the lab built on
// it, and mconnect.
import { type ChildProcess, execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inNs } from '../../src/lab/netns.js';
import { addFwmarkRoutes, iptables, nfqueueRule, serverFwmark, vipHost } from '../../src/lab/rules.js';
import type { LabOptions } from '../../src/lab/suite.js';
import {
  CLIENT_CIDR,
  createTopology,
  type Family,
  labNamespaces,
  routerAddr,
  serverAddr,
  serverMac,
  type Topology,
  testerAddr,
  VIP,
  vmName,
} from '../../src/lab/topology.js';
import { kernelQueueStats } from '../../src/nfqueue.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const NFQLB = `${ROOT}bin/nfqlb`;
export const XDPLB = `${ROOT}bin/xdplb`;

/** The tests run bin/nfqlb and the traffic tools in namespaces, from dist/. */
export function requireBuild(): void {
  if (!existsSync(`${ROOT}dist/src/cli/nfqlb.js`)) throw new Error('run `make build` first: the test runs bin/nfqlb');
}

/**
 * The options of a lab test (runTest): ten servers behind one LB, IPv4, 100 connections at 500
 * messages/s, quiet; `o` overrides any of them, and names the lab's prefix and output folder.
 */
export function labOptions(o: Pick<LabOptions, 'prefix' | 'outDir'> & Partial<LabOptions>): LabOptions {
  return { nvm: 10, nrouters: 1, families: [4], nconn: 100, rate: 500, synOnly: false, noStop: false, log: () => {}, ...o };
}

let publicRoot: string | null = null;

/**
 * `argv` run as the unprivileged user nobody, where `argv` may name files of the checkout by
 * ROOT. The checkout may sit below a directory only root may enter (a clone in `mktemp -d`), so
 * nobody's command sees it bind-mounted at a directory anyone may enter, in a mount namespace
 * of its own, and ROOT in `argv` is rewritten to that place.
 */
export function asNobody(argv: readonly string[]): string[] {
  if (publicRoot === null) {
    const dir = mkdtempSync(join(tmpdir(), 'tslb-public-'));
    chmodSync(dir, 0o755);
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    publicRoot = `${dir}/`;
  }
  return [
    'unshare',
    '--mount',
    '--propagation=private',
    'sh',
    '-c',
    'mount --bind "$1" "$2" && shift 2 && exec "$@"',
    'as-nobody',
    ROOT,
    publicRoot,
    'setpriv',
    '--reuid=nobody',
    '--regid=nogroup',
    '--clear-groups',
    ...argv.map((a) => (a.startsWith(ROOT) ? publicRoot + a.slice(ROOT.length) : a)),
  ];
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `argv` in namespace `ns` with `env` added, as root or as nobody (asNobody); never throws.
 * A time limit: a command that hangs (an lb that failed to start, holding its queue) fails the
 * test that ran it instead of the whole file's timeout.
 */
export function runIn(ns: string, argv: readonly string[], o: { env?: Record<string, string>; user?: 'root' | 'nobody' } = {}): RunResult {
  const cmd = ['env', ...Object.entries(o.env ?? {}).map(([k, v]) => `${k}=${v}`), ...argv];
  const r = spawnSync('ip', ['netns', 'exec', ns, ...(o.user === 'nobody' ? asNobody(cmd) : cmd)], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** An nfqlb command in namespace `ns` (where its queues, flow channel and trace socket are). */
export function nfqlbIn(
  ns: string,
  args: readonly string[],
  o: { env?: Record<string, string>; user?: 'root' | 'nobody' } = {},
): RunResult {
  return runIn(ns, ['node', NFQLB, ...args], o);
}

/** Runs an nfqlb command in this (root) namespace; /dev/shm is shared by all of them. */
export function nfqlb(...args: string[]): string {
  return execFileSync('node', [NFQLB, ...args], { encoding: 'utf8' });
}

export interface Daemon {
  readonly proc: ChildProcess;
  /** stdout and stderr so far. */
  output(): string;
  /** Sends the signal, then resolves with all its output once its pipes are closed. */
  stop(signal?: NodeJS.Signals): Promise<string>;
}

/** Resolves once the process logs `ready`; rejects with its output if it exits first. */
export function startDaemon(proc: ChildProcess, ready = 'serving queue'): Promise<Daemon> {
  let out = '';
  // 'close', not 'exit': the last lines may still be in the pipe when the process exits.
  const closed = new Promise<void>((r) => proc.once('close', () => r()));
  const daemon: Daemon = {
    proc,
    output: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await closed;
      return out;
    },
  };
  return new Promise((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(ready)) resolve(daemon);
    });
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    proc.once('exit', (code) => reject(new Error(`${proc.spawnargs.join(' ')} exited (${code}): ${out}`)));
  });
}

/** The traffic server (port 5001 answers with the name) on servers 1..nvm. */
export function startServers(topo: Topology, nvm: number): ChildProcess[] {
  return Array.from({ length: nvm }, (_, i) =>
    topo.spawn(topo.ns.server(i + 1), ['node', `${ROOT}dist/src/lab/traffic/server.js`, `--name=${vmName(i + 1)}`]),
  );
}

/**
 * The reference router setup for nvm DSR servers: conntrack off, packets from eth2 to a VIP to
 * NFQUEUE 2, and fwmark 100+n routed to server n by a table of its own.
 */
export function nfqueueRouter(topo: Topology, router: string, nvm: number): void {
  for (const family of [4, 6] as const) {
    topo.exec(router, [iptables(family), '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    const rule = nfqueueRule({ iif: 'eth2', dst: vipHost(family), queue: 2 });
    topo.exec(router, [iptables(family), '-t', 'mangle', '-A', 'PREROUTING', ...rule]);
  }
  const servers = Array.from({ length: nvm }, (_, k) => k + 1);
  addFwmarkRoutes(topo, router, (family) => servers.map((n) => [serverFwmark(n), serverAddr(n, family)] as const));
}

/**
 * Replaces the router's NFQUEUE rules of nfqueueRouter with ones to another queue:
 * `--queue-num N`, or `--queue-balance a:b` (one queue per flow).
 */
export function nfqueueTarget(topo: Topology, router: string, how: '--queue-num' | '--queue-balance', queue: string): void {
  if ((how === '--queue-balance') !== queue.includes(':')) throw new RangeError(`nfqueueTarget: ${how} ${queue}`);
  for (const family of [4, 6] as const) {
    const rule = nfqueueRule({ iif: 'eth2', dst: vipHost(family), queue });
    topo.exec(router, [iptables(family), '-t', 'mangle', '-R', 'PREROUTING', '1', ...rule]);
  }
}

/**
 * For each of `queues`, the epoll instances (by fd) of process `pid` that watch the queue's
 * netlink socket, found from the port id bound to the queue. An event loop is one epoll instance
 * run by one thread, so queues served by a worker thread each are watched by different ones.
 */
export function queueEventLoops(topo: Topology, router: string, pid: number, queues: readonly number[]): number[][] {
  const bound = topo.exec(router, ['cat', '/proc/net/netfilter/nfnetlink_queue']);
  // sk Eth Pid(the port id) Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 is NETLINK_NETFILTER.
  const netlink = topo
    .exec(router, ['cat', '/proc/net/netlink'])
    .trim()
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/));
  const fdOfInode = new Map<string, number>();
  const epolls: { fd: number; watched: Set<number> }[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`).map(Number)) {
    const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    const socket = /^socket:\[(\d+)\]$/.exec(link);
    if (socket) fdOfInode.set(socket[1]!, fd);
    if (link === 'anon_inode:[eventpoll]') {
      const tfds = [...readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').matchAll(/^tfd:\s+(\d+)/gm)].map((m) => Number(m[1]));
      epolls.push({ fd, watched: new Set(tfds) });
    }
  }
  return queues.map((q) => {
    const portId = kernelQueueStats(q, bound)?.portId;
    if (portId === undefined) throw new Error(`queue ${q} is not bound`);
    const inode = netlink.find((f) => f[1] === '12' && Number(f[2]) === portId)?.[9];
    const fd = inode === undefined ? undefined : fdOfInode.get(inode);
    if (fd === undefined) throw new Error(`queue ${q}: port id ${portId} is no socket of process ${pid}`);
    return epolls.filter((e) => e.watched.has(fd)).map((e) => e.fd);
  });
}

/**
 * The lab most kernel tests run in: one router with the reference setup (nfqueueRouter) in
 * front of nvm traffic servers (and `nrouters - 1` more routers, left bare). The servers go
 * into `procs`, the test's list of everything it started, so that tearDownLab kills them with
 * the rest.
 */
export function createNfqueueLab(prefix: string, nvm: number, procs: ChildProcess[], nrouters = 1): { topo: Topology; router: string } {
  const topo = createTopology({ prefix, nvm, nrouters });
  const router = topo.ns.router(1);
  try {
    procs.push(...startServers(topo, nvm));
    nfqueueRouter(topo, router, nvm);
  } catch (e) {
    // The test never gets topo to remove in its tear-down.
    topo.destroy();
    throw e;
  }
  return { topo, router };
}

const serverList = (servers: number | readonly number[]): readonly number[] =>
  typeof servers === 'number' ? Array.from({ length: servers }, (_, i) => i + 1) : servers;

/**
 * Activates servers in target table `shm` with the fwmark nfqueueRouter routes to each
 * (server n: fwmark 100+n), at a fixed index (n), so that activating them again gives back the
 * same lookup table. A number means servers 1..n.
 */
export function activateServers(shm: string, servers: number | readonly number[]): void {
  for (const n of serverList(servers)) nfqlb('activate', `--shm=${shm}`, `--index=${n}`, String(100 + n));
}

/**
 * A new xdplb table with `servers` active (a number means servers 1..n), server n as target n - 1
 * by its MAC (L2 DSR), made with `xdplb` (the CLI on the lb's router and table); returns the MACs,
 * in the order of `servers`.
 */
export function activateXdplbServers(topo: Topology, xdplb: (...args: string[]) => string, servers: number | readonly number[]): string[] {
  xdplb('init');
  return serverList(servers).map((n) => {
    const mac = serverMac(topo, n);
    xdplb('activate', `--mac=${mac}`, String(n - 1));
    return mac;
  });
}

/**
 * Starts `xdplb lb` in router namespace `ns` (in on eth2, out on eth1) over table `shm`, with
 * `args` added; `procs` gets its process at once (for the teardown), the daemon once it forwards.
 */
export function startXdplb(topo: Topology, ns: string, shm: string, args: readonly string[], procs: ChildProcess[]): Promise<Daemon> {
  const proc = topo.spawn(ns, [process.execPath, XDPLB, 'lb', '--idev=eth2', '--edev=eth1', `--shm=${shm}`, ...args]);
  procs.push(proc);
  return startDaemon(proc, 'xdplb forwarding');
}

/**
 * Undoes a lab test (also after a failed set-up: topo may be missing): kills every process it
 * started, removes the namespaces and the shared memory files (`nfqlb delete` ignores one that
 * was never made). Returns the namespaces with the prefix still there, for the test to assert
 * that there are none.
 */
export function tearDownLab(prefix: string, topo: Topology | undefined, procs: readonly ChildProcess[], shms: readonly string[]): string[] {
  for (const p of procs) p.kill('SIGKILL');
  topo?.destroy();
  for (const shm of shms) nfqlb('delete', `--shm=${shm}`);
  return labNamespaces(prefix);
}

/** How many TCP connections in namespace `ns` are established to port `port` (of any address). */
export function establishedTo(ns: string, port: number): number {
  return inNs(ns, ['ss', '-Htn', 'state', 'established', `( dport = :${port} )`])
    .split('\n')
    .filter((l) => l.trim() !== '').length;
}

export interface MconnectResult {
  connections: number;
  failed_connects: number;
  failed_reads: number;
  hosts: Record<string, number>;
}

/** mconnect from the tester to the VIP's port 5001, each connection from another source. */
export function mconnect(topo: Topology, family: Family, o: { nconn?: number; srccidr?: string; timeout?: string } = {}): MconnectResult {
  const address = family === 4 ? `${VIP[4]}:5001` : `[${VIP[6]}]:5001`;
  // mconnect exits non-zero when connections fail; its JSON report is on stdout either way.
  const r = spawnSync(
    'ip',
    [
      'netns',
      'exec',
      topo.ns.tester,
      'node',
      `${ROOT}dist/src/lab/traffic/mconnect.js`,
      `--address=${address}`,
      `--nconn=${o.nconn ?? 100}`,
      `--srccidr=${o.srccidr ?? CLIENT_CIDR[family]}`,
      `--timeout=${o.timeout ?? '3s'}`,
      '--output=json',
    ],
    { encoding: 'utf8' },
  );
  return JSON.parse(r.stdout) as MconnectResult;
}

/** The UDP port of startUdpServers. */
export const UDP_PORT = 6000;

// A UDP server on every server, bound to the VIPs (DSR): answers each datagram with
// "<name> <bytes>", so a client sees which server got it and whether it arrived whole.
const UDP_SERVER_JS = `
import { createSocket } from 'node:dgram';
const [name, port] = [process.argv[1], Number(process.argv[2])];
for (const [type, addr] of [['udp4', '${VIP[4]}'], ['udp6', '${VIP[6]}']]) {
  const s = createSocket(type === 'udp6' ? { type, ipv6Only: true } : { type });
  s.on('message', (m, r) => s.send(name + ' ' + m.length, r.port, r.address));
  s.bind(port, addr);
}`;

export function startUdpServers(topo: Topology, nvm: number): ChildProcess[] {
  return Array.from({ length: nvm }, (_, i) =>
    topo.spawn(topo.ns.server(i + 1), ['node', '--input-type=module', '-e', UDP_SERVER_JS, vmName(i + 1), String(UDP_PORT)]),
  );
}

// The tester's client. Jobs on stdin: { src, sport, family, frags?: base64[] }. With frags it
// writes them, in the given order, into tun device "tfrag" (they leave towards the VIP as if
// forwarded); without, it sends a 3000-byte datagram and lets its kernel fragment it. Prints
// { "<src>": "<answer>" | null }.
const UDP_CLIENT_JS = `
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
const jobs = JSON.parse(readFileSync(0, 'utf8'));
const tun = jobs.some((j) => j.frags) ? new (await import('${ROOT}dist/src/nfqlb/tun.js')).Tun('tfrag') : null;
const one = (j) => new Promise((resolve) => {
  const s = createSocket(j.family === 4 ? { type: 'udp4' } : { type: 'udp6', ipv6Only: true });
  const timer = setTimeout(() => { s.close(); resolve(null); }, 1500);
  s.on('message', (m) => { clearTimeout(timer); s.close(); resolve(m.toString()); });
  s.bind(j.sport, j.src, () => {
    if (!j.frags) return s.send(Buffer.alloc(3000, 7), ${UDP_PORT}, j.family === 4 ? '${VIP[4]}' : '${VIP[6]}');
    for (const f of j.frags) { const b = Buffer.from(f, 'base64'); tun.write(b, 0, b.length); }
  });
});
const out = {};
const results = await Promise.all(jobs.map(one));
jobs.forEach((j, i) => (out[j.src] = results[i]));
console.log(JSON.stringify(out));
process.exit(0);`;

export interface UdpJob {
  src: string;
  sport: number;
  family: Family;
  frags?: string[];
}

/** Runs the UDP client in the tester: each job's answer (or null) by source address. */
export function udpRoundTrips(topo: Topology, jobs: UdpJob[]): Record<string, string | null> {
  const r = spawnSync('ip', ['netns', 'exec', topo.ns.tester, 'node', '--input-type=module', '-e', UDP_CLIENT_JS], {
    input: JSON.stringify(jobs),
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`client failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, string | null>;
}

/** n source addresses in the tester's client ranges 50.0.0.0/16 and 2000::/112. */
export function sources(family: Family, n: number, base: number): string[] {
  return Array.from({ length: n }, (_, i) => (family === 4 ? `50.0.${base}.${i + 1}` : `2000::${(base * 256 + i + 1).toString(16)}`));
}

// GET a URL; prints the status, then the body (a line "error <message>" if the request failed).
const HTTP_GET_JS =
  "fetch(process.argv[1]).then(async (r) => console.log(r.status + '\\n' + await r.text()), " +
  "(e) => console.log('error ' + e.message));";

/** GET http://127.0.0.1:port/path from inside namespace `ns` (where --metrics binds to loopback). */
export function httpGet(topo: Topology, ns: string, port: number, path: string): { status: number; body: string } {
  const out = topo.exec(ns, ['node', '-e', HTTP_GET_JS, `http://127.0.0.1:${port}${path}`]);
  const nl = out.indexOf('\n');
  if (out.startsWith('error')) throw new Error(`GET ${path} in ${ns}: ${out.trim()}`);
  // console.log added a newline to the body.
  return { status: Number(out.slice(0, nl)), body: out.slice(nl + 1, -1) };
}

/** Samples of a Prometheus text exposition. */
export class Scrape {
  private readonly samples: { name: string; labels: Record<string, string>; value: number }[] = [];

  constructor(readonly text: string) {
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      if (!m) continue;
      const labels: Record<string, string> = {};
      for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k!] = v!;
      this.samples.push({ name: m[1]!, labels, value: Number(m[3]) });
    }
  }

  /** The samples of `name` whose labels include `labels`. */
  series(name: string, labels: Record<string, string> = {}): { labels: Record<string, string>; value: number }[] {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }

  /** The sum of those samples (0 when there are none). */
  sum(name: string, labels: Record<string, string> = {}): number {
    return this.series(name, labels).reduce((n, s) => n + s.value, 0);
  }
}

/**
 * Permanent neighbour entries (v4 and v6) between every two hosts of each lab net: tester and
 * routers on net 2, routers and servers on net 1. With no ARP/ND at all, no packet waits in (or
 * is dropped from) a neighbour queue after an lb counted it, and no probe moves a counter late:
 * for tests that compare packet counts exactly.
 */
export function staticNeighbours(topo: Topology): void {
  type Host = { ns: string; dev: string; addr: (f: Family) => string };
  const routers = Array.from({ length: topo.nrouters }, (_, k) => k + 1);
  const servers = Array.from({ length: topo.nvm }, (_, k) => k + 1);
  const nets: Host[][] = [
    [
      ...servers.map((n): Host => ({ ns: topo.ns.server(n), dev: 'eth1', addr: (f) => serverAddr(n, f) })),
      ...routers.map((i): Host => ({ ns: topo.ns.router(i), dev: 'eth1', addr: (f) => routerAddr(i, 1, f) })),
    ],
    [
      { ns: topo.ns.tester, dev: 'eth1', addr: testerAddr },
      ...routers.map((i): Host => ({ ns: topo.ns.router(i), dev: 'eth2', addr: (f) => routerAddr(i, 2, f) })),
    ],
  ];
  for (const hosts of nets) {
    const macs = hosts.map((h) => topo.exec(h.ns, ['cat', `/sys/class/net/${h.dev}/address`]).trim());
    for (const h of hosts) {
      topo.ip(
        h.ns,
        hosts.flatMap((o, k) =>
          o === h ? [] : ([4, 6] as const).map((f) => `neigh replace ${o.addr(f)} lladdr ${macs[k]} dev ${h.dev} nud permanent`),
        ),
      );
    }
  }
}
