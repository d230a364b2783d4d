// xdplb throughput against kernel forwarding on the same namespace path, in one run:
// tester → router vm-201 → server vm-001. Small packets: 60-byte UDP frames from an
// AF_XDP generator in the tester (udp-blaster.ts), counted as they arrive on the server's
// eth1 (an iptables rule drops them there, so no socket or ICMP work blurs the figure).
// Kernel forwarding sends them to the server's address; xdplb to the VIP. TCP: iperf2,
// one stream, with the veth offloads on and off.
import { readFileSync } from 'node:fs';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTopology, routerAddr, serverAddr, testerAddr, VIP, type Topology } from '../lab/topology.js';
import { FRAME_BYTES } from './udp-blaster.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const XDPLB = `${ROOT}bin/xdplb`;
const BLASTER = `${ROOT}dist/src/bench/udp-blaster.js`;
const PREFIX = 'tlbx-b-';
const SHM = 'tlbx-bench';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CLK_TCK = 100;

/** lbCpu: [user, system] % of one core, null without an lb. */
interface Row { path: string; offered: number; received: number; unit: string; lbCpu: [number, number] | null; hostCpu: number; note: string }

/** [utime, stime] of a process, in clock ticks. */
function cpuTicks(pid: number): [number, number] {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return [Number(f[11]), Number(f[12])];
}

/** Busy and total jiffies of the whole machine (all CPUs). */
function hostTicks(): [number, number] {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  const total = f.reduce((a, b) => a + b, 0);
  return [total - idle, total];
}

function counter(topo: Topology, ns: string, dev: string, field: string): number {
  return Number(topo.exec(ns, ['cat', `/sys/class/net/${dev}/statistics/${field}`]));
}

/** Runs `fn` and returns its result with the lb's CPU% (of one core) and the machine's busy %. */
function withCpu<T>(lb: ChildProcess | null, fn: () => T): { value: T; lbCpu: [number, number] | null; hostCpu: number; secs: number } {
  const l0 = lb ? cpuTicks(lb.pid!) : [0, 0];
  const [b0, t0] = hostTicks();
  const start = process.hrtime.bigint();
  const value = fn();
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  const [b1, t1] = hostTicks();
  const pct = (ticks: number): number => (ticks / CLK_TCK / secs) * 100;
  const l1 = lb ? cpuTicks(lb.pid!) : null;
  const lbCpu: [number, number] | null = l1 ? [pct(l1[0] - l0[0]!), pct(l1[1] - l0[1]!)] : null;
  return { value, lbCpu, hostCpu: ((b1 - b0) / (t1 - t0)) * 100, secs };
}

function udpRun(topo: Topology, lb: ChildProcess | null, path: string, dst: string): Row {
  const server = topo.ns.server(1);
  const routerMac = topo.exec(topo.ns.router(1), ['cat', '/sys/class/net/eth2/address']).trim();
  const before = counter(topo, server, 'eth1', 'rx_packets');
  const r = withCpu(lb, () =>
    JSON.parse(topo.exec(topo.ns.tester, ['node', BLASTER, 'eth1', routerMac, testerAddr(4), dst, String(SECONDS)])) as { sent: number; seconds: number });
  const received = counter(topo, server, 'eth1', 'rx_packets') - before;
  return {
    path, unit: 'kpps', lbCpu: r.lbCpu, hostCpu: r.hostCpu, note: '',
    offered: r.value.sent / r.value.seconds / 1000,
    received: received / r.value.seconds / 1000,
  };
}

function tcpRun(topo: Topology, lb: ChildProcess | null, path: string, dst: string): Row {
  const r = withCpu(lb, () => topo.exec(topo.ns.tester, ['iperf', '-c', dst, '-t', String(SECONDS), '-y', 'C']).trim().split('\n'));
  const gbps = Number(r.value.at(-1)!.split(',').at(-1)) / 1e9;
  return { path, unit: 'Gbit/s', offered: NaN, received: gbps, lbCpu: r.lbCpu, hostCpu: r.hostCpu, note: '' };
}

function startLb(topo: Topology, mode: 'native' | 'generic'): Promise<ChildProcess> {
  const lb = topo.spawn(topo.ns.router(1), ['node', XDPLB, 'lb', '--idev=eth2', '--edev=eth1', `--mode=${mode}`, `--shm=${SHM}`, `--vip=${VIP[4]}`]);
  let out = '';
  return new Promise((resolve, reject) => {
    lb.stdout!.on('data', (d: Buffer) => (out += d.toString()).includes('xdplb forwarding') && resolve(lb));
    lb.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    lb.once('exit', (code) => reject(new Error(`xdplb lb exited with ${code}: ${out.trim()}`)));
  });
}

/** Stops the lb and returns its final counters (the "xdplb stopped" log line). */
async function stopLb(lb: ChildProcess): Promise<Record<string, number>> {
  let out = '';
  lb.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise((r) => lb.once('exit', r));
  lb.kill('SIGTERM');
  await exited;
  const line = out.split('\n').find((l) => l.includes('xdplb stopped'));
  return line ? (JSON.parse(line) as Record<string, number>) : {};
}

function lossNote(s: Record<string, number>): string {
  const parts = [`fwd ${s.forwarded ?? '?'}`];
  for (const k of ['kernelRxRingFull', 'kernelFillRingEmpty', 'kernelRxDropped', 'txRingFull', 'checksums']) {
    if (s[k]) parts.push(`${k} ${s[k]}`);
  }
  return parts.join(', ');
}

export async function benchXdp(): Promise<void> {
  const topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  const procs: ChildProcess[] = [];
  try {
    const server = topo.ns.server(1);
    // The sink: count on eth1, drop before any socket lookup.
    topo.exec(server, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-p', 'udp', '--dport', '9', '-j', 'DROP']);
    procs.push(topo.spawn(server, ['iperf', '-s']));
    // The router forwards to the server's address; the VIP has no route there: only xdplb delivers it.
    topo.setRouterVipRoute(1, []);
    topo.ip(topo.ns.tester, [`route replace 192.168.1.0/24 via ${routerAddr(1, 2, 4)}`]);
    const serverMac = topo.exec(server, ['cat', '/sys/class/net/eth1/address']).trim();
    execFileSync('node', [XDPLB, 'init', `--shm=${SHM}`]);
    execFileSync('node', [XDPLB, 'activate', `--shm=${SHM}`, `--mac=${serverMac}`, '0']);
    await new Promise((r) => setTimeout(r, 300));

    const rows: Row[] = [];
    rows.push(udpRun(topo, null, 'kernel forwarding (no XDP)', serverAddr(1, 4)));
    for (const mode of ['native', 'generic'] as const) {
      const lb = await startLb(topo, mode);
      procs.push(lb);
      const row = udpRun(topo, lb, `xdplb ${mode}`, VIP[4]);
      rows.push(row);
      if (mode === 'native') rows.push(udpRun(topo, lb, 'kernel fwd, XDP_PASS native', serverAddr(1, 4)));
      row.note = lossNote(await stopLb(lb));
    }

    const tcp: Row[] = [];
    for (const offloads of ['on', 'off']) {
      topo.setOffloads(offloads === 'on');
      tcp.push(tcpRun(topo, null, `offloads ${offloads}: kernel (no XDP)`, serverAddr(1, 4)));
      const lb = await startLb(topo, 'native');
      procs.push(lb);
      const row = tcpRun(topo, lb, `offloads ${offloads}: xdplb native`, VIP[4]);
      tcp.push(row);
      row.note = lossNote(await stopLb(lb));
    }

    const cpu = (v: number): string => `${v.toFixed(0)}%`.padStart(7);
    const lbCpu = (v: [number, number] | null): string => (v === null ? '-' : `${v[0].toFixed(0)}+${v[1].toFixed(0)}%`).padStart(9);
    console.log(`\nxdplb: ${FRAME_BYTES}-byte UDP from an AF_XDP generator, ${SECONDS} s per run; received = at the server's eth1`);
    console.log('path                           offered kpps  received kpps  lb usr+sys  host CPU  lb counters');
    for (const r of rows) {
      console.log(`${r.path.padEnd(31)}${r.offered.toFixed(0).padStart(12)}${r.received.toFixed(0).padStart(15)}${lbCpu(r.lbCpu)}${cpu(r.hostCpu).padStart(10)}  ${r.note}`);
    }
    console.log(`\nxdplb: TCP, iperf2, 1 stream, ${SECONDS} s per run (router ${routerAddr(1, 2, 4)})`);
    console.log('path                                  Gbit/s  lb usr+sys  host CPU  lb counters');
    for (const r of tcp) {
      console.log(`${r.path.padEnd(36)}${r.received.toFixed(2).padStart(8)}${lbCpu(r.lbCpu)}${cpu(r.hostCpu).padStart(10)}  ${r.note}`);
    }
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    topo.destroy();
    try { execFileSync('rm', ['-f', `/dev/shm/${SHM}`]); } catch { /* not created */ }
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await benchXdp();
