// The load-balancers of the lab, set up on every router the way the original xcluster
// load-balancer overlay set up its router VMs: nfqlb (NFQUEUE), kernel ECMP, xdplb (AF_XDP)
// and IPVS. Each one can take servers out of the load-balancing and put them back (scaling).
import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './netns.js';
import { addFwmarkRoutes, fwmarkTable, lbFwmark, nfqueueRule, serverFwmark } from './rules.js';
import { type Family, routerAddr, serverAddr, serverMac, type Topology, VIP, VIP_NET } from './topology.js';

export type LbKind = 'nfqueue' | 'ecmp' | 'xdp' | 'ipvs';

/** What a load-balancer needs from the running lab. */
export interface LabHandle {
  readonly topo: Topology;
  /**
   * Starts a long-running process in `ns` with its output in the lab's log file `name`.log;
   * resolves once the output contains `ready`.
   */
  daemon(ns: string, argv: readonly string[], name: string, ready: string): Promise<ChildProcess>;
}

export interface LoadBalancer {
  readonly kind: LbKind;
  /** Sets up every router and starts the load-balancer processes. */
  start(): Promise<void>;
  /**
   * Takes servers (1-based numbers) out of the load-balancing (scale-in) or puts them back.
   * `now`: the servers are gone (stopped), so nothing drains to them (nfqlb `deactivate --now`).
   */
  setServers(servers: readonly number[], active: boolean, now?: boolean): void;
  /** Shell lines showing how to look at and change the load-balancer by hand. */
  manual(): string[];
  /** nfqueue: signals router i's lb process; resolves when it has exited. */
  stopRouter?(router: number, signal: NodeJS.Signals): Promise<void>;
  /** nfqueue: starts router i's lb process again (after stopRouter). */
  startRouter?(router: number): Promise<void>;
}

export interface NfqueueOptions {
  /** Only new connections go to the queue; conntrack's connmark steers the rest (xcluster_SYN_ONLY). */
  synOnly: boolean;
  /** `nfqlb lb --announce=` device for a routing daemon (the BGP tier), or none. */
  announce?: string;
  /** nfqlb --conntrack entries per queue (0: stateless); scale-in then drains. */
  conntrack: number;
  /**
   * The targets come from a registry (`lblab --registry`): starts router i's follower, which
   * publishes them into table `shm`, in place of the lab's activate (and scaling by deactivate).
   */
  follow?: (router: number) => Promise<void>;
}

/** Kernel resilient next-hop groups instead of hash-threshold multipath (ECMP). */
export interface EcmpOptions {
  resilient: boolean;
}

/** The checkout root (above src/ and dist/src/): where bin/ and build/ are. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
}

/** `[node, bin/<tool>]`: append the arguments. */
export const binArgv = (tool: 'nfqlb' | 'xdplb'): string[] => [process.execPath, join(repoRoot(), 'bin', tool)];

const routers = (topo: Topology): number[] => Array.from({ length: topo.nrouters }, (_, k) => k + 1);
const servers = (topo: Topology): number[] => Array.from({ length: topo.nvm }, (_, k) => k + 1);
/** `ip route` argument for the given servers on net 1: `via X`, or multipath next-hops. */
const nexthops = (list: readonly number[], family: Family): string =>
  list.length === 1 ? `via ${serverAddr(list[0]!, family)}` : list.map((n) => `nexthop via ${serverAddr(n, family)}`).join(' ');

/** Shared memory names are global (/dev/shm is not per namespace): one table per router. */
export function shmName(topo: Topology, what: 'nfqlb' | 'nfqlbLb' | 'ftshm' | 'xdplb', router: number): string {
  return `${topo.prefix}${what}-${200 + router}`;
}

/** Removes the shared memory tables of the lab with this prefix (also after a crash). */
export function removeLabShm(prefix: string): void {
  if (prefix.length < 3) throw new Error(`removeLabShm: prefix '${prefix}' is too short to be safe`);
  for (const f of readdirSync('/dev/shm')) if (f.startsWith(prefix)) rmSync(join('/dev/shm', f), { force: true });
}

// ---------------------------------------------------------------------------------------
// NFQUEUE: nfqlb on every router, exactly as the original router setup (REFERENCE-CLI.md).

const NFQUEUE_NUM = 2;
/** The tun device nfqlb re-injects stored fragments through. */
const TUN = 'nfqlb0';

/** iptables-restore input for one family: the VIP chain, optionally the SYN-only connmark chains. */
function nfqueueRules(family: Family, synOnly: boolean): string {
  const vipNet = VIP_NET[family];
  const lines: string[] = [];
  // Without SYN-only every packet goes to the queue, and conntrack would only get in the way
  // (it reassembles fragments and costs time); SYN-only needs it to know ESTABLISHED.
  if (!synOnly) lines.push('*raw', '-A PREROUTING -j NOTRACK', 'COMMIT');
  lines.push('*mangle', ':VIP - [0:0]');
  if (synOnly) {
    lines.push(
      ':ESTABLISHED - [0:0]',
      ':VIPOUT - [0:0]',
      '-A VIP -m conntrack --ctstate ESTABLISHED -j ESTABLISHED',
      '-A ESTABLISHED -j CONNMARK --restore-mark',
      '-A ESTABLISHED -j ACCEPT',
      '-A VIPOUT -m conntrack --ctstate NEW -j CONNMARK --save-mark',
      `-A POSTROUTING -d ${vipNet} -j VIPOUT`,
    );
  }
  // Fragments nfqlb stored come back through its tun device and must be queued again.
  lines.push(
    ['-A', 'VIP', ...nfqueueRule({ queue: NFQUEUE_NUM })].join(' '),
    `-A PREROUTING -i eth2 -d ${vipNet} -j VIP`,
    `-A PREROUTING -i ${TUN} -d ${vipNet} -j VIP`,
    'COMMIT',
  );
  return `${lines.join('\n')}\n`;
}

export function nfqueueLb(lab: LabHandle, o: NfqueueOptions): LoadBalancer {
  const { topo } = lab;
  const nfqlb = (router: number, args: string[]): string => topo.exec(topo.ns.router(router), [...binArgv('nfqlb'), ...args]);
  const procs = new Map<number, ChildProcess>();
  let starts = 0;
  const startLb = async (i: number): Promise<void> => {
    const ns = topo.ns.router(i);
    // A restart logs to a file of its own: the ready line of the first run is still in the old one.
    const log = `${ns}-nfqlb${starts++ < topo.nrouters ? '' : `-${starts}`}`;
    procs.set(
      i,
      await lab.daemon(
        ns,
        [
          ...binArgv('nfqlb'),
          'lb',
          `--tshm=${shmName(topo, 'nfqlb', i)}`,
          `--lbshm=${shmName(topo, 'nfqlbLb', i)}`,
          `--tun=${TUN}`,
          `--ft_shm=${shmName(topo, 'ftshm', i)}`,
          `--queue=${NFQUEUE_NUM}`,
          ...(o.announce ? [`--announce=${o.announce}`] : []),
          ...(o.conntrack > 0 ? [`--conntrack=${o.conntrack}`] : []),
        ],
        log,
        'serving queue',
      ),
    );
  };
  return {
    kind: 'nfqueue',
    async start() {
      // The followers make the tables (the node start-ups overlap).
      if (o.follow) await Promise.all(routers(topo).map(o.follow));
      for (const i of routers(topo)) {
        const ns = topo.ns.router(i);
        const shm = shmName(topo, 'nfqlb', i);
        // M=900 as the original (nfqlb rounds it down to the prime 887); N must exceed the highest index.
        if (!o.follow) {
          nfqlb(i, ['init', `--shm=${shm}`, '--M=900', `--N=${Math.max(20, topo.nvm + 1)}`]);
          for (const n of servers(topo)) nfqlb(i, ['activate', `--shm=${shm}`, `--index=${n}`, String(serverFwmark(n))]);
        }
        // The LB tier: a fragment goes to the LB that owns its addresses (fwmark 200+j), which
        // holds the flow's first fragment; an LB never forwards with its own fwmark.
        const lbShm = shmName(topo, 'nfqlbLb', i);
        nfqlb(i, ['init', `--shm=${lbShm}`, `--ownfw=${lbFwmark(i)}`, '--M=400', `--N=${Math.max(10, topo.nrouters + 1)}`]);
        for (const j of routers(topo)) nfqlb(i, ['activate', `--shm=${lbShm}`, `--index=${j}`, String(lbFwmark(j))]);
        addFwmarkRoutes(topo, ns, (family) => [
          ...servers(topo).map((n) => [serverFwmark(n), serverAddr(n, family)] as const),
          ...routers(topo)
            .filter((j) => j !== i)
            .map((j) => [lbFwmark(j), routerAddr(j, 2, family)] as const),
        ]);
        topo.ip(ns, [`tuntap add dev ${TUN} mode tun`, `link set ${TUN} up`]);
        // Handing a fragment to another LB sends it out of the interface it came in by: no redirects.
        topo.exec(ns, ['sysctl', '-qw', 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.eth2.send_redirects=0']);
        topo.exec(ns, ['iptables-restore', '--noflush'], nfqueueRules(4, o.synOnly));
        topo.exec(ns, ['ip6tables-restore', '--noflush'], nfqueueRules(6, o.synOnly));
        await startLb(i);
      }
    },
    stopRouter(i, signal) {
      const p = procs.get(i);
      if (p === undefined || p.exitCode !== null || p.signalCode !== null) return Promise.reject(new Error(`router ${i}: no lb running`));
      const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      p.kill(signal);
      return exited;
    },
    startRouter: startLb,
    setServers(list, active, now = false) {
      if (o.follow) throw new Error('nfqueue: the targets follow the registry: scale through the sidecars');
      for (const i of routers(topo)) {
        const shm = shmName(topo, 'nfqlb', i);
        for (const n of list) {
          nfqlb(
            i,
            active
              ? ['activate', `--shm=${shm}`, `--index=${n}`, String(serverFwmark(n))]
              : ['deactivate', `--shm=${shm}`, `--index=${n}`, ...(now ? ['--now'] : [])],
          );
        }
      }
    },
    manual() {
      const cli = binArgv('nfqlb').join(' ');
      const shm = shmName(topo, 'nfqlb', 1);
      return [
        `# On a router (${topo.ns.router(1)}); nfqlb ${o.synOnly ? 'gets only new connections (SYN-only)' : 'gets every VIP packet'}` +
          `${o.conntrack > 0 ? ', with conntrack' : ''}:`,
        `${cli} show --shm=${shm}`,
        `${cli} deactivate --shm=${shm} --index=1     # scale in server 1${o.conntrack > 0 ? ' (drains; --now removes at once)' : ''}`,
        `${cli} activate --shm=${shm} --index=1 ${serverFwmark(1)}   # and back`,
        `${cli} show --shm=${shmName(topo, 'nfqlbLb', 1)}   # the LB tier`,
        `${cli} stats --ft_shm=${shmName(topo, 'ftshm', 1)}   # fragment table`,
        `iptables -t mangle -vnL; ip rule; ip route show table ${serverFwmark(1)}`,
      ];
    },
  };
}

// ---------------------------------------------------------------------------------------
// ECMP: the kernel's multipath route to the VIP range on every router; scaling changes it.

// Resilient groups: next-hop n (server n) has id n for IPv4 and 1000+n for IPv6, the groups
// RESILIENT_GROUP[family]. Removing a member moves only its buckets; an added member gets only
// buckets idle for idle_timer s (unbalanced_timer 0: never forced), so no flow moves to it.
const RESILIENT_GROUP: Readonly<Record<Family, number>> = { 4: 4000, 6: 6000 };
const RESILIENT_TYPE = 'type resilient buckets 128 idle_timer 10 unbalanced_timer 0';
const nexthopId = (n: number, family: Family): number => (family === 4 ? n : 1000 + n);

/** `ip nexthop` lines that set family's resilient group to the given servers. */
function resilientGroup(list: readonly number[], family: Family): string {
  return `nexthop replace id ${RESILIENT_GROUP[family]} group ${list.map((n) => nexthopId(n, family)).join('/')} ${RESILIENT_TYPE}`;
}

export function ecmpLb(lab: LabHandle, o: EcmpOptions): LoadBalancer {
  const { topo } = lab;
  let active = servers(topo);
  return {
    kind: 'ecmp',
    async start() {
      for (const i of routers(topo)) {
        // Separate machines hash a flow each with a secret of their own, so ECMP routers
        // disagree on the server; namespaces would all agree: hash policy 1 reuses the L4 hash
        // that the tester's socket put on the skb (it survives the veths). Policy 3 hashes the
        // 5-tuple itself (fields 0x37), with a seed per router (net.ipv4's seed serves IPv6 too).
        topo.exec(topo.ns.router(i), [
          'sysctl',
          '-qw',
          `net.ipv4.fib_multipath_hash_seed=${200 + i}`,
          'net.ipv4.fib_multipath_hash_policy=3',
          'net.ipv4.fib_multipath_hash_fields=0x37',
          'net.ipv6.fib_multipath_hash_policy=3',
          'net.ipv6.fib_multipath_hash_fields=0x37',
        ]);
        if (o.resilient) {
          topo.ip(topo.ns.router(i), [
            ...[4, 6].flatMap((f) =>
              servers(topo).map((n) => `nexthop add id ${nexthopId(n, f as Family)} via ${serverAddr(n, f as Family)} dev eth1`),
            ),
            ...[4, 6].map((f) => resilientGroup(active, f as Family)),
            ...[4, 6].map((f) => `route replace ${VIP_NET[f as Family]} nhid ${RESILIENT_GROUP[f as Family]}`),
          ]);
        } else {
          topo.setRouterVipRoute(i, active);
        }
      }
    },
    setServers(list, on) {
      const next = on ? [...new Set([...active, ...list])].sort((a, b) => a - b) : active.filter((n) => !list.includes(n));
      if (next.length === 0) throw new RangeError('ecmp: cannot remove every server (a route needs a next-hop)');
      active = next;
      for (const i of routers(topo)) {
        if (o.resilient)
          topo.ip(
            topo.ns.router(i),
            [4, 6].map((f) => resilientGroup(active, f as Family)),
          );
        else
          topo.ip(
            topo.ns.router(i),
            [4, 6].map((f) => `route change ${VIP_NET[f as Family]} ${nexthops(active, f as Family)}`),
          );
      }
    },
    manual() {
      return [
        `# On a router (${topo.ns.router(1)})` +
          `${o.resilient ? `; resilient groups ${RESILIENT_GROUP[4]} (IPv4), ${RESILIENT_GROUP[6]} (IPv6)` : ''}:`,
        ...(o.resilient ? [`ip nexthop show; ip nexthop bucket show id ${RESILIENT_GROUP[4]}`] : []),
        `ip route show ${VIP_NET[4]}; ip -6 route show ${VIP_NET[6]}`,
        `ip route change ${VIP_NET[4]} ${nexthops(servers(topo).slice(1), 4)}   # scale in server 1`,
      ];
    },
  };
}

// ---------------------------------------------------------------------------------------
// XDP: xdplb on every router, XDP on eth2 (ingress), AF_XDP out on eth1 to the servers' MACs.

/** Why xdplb cannot run here, or null when it can. */
export function xdpUnavailable(): string | null {
  const addon = join(repoRoot(), 'build', 'Release', 'xsk.node');
  if (!existsSync(addon)) return `xdplb's native addon is not built (${addon}): run 'make build' (needs libxdp-dev libbpf-dev)`;
  if (!existsSync(join(repoRoot(), 'dist', 'src', 'cli', 'xdplb.js'))) return "xdplb is not compiled: run 'make ts'";
  return null;
}

export function xdpLb(lab: LabHandle): LoadBalancer {
  const { topo } = lab;
  const xdplb = (router: number, args: string[]): string =>
    topo.exec(topo.ns.router(router), [...binArgv('xdplb'), ...args, `--shm=${shmName(topo, 'xdplb', router)}`]);
  return {
    kind: 'xdp',
    async start() {
      const macs = servers(topo).map((n) => serverMac(topo, n));
      for (const i of routers(topo)) {
        const ns = topo.ns.router(i);
        xdplb(i, ['init']);
        for (const [k, mac] of macs.entries()) xdplb(i, ['activate', `--mac=${mac}`, String(k)]);
        // One socket serves one rx queue: the ingress device must have just one (the original
        // ran `ethtool -L eth2 combined 1`; a veth counts rx and tx channels instead).
        topo.exec(ns, ['ethtool', '-L', 'eth2', 'rx', '1', 'tx', '1']);
        await lab.daemon(
          ns,
          [
            ...binArgv('xdplb'),
            'lb',
            '--idev=eth2',
            '--edev=eth1',
            `--shm=${shmName(topo, 'xdplb', i)}`,
            `--vip=${VIP[4]}`,
            `--vip=${VIP[6]}`,
          ],
          `${ns}-xdplb`,
          'xdplb forwarding',
        );
      }
    },
    setServers(list, active) {
      // xdplb numbers targets from 0: server n is target n-1.
      for (const i of routers(topo)) for (const n of list) xdplb(i, [active ? 'activate' : 'deactivate', String(n - 1)]);
    },
    manual() {
      const cli = `${binArgv('xdplb').join(' ')} --shm=${shmName(topo, 'xdplb', 1)}`;
      return [
        `# On a router (${topo.ns.router(1)}); server n is xdplb target n-1:`,
        `${cli} show`,
        `${cli} deactivate 0     # scale in server 1`,
        `${cli} activate 0       # and back`,
        'ip -d link show eth2    # the XDP program',
      ];
    },
  };
}

// ---------------------------------------------------------------------------------------
// IPVS: the in-kernel load-balancer in direct-routing mode (-g), one fwmark service per
// family. Written for kernels that have IPVS; this project's machines have none, so it is
// only ever stopped by ipvsUnavailable() here.

const IPVS_FWMARK = 1;

/** Why IPVS cannot run here, or null when it can. */
export function ipvsUnavailable(): string | null {
  // /proc/net/ip_vs exists in every namespace once the kernel has IPVS (built in or loaded).
  if (!existsSync('/proc/net/ip_vs')) {
    return 'IPVS is not available in this kernel (no /proc/net/ip_vs: needs CONFIG_IP_VS, built in or as the loaded ip_vs module)';
  }
  try {
    run(['ipvsadm', '--version']);
  } catch {
    return 'ipvsadm is not installed (apt-get install ipvsadm)';
  }
  return null;
}

export function ipvsLb(lab: LabHandle): LoadBalancer {
  const { topo } = lab;
  const real = (n: number, family: Family): string[] =>
    family === 4 ? ['-f', String(IPVS_FWMARK), '-r', serverAddr(n, 4)] : ['-6', '-f', String(IPVS_FWMARK), '-r', `[${serverAddr(n, 6)}]`];
  return {
    kind: 'ipvs',
    async start() {
      for (const i of routers(topo)) {
        const ns = topo.ns.router(i);
        for (const family of [4, 6] as const) {
          // Mark VIP packets and deliver them locally (IPVS works in LOCAL_IN) without the
          // router owning the VIP, so the servers' DSR replies are not martians here.
          topo.exec(ns, [
            family === 4 ? 'iptables' : 'ip6tables',
            '-t',
            'mangle',
            '-A',
            'PREROUTING',
            '-i',
            'eth2',
            '-d',
            VIP_NET[family],
            '-j',
            'MARK',
            '--set-mark',
            String(IPVS_FWMARK),
          ]);
          topo.exec(ns, ['ip', `-${family}`, '-batch', '-'], `${fwmarkTable(IPVS_FWMARK, 'local default dev lo').join('\n')}\n`);
          // mh: the kernel's Maglev scheduler, the same idea as nfqlb's table.
          topo.exec(ns, ['ipvsadm', '-A', ...(family === 6 ? ['-6'] : []), '-f', String(IPVS_FWMARK), '-s', 'mh']);
          for (const n of servers(topo)) topo.exec(ns, ['ipvsadm', '-a', ...real(n, family), '-g']);
        }
      }
    },
    setServers(list, active) {
      for (const i of routers(topo)) {
        for (const family of [4, 6] as const) {
          for (const n of list) {
            topo.exec(topo.ns.router(i), ['ipvsadm', active ? '-a' : '-d', ...real(n, family), ...(active ? ['-g'] : [])]);
          }
        }
      }
    },
    manual() {
      return [`# On a router (${topo.ns.router(1)}):`, 'ipvsadm -L -n', `ipvsadm -d ${real(1, 4).join(' ')}   # scale in server 1`];
    },
  };
}

/** Why this kind of load-balancer cannot run here, or null. */
export function lbUnavailable(kind: LbKind): string | null {
  if (kind === 'xdp') return xdpUnavailable();
  if (kind === 'ipvs') return ipvsUnavailable();
  return null;
}

export function createLb(kind: LbKind, lab: LabHandle, o: NfqueueOptions & EcmpOptions): LoadBalancer {
  switch (kind) {
    case 'nfqueue':
      return nfqueueLb(lab, o);
    case 'ecmp':
      return ecmpLb(lab, o);
    case 'xdp':
      return xdpLb(lab);
    case 'ipvs':
      return ipvsLb(lab);
  }
}
