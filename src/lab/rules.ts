// The router set-up nfqlb needs, written once for the lab, the bench and the kernel tests:
// a policy route per fwmark (the lb only marks packets; the routes take them to their target)
// and the iptables rule that hands packets to an NFQUEUE queue.
import { type Family, VIP } from './topology.js';

/** Server n of a lab is fwmark 100+n (the original's `nfqlb activate --index=n $((n+100))`). */
export const serverFwmark = (n: number): number => 100 + n;

/** LB j of a tier is fwmark 200+j (`nfqlb init --ownfw=$((200+j))`). */
export const lbFwmark = (j: number): number => 200 + j;

/** `ip -batch` lines (one family) that route packets with `fwmark` by table `fwmark`, whose one route is `route`. */
export function fwmarkTable(fwmark: number, route: string): string[] {
  return [`rule add fwmark ${fwmark} table ${fwmark}`, `route add ${route} table ${fwmark}`];
}

/** `ip -batch` lines (one family): packets with `fwmark` go to next-hop `via` (`ip rule add fwmark N table N` + its default route). */
export function fwmarkRoute(fwmark: number, via: string): string[] {
  return fwmarkTable(fwmark, `default via ${via}`);
}

/** What runs `ip` in a namespace: a lab's Topology. */
interface Exec {
  exec(ns: string, argv: readonly string[], input?: string): string;
}

/**
 * Adds in namespace `ns`, for each family (one `ip -batch` each), the fwmark routes
 * `routes(family)` gives: fwmark and next-hop.
 */
export function addFwmarkRoutes(
  topo: Exec,
  ns: string,
  routes: (family: Family) => ReadonlyArray<readonly [number, string]>,
  families: readonly Family[] = [4, 6],
): void {
  for (const family of families) {
    const lines = routes(family).flatMap(([fwmark, via]) => fwmarkRoute(fwmark, via));
    if (lines.length > 0) topo.exec(ns, ['ip', `-${family}`, '-batch', '-'], `${lines.join('\n')}\n`);
  }
}

/** The iptables command of a family. */
export const iptables = (family: Family): 'iptables' | 'ip6tables' => (family === 4 ? 'iptables' : 'ip6tables');

/** The lab's VIP of a family as one host: 10.0.0.0/32, 1000::/128. */
export const vipHost = (family: Family): string => `${VIP[family]}/${family === 4 ? 32 : 128}`;

export interface NfqueueRule {
  /** Ingress device (`-i`), e.g. eth2; none: any. */
  iif?: string;
  /** Destination (`-d`), e.g. vipHost(4); none: any. */
  dst?: string;
  /** Matches before the target, e.g. `-m mark --mark 0` (packets marked earlier skip the queue). */
  match?: readonly string[];
  /** A queue (`--queue-num N`), or a range 'a:b' (`--queue-balance a:b`: one queue per flow). */
  queue: number | string;
  /** `--queue-bypass`: while no lb serves the queue, packets pass unmarked instead of being dropped. */
  bypass?: boolean;
}

/** The rule's specification, what follows `-A <chain>` (or `-R <chain> <n>`) of iptables or ip6tables. */
export function nfqueueRule(r: NfqueueRule): string[] {
  const queue = String(r.queue);
  return [
    ...(r.iif === undefined ? [] : ['-i', r.iif]),
    ...(r.dst === undefined ? [] : ['-d', r.dst]),
    ...(r.match ?? []),
    '-j',
    'NFQUEUE',
    ...(queue.includes(':') ? ['--queue-balance', queue] : ['--queue-num', queue]),
    ...(r.bypass ? ['--queue-bypass'] : []),
  ];
}
