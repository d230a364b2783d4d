// xdplb against kernel forwarding on the same namespace path, in one run: tester → router
// vm-201 → server vm-001. Kernel forwarding sends to the server's address; xdplb (native and
// generic XDP, AF_XDP out) to the VIP, which has no route on the router: only xdplb delivers
// it. "kernel fwd, XDP_PASS" is kernel forwarding with xdplb's program attached (non-VIP
// packets pass). "xdplb --offload" forwards in XDP (xdplb_forward), its redirect into eth1 made
// possible by GRO on that veth's peer, turned on just before its row. TCP: iperf2, one stream,
// with the veth offloads on and off.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTopology, routerAddr, serverAddr, type Topology, VIP } from '../lab/topology.js';
import { FLOWS, type Generator, startGenerator, UDP_PAYLOAD } from './generators.js';
import { GEN_CPU, LB_CPU, type Lb, measure, measureFlood, onCpu, printRows, type Row, SECONDS, startLb, stopLb } from './measure.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const XDPLB = `${ROOT}bin/xdplb`;
const PREFIX = 'tbn-x-';
const SHM = 'tbn-xdplb';

function start(topo: Topology, mode: 'native' | 'generic', offload = false): Promise<Lb> {
  const argv = ['node', XDPLB, 'lb', '--idev=eth2', '--edev=eth1', `--mode=${mode}`, `--shm=${SHM}`, `--vip=${VIP[4]}`];
  if (offload) {
    topo.enableXdpRedirect(1);
    argv.push('--offload');
  }
  return startLb(topo, topo.ns.router(1), argv, 'xdplb forwarding');
}

/** The lb's losses from its final counters (the "xdplb stopped" log line), as a note for `row`. */
async function stopNoting(lb: Lb, row: Row): Promise<void> {
  const line = (await stopLb(lb)).split('\n').find((l) => l.includes('xdplb stopped'));
  const s = line ? (JSON.parse(line) as Record<string, number>) : {};
  for (const k of ['kernelRxRingFull', 'kernelFillRingEmpty', 'kernelRxDropped', 'txRingFull', 'checksums', 'declined']) {
    if (s[k]) row.notes.push(`${k} ${s[k]}`);
  }
}

export async function benchXdp(gen: Generator): Promise<void> {
  const topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  let lb: Lb | null = null;
  try {
    const server = topo.ns.server(1);
    // The sink: count on eth1, drop before any socket lookup.
    topo.exec(server, ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-p', 'udp', '--dport', '9', '-j', 'DROP']);
    topo.spawn(server, onCpu(GEN_CPU, ['iperf', '-s']), { stdio: 'ignore' });
    topo.setRouterVipRoute(1, []);
    topo.ip(topo.ns.tester, [`route replace 192.168.1.0/24 via ${routerAddr(1, 2, 4)}`]);
    const serverMac = topo.exec(server, ['cat', '/sys/class/net/eth1/address']).trim();
    execFileSync('node', [XDPLB, 'init', `--shm=${SHM}`]);
    execFileSync('node', [XDPLB, 'activate', `--shm=${SHM}`, `--mac=${serverMac}`, '0']);

    const udp = (path: string, dst: string): Promise<Row> =>
      measureFlood({ topo, lb: lb?.proc ?? null, gen: startGenerator(gen, { topo, dst }) }, path);
    const tcp = (path: string, dst: string): Promise<Row> =>
      measure({ topo, lb: lb?.proc ?? null }, path, true, async () => {
        const csv = topo.exec(topo.ns.tester, onCpu(GEN_CPU, ['iperf', '-c', dst, '-t', String(SECONDS), '-y', 'C'])).trim();
        return Number(csv.split('\n').at(-1)!.split(',').at(-1)) / 1e9;
      });

    const rows: Row[] = [await udp('kernel forwarding (no XDP)', serverAddr(1, 4))];
    lb = await start(topo, 'native');
    const native = await udp('xdplb native', VIP[4]);
    rows.push(native, await udp('kernel fwd, XDP_PASS native', serverAddr(1, 4)));
    await stopNoting(lb, native);
    lb = await start(topo, 'generic');
    const generic = await udp('xdplb generic', VIP[4]);
    rows.push(generic);
    await stopNoting(lb, generic);
    lb = await start(topo, 'native', true);
    const offload = await udp('xdplb --offload native', VIP[4]);
    rows.push(offload);
    await stopNoting(lb, offload);
    lb = null;

    const tcpRows: Row[][] = [];
    for (const offloads of [true, false]) {
      topo.setOffloads(offloads);
      const kernel = await tcp('kernel forwarding (no XDP)', serverAddr(1, 4));
      lb = await start(topo, 'native');
      const row = await tcp('xdplb native', VIP[4]);
      // What any native XDP program on the veth costs TCP (the skb is copied into an XDP buffer).
      const pass = await tcp('kernel fwd, XDP_PASS native', serverAddr(1, 4));
      await stopNoting(lb, row);
      lb = await start(topo, 'native', true);
      const offload = await tcp('xdplb --offload native', VIP[4]);
      await stopNoting(lb, offload);
      lb = null;
      tcpRows.push([kernel, row, pass, offload]);
    }

    console.log(
      `\nxdplb: kernel forwarding to the server vs the VIP through xdplb; generator and iperf on cpu${GEN_CPU}, ` +
        `lb on cpu${LB_CPU}; ${SECONDS} s per row; ratios against 'xdplb native'`,
    );
    console.log(`${UDP_PAYLOAD + 42}-byte UDP, ${FLOWS} flows from ${gen.name} (kpps):`);
    printRows(rows, native);
    for (const [i, r] of tcpRows.entries()) {
      console.log(`TCP, iperf2, 1 stream, veth offloads ${i === 0 ? 'on' : 'off'} (received: kpps of segments):`);
      printRows(r, r[1]!);
    }
  } finally {
    if (lb) await stopLb(lb);
    topo.destroy();
    try {
      execFileSync('rm', ['-f', `/dev/shm/${SHM}`]);
    } catch {
      /* not created */
    }
  }
}
