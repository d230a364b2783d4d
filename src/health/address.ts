// Where a target is probed. By default at the VIPs, through the target's fwmark route: the
// probe then proves what the balanced packets need. `--hc_addr=target` probes the target's own
// address instead (NAT set-ups, where the target does not hold the VIP): the gateway of the
// route its fwmark takes to the VIP, as `ip route get VIP mark FWMARK` shows it, so the
// address comes from the routing the packets use and is never configured twice.
import { execFileSync } from 'node:child_process';
import { family } from './probe.js';

export type ProbeAddress = 'vip' | 'target';

/** The gateway of fwmark's route to `vip`; throws when there is none (no route, or on-link). */
export function routeGateway(vip: string, fwmark: number): string {
  let routes: { gateway?: string }[];
  try {
    const out = execFileSync('ip', [`-${family(vip)}`, '-j', 'route', 'get', vip, 'mark', String(fwmark)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    routes = JSON.parse(out) as { gateway?: string }[];
  } catch (e) {
    throw new Error(`no route to ${vip} with fwmark ${fwmark}: ${((e as { stderr?: string }).stderr ?? String(e)).trim()}`);
  }
  const gateway = routes[0]?.gateway;
  if (gateway === undefined) throw new Error(`the route to ${vip} with fwmark ${fwmark} has no gateway: no target address`);
  return gateway;
}

/** The addresses to probe the target of `fwmark` at, one per VIP. */
export function probeAddresses(how: ProbeAddress, vips: readonly string[], fwmark: number): string[] {
  return how === 'vip' ? [...vips] : vips.map((vip) => routeGateway(vip, fwmark));
}
