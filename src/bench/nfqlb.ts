// nfqlb against kernel forwarding on the same namespace path, in one run: tester → router →
// server directly (to the server's address: kernel forwarding) and via the VIP through
// `nfqlb lb` on the router (NFQUEUE, fwmark, policy route, DSR). Every lb variant in VARIANTS
// gets the same rows, with ratios against the first one (plain `nfqlb lb`) of the same run;
// so does the reference C nfqlb when `make bench REF_NFQLB=/path/to/nfqlb` names a build of it.
import { type ChildProcess, execFileSync, spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addFwmarkRoutes, nfqueueRule, serverFwmark, vipHost } from '../lab/rules.js';
import { createTopology, routerAddr, serverAddr, type Topology, VIP } from '../lab/topology.js';
import { kernelQueueStats } from '../nfqueue.js';
import { FLOWS, type Generator, startGenerator, UDP_PAYLOAD } from './generators.js';
import {
  GEN_CPU,
  LB_CPU,
  type Lb,
  measure,
  measureFlood,
  medianRow,
  onCpu,
  type Probe,
  printRows,
  type Row,
  SECONDS,
  startLb,
  stopLb,
} from './measure.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const NFQLB = `${ROOT}bin/nfqlb`;
const PREFIX = 'tbn-n-';
const SHM = 'tbn-targets';
const FT_SHM = 'tbn-ftshm';
const QUEUE = 2;
/**
 * Every row is measured this many times, all paths in turn each time, so a drift of the
 * machine falls on every path alike; one 5 s window varies by 10-20% on a 2-core VM.
 */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

/** What a variant's hooks may change: the lab, the router's namespace. */
export interface NfqlbLab {
  topo: Topology;
  router: string;
}

/**
 * One `nfqlb lb` configuration to compare with the plain one. Adding a row to every table is
 * adding an entry here.
 */
export interface LbVariant {
  label: string;
  /** The nfqlb to run (argv before `lb`); ours, bin/nfqlb, when not given. */
  command?: readonly string[];
  /** Arguments after `nfqlb lb --tshm=... --ft_shm=... --queue=2`. */
  args: readonly string[];
  /** Extra matches of the NFQUEUE rule, e.g. `-m mark --mark 0` to let packets marked earlier skip the queue. */
  queueMatch?: readonly string[];
  /** Runs before the lb starts (the NFQUEUE rule is in place). */
  setup?(lab: NfqlbLab): void | Promise<void>;
  /** Runs after the lb has stopped. */
  teardown?(lab: NfqlbLab): void | Promise<void>;
}

const METRICS_PORT = 9110;
let scraper: ChildProcess | null = null;

export const VARIANTS: readonly LbVariant[] = [
  { label: 'nfqlb lb', args: [] },
  {
    // Scraped every second (Prometheus usually waits 15 s), so the row carries the scrapes too.
    label: 'lb --metrics',
    args: [`--metrics=${METRICS_PORT}`],
    setup: ({ topo, router }) => {
      scraper = topo.spawn(
        router,
        onCpu(GEN_CPU, [
          'node',
          '-e',
          `setInterval(() => fetch('http://127.0.0.1:${METRICS_PORT}/metrics').then((r) => r.text(), () => {}), 1000)`,
        ]),
        { stdio: 'ignore' },
      );
    },
    teardown: () => {
      scraper?.kill();
      scraper = null;
    },
  },
  // The generator's 64 flows fit any table: this row is the cost of a hit.
  { label: 'lb --conntrack', args: ['--conntrack=1000000'] },
  {
    // Whole VIP packets are marked at tc ingress and skip the queue (see docs/offload.md).
    label: 'lb --offload',
    args: ['--offload=eth2', `--vip=${VIP[4]}`],
    queueMatch: ['-m', 'mark', '--mark', '0'],
  },
];

/**
 * The reference C nfqlb (Nordix/nfqueue-loadbalancer) that `make bench REF_NFQLB=...` names, or
 * null. It reads the same shared-memory table and takes the same `lb` options; it logs nothing
 * once its queue is bound (its stdout is a buffered pipe here), so the bench waits for the kernel
 * to list the queue as bound.
 */
export function referenceNfqlb(): { path: string; version: string } | null {
  const given = process.env.REF_NFQLB;
  if (!given) return null;
  const path = resolve(given);
  const r = spawnSync(path, ['version'], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = r.error?.message ?? (r.stderr.trim() || `exit status ${r.status}`);
    throw new Error(
      `bench: REF_NFQLB=${given}: '${path} version' failed (${why}); ` +
        'it must name a build of the reference nfqlb (see docs/performance.md)',
    );
  }
  return { path, version: r.stdout.trim() };
}

/** VARIANTS, and the reference's row when REF_NFQLB names one. */
function variants(ref: { path: string } | null): readonly LbVariant[] {
  return ref ? [...VARIANTS, { label: 'reference C nfqlb lb', command: [ref.path], args: [] }] : VARIANTS;
}

/** What the bench prints about the reference: measured, or how to measure it. */
export function referenceLine(ref: { path: string; version: string } | null): string {
  return ref
    ? `reference C nfqlb ${ref.version} (${ref.path}): measured on every nfqlb row, as 'reference C nfqlb lb'`
    : 'reference C nfqlb: not measured (make bench REF_NFQLB=/path/to/nfqlb adds its rows; see docs/performance.md)';
}

interface Test {
  title: string;
  offloads: boolean;
  /** One row for the path to `dst`; `lb` null for kernel forwarding. */
  run(probe: Probe, path: string, dst: string): Promise<Row>;
}

function tests(topo: Topology, gen: Generator): Test[] {
  const udp: Test['run'] = (probe, path, dst) => measureFlood({ ...probe, gen: startGenerator(gen, { topo, dst }) }, path);
  const tcp: Test['run'] = (probe, path, dst) =>
    measure(probe, path, true, async () => {
      const csv = topo.exec(topo.ns.tester, onCpu(GEN_CPU, ['iperf', '-c', dst, '-t', String(SECONDS), '-y', 'C'])).trim();
      return Number(csv.split('\n').at(-1)!.split(',').at(-1)) / 1e9; // last field: bits per second
    });
  return [
    { title: `${UDP_PAYLOAD + 42}-byte UDP, ${FLOWS} flows from ${gen.name} (kpps)`, offloads: true, run: udp },
    { title: 'TCP, iperf2, 1 stream, veth offloads on (received: kpps of segments)', offloads: true, run: tcp },
    { title: 'TCP, iperf2, 1 stream, veth offloads off (received: kpps of segments)', offloads: false, run: tcp },
  ];
}

/** Whether an lb has bound our queue in the router's namespace. */
function queueBound(topo: Topology): boolean {
  return kernelQueueStats(QUEUE, topo.exec(topo.ns.router(1), ['cat', '/proc/net/netfilter/nfnetlink_queue'])) !== undefined;
}

/** user_dropped + queue_dropped of our queue in the router's namespace. */
function queueDrops(topo: Topology): number {
  const f = topo
    .exec(topo.ns.router(1), ['cat', '/proc/net/netfilter/nfnetlink_queue'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((l) => l[0] === String(QUEUE));
  return f ? Number(f[5]) + Number(f[6]) : 0;
}

function queueRule(v: LbVariant): string[] {
  return ['PREROUTING', ...nfqueueRule({ iif: 'eth2', dst: vipHost(4), match: v.queueMatch, queue: QUEUE })];
}

export async function benchNfqlb(gen: Generator, ref: { path: string; version: string } | null): Promise<void> {
  const lbs = variants(ref);
  const topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  const lab: NfqlbLab = { topo, router: topo.ns.router(1) };
  let lb: Lb | null = null;
  try {
    const { router } = lab;
    const server = topo.ns.server(1);
    topo.spawn(server, onCpu(GEN_CPU, ['iperf', '-s']), { stdio: 'ignore' });
    // The UDP flood is counted on the server's interface and dropped before it costs ICMP replies.
    topo.exec(server, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-p', 'udp', '--dport', '9', '-j', 'DROP']);
    // Packets to the server's address are forwarded by the kernel; VIP packets go through the queue.
    topo.ip(topo.ns.tester, [`route add 192.168.1.0/24 via ${routerAddr(1, 2, 4)}`]);
    topo.setRouterVipRoute(1, []);
    topo.exec(router, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    addFwmarkRoutes(topo, router, (family) => [[serverFwmark(1), serverAddr(1, family)]], [4]);
    execFileSync('node', [NFQLB, 'init', `--shm=${SHM}`]);
    execFileSync('node', [NFQLB, 'activate', `--shm=${SHM}`, String(serverFwmark(1))]);

    const all = tests(topo, gen);
    // runs[test][path][round]: path 0 is kernel forwarding, then the variants in order.
    const runs: Row[][][] = all.map(() => Array.from({ length: 1 + lbs.length }, () => []));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, t] of all.entries()) {
        topo.setOffloads(t.offloads);
        runs[i]![0]!.push(await t.run({ topo, lb: null }, 'kernel forwarding', serverAddr(1, 4)));
      }
      for (const [k, v] of lbs.entries()) {
        topo.exec(router, ['iptables', '-t', 'mangle', '-A', ...queueRule(v)]);
        await v.setup?.(lab);
        const argv = [...(v.command ?? ['node', NFQLB]), 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, `--queue=${QUEUE}`, ...v.args];
        lb = await startLb(topo, router, argv, v.command ? () => queueBound(topo) : 'serving queue');
        for (const [i, t] of all.entries()) {
          topo.setOffloads(t.offloads);
          runs[i]![k + 1]!.push(await t.run({ topo, lb: lb.proc, drops: () => queueDrops(topo) }, v.label, VIP[4]));
        }
        await stopLb(lb);
        lb = null;
        await v.teardown?.(lab);
        topo.exec(router, ['iptables', '-t', 'mangle', '-D', ...queueRule(v)]);
      }
    }
    console.log(
      `\nnfqlb: kernel forwarding to the server vs the VIP through nfqlb lb; generator and iperf on cpu${GEN_CPU}, ` +
        `lb on cpu${LB_CPU}; ${SECONDS} s per row, ${ROUNDS} rounds with the paths in turn, the median round shown; ` +
        `ratios against '${lbs[0]!.label}'`,
    );
    console.log(referenceLine(ref));
    for (const [i, t] of all.entries()) {
      console.log(`${t.title}:`);
      const rows = runs[i]!.map(medianRow);
      printRows(rows, rows[1] ?? null);
    }
  } finally {
    if (lb) await stopLb(lb);
    topo.destroy();
    for (const shm of [SHM, FT_SHM]) {
      try {
        execFileSync('node', [NFQLB, 'delete', `--shm=${shm}`]);
      } catch {
        /* not created */
      }
    }
  }
}
