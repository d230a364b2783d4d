// Small-UDP generators for the UDP rows, and the measurement that picks one.
//
// Candidates, all sending 60-byte frames (18 bytes of UDP payload) from FLOWS source ports to
// port 9 on GEN_CPU: trafgen (netsniff-ng: a PF_PACKET TX ring, qdisc bypassed), our AF_XDP
// transmitter (udp-blaster.ts, copy mode on veth) and our sendmmsg generator (udp-flood.c,
// connected UDP sockets, the kind the reference's lab figure came from). Each floods the same
// sink — the router drops the packets in raw PREROUTING — and the one that sends the most
// packets per second of its own CPU time drives every UDP row (BENCH_GEN=<name> forces one).

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTopology, routerAddr, type Topology, testerAddr } from '../lab/topology.js';
import { GEN_CPU, measureFlood, onCpu, printRows, type Row } from './measure.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
export const UDP_PAYLOAD = 18; // + 8 UDP + 20 IPv4 + 14 Ethernet = the 60-byte minimum frame
export const FLOWS = 64;
const SPORT = 10000; // flows use source ports SPORT..SPORT+FLOWS-1
const PREFIX = 'tbn-g-';
const SINK = '192.168.1.250'; // no such host: the router drops it before routing

/** The tester's eth1 sends through router 1 to `dst`. */
export interface Target {
  topo: Topology;
  dst: string;
}

export interface Generator {
  name: string;
  argv(t: Target): string[];
}

const routerMac = (t: Target): string => t.topo.exec(t.topo.ns.router(1), ['cat', '/sys/class/net/eth2/address']).trim();

export const GENERATORS: readonly Generator[] = [
  {
    name: 'trafgen',
    // One worker process (--cpus 1), which trafgen itself binds to CPU 0: GEN_CPU must stay 0.
    argv: (t) => [
      'trafgen',
      '--dev',
      'eth1',
      '--cpus',
      '1',
      '--no-cpu-stats',
      `{ eth(da=${routerMac(t)}), ipv4(saddr=${testerAddr(4)}, daddr=${t.dst}, ttl=64), ` +
        `udp(sp=dinc(${SPORT}, ${SPORT + FLOWS - 1}), dp=9), fill(0x00, ${UDP_PAYLOAD}) }`,
    ],
  },
  {
    name: 'AF_XDP',
    argv: (t) => ['node', `${ROOT}dist/src/bench/udp-blaster.js`, 'eth1', routerMac(t), testerAddr(4), t.dst],
  },
  {
    name: 'sendmmsg',
    argv: (t) => [`${ROOT}build/udp-flood`, t.dst, String(FLOWS), String(UDP_PAYLOAD)],
  },
];

/** Starts a generator on GEN_CPU in the tester, as a process group of its own (trafgen forks). */
export function startGenerator(g: Generator, t: Target): ChildProcess {
  return t.topo.spawn(t.topo.ns.tester, onCpu(GEN_CPU, g.argv(t)), { stdio: 'ignore', detached: true });
}

/** Measures every candidate into the same sink, prints the figures and returns the pick. */
export async function pickGenerator(): Promise<Generator> {
  const forced = process.env.BENCH_GEN;
  if (forced !== undefined && !GENERATORS.some((g) => g.name === forced)) {
    throw new Error(`BENCH_GEN=${forced}: one of ${GENERATORS.map((g) => g.name).join(', ')}`);
  }
  const topo = createTopology({ prefix: PREFIX, nvm: 1, nrouters: 1 });
  const rows: Row[] = [];
  try {
    topo.ip(topo.ns.tester, [`route add 192.168.1.0/24 via ${routerAddr(1, 2, 4)}`]);
    topo.exec(topo.ns.router(1), ['iptables', '-t', 'raw', '-A', 'PREROUTING', '-d', SINK, '-j', 'DROP']);
    for (const g of GENERATORS) {
      const gen = startGenerator(g, { topo, dst: SINK });
      rows.push(await measureFlood({ topo, lb: null, gen }, g.name));
    }
  } finally {
    topo.destroy();
  }
  const cost = (r: Row): number => r.genUs ?? Infinity;
  const best = rows.reduce((a, b) => (cost(b) < cost(a) ? b : a));
  const pick = GENERATORS.find((g) => g.name === (forced ?? best.path))!;
  console.log(
    `\nGenerators on cpu${GEN_CPU}, ${FLOWS} flows of ${UDP_PAYLOAD + 42}-byte UDP frames into a router that drops them; ` +
      `fastest per core (least generator CPU per packet): ${best.path}${forced ? `; BENCH_GEN=${forced} used` : ''}`,
  );
  printRows(rows, null);
  return pick;
}
