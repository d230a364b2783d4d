// `lblab --bgp`: the load-balancers behind a BGP gateway. The tester acts as the gateway (it is
// the one host in front of every LB, as the edge router would be): BIRD there learns the VIPs
// from a BIRD on every LB and installs one multipath route, in place of the static ECMP route
// the lab otherwise writes. The LBs announce the VIPs through the device `nfqlb lb --announce`
// holds, so a route's next-hop exists exactly while that LB's lb process runs.
//
// The BIRD configs are contrib/bird/*.conf, filled in here. Each BIRD gets its own config,
// control socket and pid file under birdDir(prefix), and an explicit router id (namespaces
// share neither sockets nor a default router id).
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type LabHandle, repoRoot } from './lb-setup.js';
import { run } from './netns.js';
import { type Family, routerAddr, type Topology, testerAddr, VIP, VIP_NET } from './topology.js';

/** The device every LB's `nfqlb lb --announce` holds (one per namespace). */
export const ANNOUNCE_IF = 'vip0';
const LB_AS = 65001;
const GATEWAY_AS = 65000;
/** The VIP routes the gateway learns (what `ip route show` is asked about). */
const VIP_ROUTE: Readonly<Record<Family, string>> = { 4: `${VIP[4]}/32`, 6: `${VIP[6]}/128` };

/** Where a lab's BIRD configs, sockets and pid files go (removed with the lab). */
export function birdDir(prefix: string): string {
  return `/tmp/${prefix}bird`;
}

/** Fills in a contrib/bird template's {{name}} fields; every field must be given. */
export function renderTemplate(text: string, vars: Readonly<Record<string, string | number>>): string {
  return text.replace(/\{\{(\w+)\}\}/g, (_, name: string) => {
    const v = vars[name];
    if (v === undefined) throw new Error(`template field {{${name}}} has no value`);
    return String(v);
  });
}

/** Why the BGP tier cannot run here, or null. */
export function bgpUnavailable(): string | null {
  try {
    run(['bird', '--version']);
  } catch {
    return "BIRD 2 is not installed (apt-get install bird2, then 'systemctl disable --now bird')";
  }
  return null;
}

/** Next-hops of the gateway's VIP route (0: no route). */
export function vipNexthops(topo: Topology, family: Family): number {
  const routes = JSON.parse(topo.exec(topo.ns.tester, ['ip', '-j', `-${family}`, 'route', 'show', VIP_ROUTE[family]]) || '[]') as {
    gateway?: string;
    dev?: string;
    nexthops?: unknown[];
  }[];
  const r = routes[0];
  if (r === undefined) return 0;
  return r.nexthops?.length ?? 1;
}

export class BgpTier {
  readonly dir: string;

  constructor(private readonly lab: LabHandle) {
    this.dir = birdDir(lab.topo.prefix);
  }

  /** Starts BIRD on the gateway (the tester) and on every LB; the LBs' lbs announce later. */
  async start(): Promise<void> {
    const { topo } = this.lab;
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    // Only BIRD's routes lead to the VIPs now (the lab's static range route would hide a withdrawal).
    topo.ip(topo.ns.tester, [`route del ${VIP_NET[4]}`, `route del ${VIP_NET[6]}`]);
    const common = { vip4: VIP[4], vip6: VIP[6], lb_as: LB_AS, gateway_as: GATEWAY_AS, gateway4: testerAddr(4), gateway6: testerAddr(6) };
    await this.bird(topo.ns.tester, 'gateway', 'gateway', {
      ...common,
      router_id: testerAddr(4),
      downlink: 'eth1',
      lb_net4: `${routerAddr(1, 2, 4).replace(/\.\d+$/, '.0')}/24`,
      lb_net6: `${routerAddr(1, 2, 6).replace(/\.\d+$/, '.0')}/120`,
    });
    for (let i = 1; i <= topo.nrouters; i++) {
      await this.bird(topo.ns.router(i), 'lb', `lb-${200 + i}`, {
        ...common,
        router_id: routerAddr(i, 2, 4),
        uplink: 'eth2',
        announce_if: ANNOUNCE_IF,
      });
    }
  }

  private async bird(ns: string, template: 'lb' | 'gateway', name: string, vars: Record<string, string | number>): Promise<void> {
    const conf = join(this.dir, `${name}.conf`);
    writeFileSync(conf, renderTemplate(readFileSync(join(repoRoot(), 'contrib', 'bird', `${template}.conf`), 'utf8'), vars));
    await this.lab.daemon(
      ns,
      ['bird', '-f', '-c', conf, '-s', this.socket(name), '-P', join(this.dir, `${name}.pid`)],
      `${ns}-bird`,
      'Started',
    );
  }

  /**
   * What every BIRD says of its BGP and static protocols (state, since, info: a session down and
   * why) and an LB's VIP routes (none while its device is missing), for the error of a
   * convergence that did not come: the lab and its logs are gone by the time anyone reads it.
   */
  private protocols(): string {
    const names = ['gateway', ...Array.from({ length: this.lab.topo.nrouters }, (_, k) => `lb-${201 + k}`)];
    return names
      .map((name) => {
        try {
          const birdc = (what: string): string[] => run(['birdc', '-s', this.socket(name), ...what.split(' ')]).split('\n');
          const rows = birdc('show protocols').filter((l) => /\s(BGP|Static)\s/.test(l));
          // An LB's static VIP routes exist only while its lb's device does.
          if (name !== 'gateway') for (const p of ['vip4', 'vip6']) rows.push(`${p}: ${birdc(`show route protocol ${p} count`).at(-2)}`);
          return `${name}: ${rows.map((l) => l.trim().replace(/\s+/g, ' ')).join('; ')}`;
        } catch (e) {
          return `${name}: ${(e as Error).message}`;
        }
      })
      .join(' | ');
  }

  /** The control socket of BIRD `name` (`birdc -s` it from any namespace). */
  socket(name: string): string {
    return join(this.dir, `${name}.ctl`);
  }

  /**
   * Waits until the gateway's VIP routes (v4 and v6) have `count` next-hops; returns the ms it
   * took per family, counted from `since` (Date.now() of the change that caused it).
   */
  async converge(count: number, since: number, timeoutMs = 10_000): Promise<Record<Family, number>> {
    const done: Partial<Record<Family, number>> = {};
    for (;;) {
      for (const f of [4, 6] as const) if (done[f] === undefined && vipNexthops(this.lab.topo, f) === count) done[f] = Date.now() - since;
      if (done[4] !== undefined && done[6] !== undefined) return done as Record<Family, number>;
      if (Date.now() - since > timeoutMs) {
        throw new Error(
          `gateway: VIP routes did not reach ${count} next-hops in ${timeoutMs} ms ` +
            `(IPv4 ${vipNexthops(this.lab.topo, 4)}, IPv6 ${vipNexthops(this.lab.topo, 6)}); ${this.protocols()}`,
        );
      }
      await sleep(5);
    }
  }
}

/** Removes a lab's BIRD files (the processes die with its namespaces). */
export function removeBirdFiles(prefix: string): void {
  if (existsSync(birdDir(prefix))) rmSync(birdDir(prefix), { recursive: true, force: true });
}
