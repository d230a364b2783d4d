// nfqlb throughput against kernel forwarding on the same namespace path, measured in one run:
// tester → router → server directly (to the server's address), and via the VIP through
// `nfqlb lb` on the router (NFQUEUE, fwmark, policy route, DSR). iperf2, one stream.
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTopology, routerAddr, serverAddr, VIP, type Topology } from '../lab/topology.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const NFQLB = `${ROOT}bin/nfqlb`;
const PREFIX = 'tlbb-';
const SHM = 'tlbb-targets';
const FT_SHM = 'tlbb-ftshm';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const UDP_PAYLOAD = 18; // 18 + 8 UDP + 20 IP + 14 Ethernet = a 60-byte frame
const TRAFGEN_CONF = `/tmp/${PREFIX}trafgen.cfg`;
const CLK_TCK = 100;

/** A rate, and for the UDP flood what the generator offered. */
interface Rate { rate: number; offered?: number }

interface Row { offloads: string; test: string; direct: Rate; via: Rate; unit: string; cpu: number; drops: number }

function counter(topo: Topology, ns: string, dev: string, field: 'rx_packets' | 'tx_packets'): number {
  return Number(topo.exec(ns, ['cat', `/sys/class/net/${dev}/statistics/${field}`]));
}

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}

/** user_dropped + queue_dropped for queue 2 in the router's network namespace. */
function queueDrops(topo: Topology): number {
  const line = topo.exec(topo.ns.router(1), ['cat', '/proc/net/netfilter/nfnetlink_queue'])
    .split('\n').map((l) => l.trim().split(/\s+/)).find((f) => f[0] === '2');
  return line ? Number(line[5]) + Number(line[6]) : 0;
}

/** TCP Gbit/s from iperf2's CSV report (last field: bits per second). */
function tcpRun(topo: Topology, dst: string): Rate {
  const out = topo.exec(topo.ns.tester, ['iperf', '-c', dst, '-t', String(SECONDS), '-y', 'C']).trim().split('\n');
  return { rate: Number(out.at(-1)!.split(',').at(-1)) / 1e9 };
}

function mac(topo: Topology, ns: string, dev: string): string {
  return topo.exec(ns, ['cat', `/sys/class/net/${dev}/address`]).trim();
}

/**
 * Small UDP packets: trafgen (PF_PACKET, far faster than iperf2's ~100 kpps) floods 60-byte
 * frames from varying source ports on one core; returns the packets per second that reach the server.
 */
function udpRun(topo: Topology, dst: string): Rate {
  const [tester, server] = [topo.ns.tester, topo.ns.server(1)];
  writeFileSync(TRAFGEN_CONF, `{ eth(da=${mac(topo, topo.ns.router(1), 'eth2')}, sa=${mac(topo, tester, 'eth1')}),
  ipv4(saddr=50.0.0.1, daddr=${dst}, ttl=64), udp(sp=dinc(1024, 65000), dp=9), fill(0x00, ${UDP_PAYLOAD}) }\n`);
  const before = counter(topo, server, 'eth1', 'rx_packets');
  const sent = counter(topo, tester, 'eth1', 'tx_packets');
  const t0 = process.hrtime.bigint();
  // trafgen runs until the timeout ends it; that exit status is the expected one.
  spawnSync('ip', ['netns', 'exec', tester, 'timeout', String(SECONDS), 'trafgen', '--dev', 'eth1', '--conf', TRAFGEN_CONF, '--cpus', '1', '-q']);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return {
    rate: (counter(topo, server, 'eth1', 'rx_packets') - before) / secs / 1000,
    offered: (counter(topo, tester, 'eth1', 'tx_packets') - sent) / secs / 1000,
  };
}

function measure(topo: Topology, lb: ChildProcess, offloads: string, test: string, unit: string, run: (dst: string) => Rate): Row {
  const direct = run(serverAddr(1, 4));
  const drops0 = queueDrops(topo);
  const ticks0 = cpuTicks(lb.pid!);
  const t0 = process.hrtime.bigint();
  const via = run(VIP[4]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = ((cpuTicks(lb.pid!) - ticks0) / CLK_TCK / secs) * 100;
  return { offloads, test, direct, via, unit, cpu, drops: queueDrops(topo) - drops0 };
}

function startLb(topo: Topology): Promise<ChildProcess> {
  const lb = topo.spawn(topo.ns.router(1), ['node', NFQLB, 'lb', `--tshm=${SHM}`, `--ft_shm=${FT_SHM}`, '--queue=2']);
  return new Promise((resolve, reject) => {
    lb.stdout!.on('data', (d: Buffer) => d.toString().includes('serving queue') && resolve(lb));
    lb.once('exit', (code) => reject(new Error(`nfqlb lb exited with ${code}`)));
  });
}

export async function benchNfqlb(): Promise<void> {
  const topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  const procs: ChildProcess[] = [];
  try {
    const router = topo.ns.router(1);
    const server = topo.ns.server(1);
    procs.push(topo.spawn(server, ['iperf', '-s']));
    // The UDP flood is counted on the server's interface and dropped before it costs ICMP replies.
    topo.exec(server, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-p', 'udp', '--dport', '9', '-j', 'DROP']);
    // Direct packets to the server are forwarded by the kernel; VIP packets go through the queue.
    topo.ip(topo.ns.tester, [`route add 192.168.1.0/24 via ${routerAddr(1, 2, 4)}`]);
    topo.setRouterVipRoute(1, []);
    topo.exec(router, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    topo.exec(router, ['iptables', '-t', 'mangle', '-A', 'PREROUTING', '-i', 'eth2', '-d', `${VIP[4]}/32`, '-j', 'NFQUEUE', '--queue-num', '2']);
    topo.ip(router, ['rule add fwmark 101 table 101', `route add default via ${serverAddr(1, 4)} table 101`]);
    execFileSync('node', [NFQLB, 'init', `--shm=${SHM}`]);
    execFileSync('node', [NFQLB, 'activate', `--shm=${SHM}`, '101']);
    const lb = await startLb(topo);
    procs.push(lb);
    await new Promise((r) => setTimeout(r, 500)); // iperf servers listening

    const rows: Row[] = [];
    for (const offloads of ['on', 'off']) {
      topo.setOffloads(offloads === 'on');
      rows.push(measure(topo, lb, offloads, 'TCP', 'Gbit/s', (dst) => tcpRun(topo, dst)));
      rows.push(measure(topo, lb, offloads, `UDP ${UDP_PAYLOAD + 42}B`, 'kpps', (dst) => udpRun(topo, dst)));
    }
    console.log(`\nnfqlb: direct (kernel forwarding) vs via VIP through nfqlb lb; iperf2, 1 stream, ${SECONDS} s per run`);
    console.log('(UDP: packets/s received by the server "of" those the generator sent, on one core)');
    console.log('offloads  test        direct                via nfqlb             ratio  lb CPU%  queue drops (user+kernel)');
    for (const r of rows) {
      const fmt = (v: Rate) =>
        `${v.rate.toFixed(r.unit === 'kpps' ? 0 : 2)} ${r.unit}${v.offered === undefined ? '' : ` of ${v.offered.toFixed(0)}`}`.padEnd(22);
      console.log(`${r.offloads.padEnd(10)}${r.test.padEnd(12)}${fmt(r.direct)}${fmt(r.via)}${(r.via.rate / r.direct.rate).toFixed(2).padEnd(7)}${r.cpu.toFixed(0).padStart(6)}%  ${r.drops}`);
    }
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    topo.destroy();
    rmSync(TRAFGEN_CONF, { force: true });
    for (const shm of [SHM, FT_SHM]) {
      try { execFileSync('node', [NFQLB, 'delete', `--shm=${shm}`]); } catch { /* not created */ }
    }
  }
}
