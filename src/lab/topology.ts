// The xcluster "load-balancer" network, built from network namespaces instead of VMs.
//
//   tester vm-221 ──eth1── [net2 bridge] ──eth2── routers vm-201..
//                          routers ──eth1── [net1 bridge] ──eth1── servers vm-001..
//    192.168.2.221          192.168.2.0/24        .201.. on both nets       192.168.1.0/24         192.168.1.1..
//
// IPv6 mirrors IPv4 as 1000::1:192.168.<net>.<host>/120. Servers hold the VIPs 10.0.0.0/32
// and 1000::/128 on lo (direct server return: they answer the tester straight from the VIP
// via router 1). The tester sources traffic from anywhere in 50.0.0.0/16 and 2000::/112
// (AnyIP local routes), and the routers route those ranges back to it.
//
// Each bridge lives in its own "switch" namespace, so the root namespace holds nothing:
// every namespace, and every device outside the vm namespaces, is named with the lab
// prefix, and deleting the namespaces deletes all of it (veth pairs die with either end).

import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { inNs, ipBatch, listNs, removeNs, spawnInNs, sysctlInNs } from './netns.js';

export type Family = 4 | 6;

/** The VIP the servers hold on lo, per family. */
export const VIP: Readonly<Record<Family, string>> = { 4: '10.0.0.0', 6: '1000::' };
/** The VIP range the tester routes towards the routers (as in the original lab). */
export const VIP_NET: Readonly<Record<Family, string>> = { 4: '10.0.0.0/24', 6: '1000::/120' };
/** Source ranges the tester's clients may bind (AnyIP). */
export const CLIENT_CIDR: Readonly<Record<Family, string>> = { 4: '50.0.0.0/16', 6: '2000::/112' };

export const MAX_SERVERS = 200; // hosts .1-.200; .201-.220 are routers, .221 the tester
export const MAX_ROUTERS = 20;
const TESTER_HOST = 221;
const ROUTER_BASE = 200;

export interface TopologyOptions {
  /** Namespace prefix, e.g. `lblab-`; at most 10 characters so device names fit IFNAMSIZ. */
  prefix: string;
  /** Number of servers, vm-001..vm-<nvm>. */
  nvm: number;
  /** Number of routers (load-balancers), vm-201..vm-<200+nrouters>. */
  nrouters: number;
  /** MTU of every veth and bridge (default: the kernel's 1500). */
  mtu?: number;
  /** Segmentation/checksum offloads on the veths (default true, the veth default). */
  offloads?: boolean;
  /** Run IPv6 duplicate address detection (default false: addresses usable at once). */
  dad?: boolean;
}

/** Address of `host` on net 1 or 2 (`192.168.<net>.<host>` or `1000::1:192.168.<net>.<host>`). */
export function hostAddr(net: 1 | 2, host: number, family: Family): string {
  return family === 4 ? `192.168.${net}.${host}` : `1000::1:192.168.${net}.${host}`;
}
/** Server n's address on net 1. */
export function serverAddr(n: number, family: Family): string {
  return hostAddr(1, n, family);
}
/** Router i's (1-based) address on net 1 (towards the servers) or net 2 (towards the tester). */
export function routerAddr(i: number, net: 1 | 2, family: Family): string {
  return hostAddr(net, ROUTER_BASE + i, family);
}
export function testerAddr(family: Family): string {
  return hostAddr(2, TESTER_HOST, family);
}
/** Server n's MAC address on net 1 (its eth1): where an L2 DSR load-balancer (xdplb) sends its packets. */
export function serverMac(topo: Topology, n: number): string {
  return topo.exec(topo.ns.server(n), ['cat', '/sys/class/net/eth1/address']).trim();
}
/** The VM name the original lab uses for a host number: vm-001, vm-201, vm-221. */
export function vmName(host: number): string {
  return `vm-${String(host).padStart(3, '0')}`;
}

export interface LabNamespaces {
  readonly tester: string;
  server(n: number): string;
  router(i: number): string;
  /** The switch namespace holding net 1's or net 2's bridge. */
  net(k: 1 | 2): string;
  /** Every namespace of the lab, switches last. */
  all(): string[];
}

export interface Topology {
  readonly prefix: string;
  readonly nvm: number;
  readonly nrouters: number;
  readonly ns: LabNamespaces;
  /** Runs a command in a namespace and returns its stdout (throws on failure). */
  exec(ns: string, argv: readonly string[], input?: string): string;
  /** Starts a long-running command in a namespace; end it by PID. */
  spawn(ns: string, argv: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Runs iproute2 commands (without the leading `ip`) in a namespace with one exec. */
  ip(ns: string, lines: readonly string[]): void;
  /** Routes the tester's VIP range (v4 and v6) via these routers: one = plain route, several = ECMP. */
  setTesterRoute(routers: readonly number[]): void;
  /** Routes the VIP range (v4 and v6) on router i to these servers (ECMP when several); [] removes it. */
  setRouterVipRoute(router: number, servers: readonly number[]): void;
  /**
   * Adds a host of its own on net `net` (host number 222..254, beside the lab's vms: e.g. an etcd
   * member), IPv4 and IPv6; returns its namespace. Removed with the lab like every other.
   */
  addHost(host: number, net: 1 | 2): string;
  /** Turns tso/gso/gro/tx-checksum offloads on or off on both ends of every veth. */
  setOffloads(on: boolean): void;
  /**
   * Lets router i's XDP program redirect frames into its eth1 (`xdplb lb --offload` in native
   * mode): a veth takes XDP frames only when its peer runs NAPI, which GRO on the peer (the
   * switch port) turns on. After setOffloads(false), which turns it off again.
   */
  enableXdpRedirect(router: number): void;
  /** Removes every namespace of the lab (and with them every device and process in them). */
  destroy(): void;
}

/** Route line for `ip -batch`: plain `via` for one gateway, multipath for several. */
function routeVia(dest: string, gateways: readonly string[]): string {
  if (gateways.length === 1) return `route replace ${dest} via ${gateways[0]}`;
  return `route replace ${dest} ${gateways.map((g) => `nexthop via ${g}`).join(' ')}`;
}

function checkOptions(o: TopologyOptions): void {
  if (!/^[a-z][a-z0-9-]{2,9}$/.test(o.prefix)) {
    throw new RangeError(`prefix '${o.prefix}': 3-10 characters [a-z0-9-], starting with a letter`);
  }
  if (!Number.isInteger(o.nvm) || o.nvm < 1 || o.nvm > MAX_SERVERS) {
    throw new RangeError(`nvm ${o.nvm}: must be 1..${MAX_SERVERS}`);
  }
  if (!Number.isInteger(o.nrouters) || o.nrouters < 1 || o.nrouters > MAX_ROUTERS) {
    throw new RangeError(`nrouters ${o.nrouters}: must be 1..${MAX_ROUTERS}`);
  }
  if (o.mtu !== undefined && (!Number.isInteger(o.mtu) || o.mtu < 1280 || o.mtu > 65535)) {
    throw new RangeError(`mtu ${o.mtu}: must be 1280..65535`);
  }
}

function namespaces(prefix: string, nvm: number, nrouters: number): LabNamespaces {
  const server = (n: number): string => prefix + vmName(n);
  const router = (i: number): string => prefix + vmName(ROUTER_BASE + i);
  const net = (k: 1 | 2): string => `${prefix}net${k}`;
  const tester = prefix + vmName(TESTER_HOST);
  return {
    tester,
    server,
    router,
    net,
    all: () => [
      tester,
      ...Array.from({ length: nrouters }, (_, i) => router(i + 1)),
      ...Array.from({ length: nvm }, (_, i) => server(i + 1)),
      net(1),
      net(2),
    ],
  };
}

/** One vm's attachment: its interface `dev` on bridge `net` with host number `host`. */
interface Port {
  vmNs: string;
  dev: 'eth1' | 'eth2';
  net: 1 | 2;
  host: number;
}

// Kernel defaults that would break the lab, set before the veths arrive so that the moved-in
// devices take them from `default` (a new namespace copies the root's IPv4 values, so set them
// all): reverse-path filtering drops DSR replies and AnyIP-sourced packets; DAD keeps even the
// link-local addresses tentative for ~2 s, which stalls the first IPv6 neighbour discovery.
// L4 multipath hashing lets ECMP spread the flows of one source address over next-hops.
function baseSysctls(dad: boolean): string[] {
  const accept = dad ? 1 : 0;
  return [
    'net.ipv4.conf.all.rp_filter=0',
    'net.ipv4.conf.default.rp_filter=0',
    'net.ipv4.conf.lo.rp_filter=0',
    `net.ipv6.conf.all.accept_dad=${accept}`,
    `net.ipv6.conf.default.accept_dad=${accept}`,
    'net.ipv4.fib_multipath_hash_policy=1',
    'net.ipv6.fib_multipath_hash_policy=1',
  ];
}

/**
 * Creates the lab. Leftovers of an earlier run with the same prefix (a crash) are removed
 * first; if creation fails half-way, everything created is removed before the error is thrown.
 */
export function createTopology(o: TopologyOptions): Topology {
  checkOptions(o);
  const { prefix, nvm, nrouters } = o;
  const ns = namespaces(prefix, nvm, nrouters);
  const v6flags = o.dad ? '' : ' nodad';
  const mtu = o.mtu === undefined ? '' : ` mtu ${o.mtu}`;
  const routers = Array.from({ length: nrouters }, (_, k) => k + 1);
  const servers = Array.from({ length: nvm }, (_, k) => k + 1);
  const ports: Port[] = [
    ...servers.map((n): Port => ({ vmNs: ns.server(n), dev: 'eth1', net: 1, host: n })),
    ...routers.map((i): Port => ({ vmNs: ns.router(i), dev: 'eth1', net: 1, host: ROUTER_BASE + i })),
    ...routers.map((i): Port => ({ vmNs: ns.router(i), dev: 'eth2', net: 2, host: ROUTER_BASE + i })),
    { vmNs: ns.tester, dev: 'eth1', net: 2, host: TESTER_HOST },
  ];
  // The switch-side end of a port: prefix + vm001 (unique within its bridge's namespace).
  const switchPort = (p: Port): string => `${prefix}vm${String(p.host).padStart(3, '0')}`;
  const bridge = `${prefix}br`;
  const base = baseSysctls(o.dad === true);
  /** `ip -batch` lines in a switch namespace: the port's veth pair, its vm end moved out at birth. */
  const portLines = (p: Port): string[] => [
    `link add ${switchPort(p)}${mtu} type veth peer name ${p.dev} netns ${p.vmNs}${mtu}`,
    `link set ${switchPort(p)} master ${bridge} up`,
  ];
  // Everything a vm needs on its own interfaces (lo first: local routes need it up).
  const addrLines = (vmNs: string): string[] => [
    'link set lo up',
    ...ports
      .filter((p) => p.vmNs === vmNs)
      .flatMap((p) => [
        `link set ${p.dev} up`,
        `addr add ${hostAddr(p.net, p.host, 4)}/24 dev ${p.dev}`,
        `addr add ${hostAddr(p.net, p.host, 6)}/120 dev ${p.dev}${v6flags}`,
      ]),
  ];

  const topo: Topology = {
    prefix,
    nvm,
    nrouters,
    ns,
    exec: (n, argv, input) => inNs(n, argv, input),
    spawn: (n, argv, opts) => spawnInNs(n, argv, opts),
    ip: (n, lines) => ipBatch(n, lines),
    setTesterRoute(via) {
      if (via.length === 0) throw new RangeError('setTesterRoute: no routers');
      ipBatch(ns.tester, [
        routeVia(
          VIP_NET[4],
          via.map((i) => routerAddr(i, 2, 4)),
        ),
        routeVia(
          VIP_NET[6],
          via.map((i) => routerAddr(i, 2, 6)),
        ),
      ]);
    },
    setRouterVipRoute(router, to) {
      if (to.length === 0) {
        // `ip -force`-like tolerance: a missing route is what the caller wants.
        for (const dest of [VIP_NET[4], VIP_NET[6]]) {
          try {
            ipBatch(ns.router(router), [`route del ${dest}`]);
          } catch {
            /* not there */
          }
        }
        return;
      }
      ipBatch(ns.router(router), [
        routeVia(
          VIP_NET[4],
          to.map((n) => serverAddr(n, 4)),
        ),
        routeVia(
          VIP_NET[6],
          to.map((n) => serverAddr(n, 6)),
        ),
      ]);
    },
    addHost(host, net) {
      if (!Number.isInteger(host) || host <= TESTER_HOST || host > 254)
        throw new RangeError(`addHost: host ${host} is not ${TESTER_HOST + 1}..254`);
      const p: Port = { vmNs: prefix + vmName(host), dev: 'eth1', net, host };
      if (ports.some((q) => q.vmNs === p.vmNs)) throw new RangeError(`addHost: ${p.vmNs} exists`);
      ipBatch(null, [`netns add ${p.vmNs}`]);
      ports.push(p);
      sysctlInNs(p.vmNs, base);
      ipBatch(ns.net(net), portLines(p));
      ipBatch(p.vmNs, addrLines(p.vmNs));
      return p.vmNs;
    },
    setOffloads(on) {
      const state = on ? 'on' : 'off';
      const k = (dev: string): string[] => ['-K', dev, 'tso', state, 'gso', state, 'gro', state, 'tx', state];
      // ethtool has no batch mode; one shell per namespace keeps it to ~nvm+nrouters+3 execs.
      const byNs = new Map<string, string[]>();
      for (const p of ports) {
        byNs.set(p.vmNs, [...(byNs.get(p.vmNs) ?? []), p.dev]);
        byNs.set(ns.net(p.net), [...(byNs.get(ns.net(p.net)) ?? []), switchPort(p)]);
      }
      for (const [n, devs] of byNs) {
        inNs(n, ['sh', '-ec', devs.map((d) => `ethtool ${k(d).join(' ')}`).join('\n')]);
      }
    },
    enableXdpRedirect(router) {
      const port = ports.find((p) => p.vmNs === ns.router(router) && p.net === 1)!;
      inNs(ns.net(1), ['ethtool', '-K', switchPort(port), 'gro', 'on']);
    },
    destroy: () => destroyLab(prefix),
  };

  destroyLab(prefix);
  try {
    ipBatch(
      null,
      ns.all().map((n) => `netns add ${n}`),
    );
    // arp_ignore/arp_announce: the usual DSR hygiene, so a server never claims the VIP on eth1.
    for (const n of servers) {
      sysctlInNs(ns.server(n), [...base, 'net.ipv4.conf.all.arp_ignore=1', 'net.ipv4.conf.all.arp_announce=2']);
    }
    for (const i of routers) {
      sysctlInNs(ns.router(i), [...base, 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    }
    // The tester binds any source in the client ranges: AnyIP local routes for receiving,
    // ip_nonlocal_bind because IPv6 bind() checks addresses, not local routes.
    sysctlInNs(ns.tester, [...base, 'net.ipv4.ip_nonlocal_bind=1', 'net.ipv6.ip_nonlocal_bind=1']);

    // Bridges and veth pairs, created inside the switch namespaces; the vm ends move out at birth.
    for (const net of [1, 2] as const) {
      const lines = [`link add ${bridge}${mtu} type bridge mcast_snooping 0`, `link set ${bridge} up`];
      for (const p of ports.filter((q) => q.net === net)) lines.push(...portLines(p));
      ipBatch(ns.net(net), lines);
    }

    for (const n of servers) {
      ipBatch(ns.server(n), [
        ...addrLines(ns.server(n)),
        `addr add ${VIP[4]}/32 dev lo`,
        `addr add ${VIP[6]}/128 dev lo`,
        `route add default via ${routerAddr(1, 1, 4)}`,
        `route add default via ${routerAddr(1, 1, 6)}`,
      ]);
    }
    for (const i of routers) {
      ipBatch(ns.router(i), [
        ...addrLines(ns.router(i)),
        `route add ${CLIENT_CIDR[4]} via ${testerAddr(4)}`,
        `route add ${CLIENT_CIDR[6]} via ${testerAddr(6)}`,
      ]);
    }
    ipBatch(ns.tester, [...addrLines(ns.tester), `route add local ${CLIENT_CIDR[4]} dev lo`, `route add local ${CLIENT_CIDR[6]} dev lo`]);
    topo.setTesterRoute([1]);
    if (o.offloads === false) topo.setOffloads(false);
  } catch (e) {
    destroyLab(prefix);
    throw e;
  }
  return topo;
}

/**
 * Removes every namespace whose name starts with `prefix`, killing the processes in them.
 * Needs nothing but the prefix, so it also cleans up after a crashed run.
 */
export function destroyLab(prefix: string): void {
  removeNs(prefix);
}

/** Namespaces that exist with this prefix (empty after `destroyLab`). */
export function labNamespaces(prefix: string): string[] {
  return listNs(prefix);
}
