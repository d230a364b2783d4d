// `--compat=nfqlb`: for a tier that still has reference LBs (Nordix/nfqueue-loadbalancer 1.2.0),
// every packet the reference forwards gets the reference's fwmark, its bugs included; where it
// drops a packet, the correct key is used (it sends that packet nowhere, so no flow moves).
// The parse is PARSE_NFQLB (packet.ts); docs/compatibility.md lists where the modes differ.
import { parseAddress } from '../address.js';
import { log } from '../log.js';
import { UsageError } from '../usage-error.js';
import type { OffloadOptions } from './offload.js';

/** The implementations a Balancer can be compatible with (BalancerOptions.compat). */
export const COMPAT_MODES = ['nfqlb'] as const;
export type Compat = (typeof COMPAT_MODES)[number];

/** `--compat=`: absent is the correct behaviour (null); an unknown name is one line of usage error. */
export function parseCompat(text: string | undefined): Compat | null {
  if (text === undefined) return null;
  const mode = COMPAT_MODES.find((m) => m === text);
  if (mode === undefined) throw new UsageError(`--compat: '${text}' is not one of: ${COMPAT_MODES.join(', ')}`);
  return mode;
}

/**
 * The offload program walks IPv6 extension headers correctly, and the reference does not: with
 * --compat=nfqlb it gets only the IPv4 VIPs (where both key every packet the same), so IPv6 VIP
 * packets all go to the queue. Undefined when nothing is left to offload.
 */
export function compatOffload(o: OffloadOptions | undefined, compat: Compat | null | undefined): OffloadOptions | undefined {
  if (o === undefined || compat !== 'nfqlb') return o;
  const vips = o.vips.filter((v) => parseAddress(v).family === 4);
  if (vips.length < o.vips.length) {
    const ipv6Vips = o.vips.filter((v) => !vips.includes(v));
    log.info({ ipv6Vips }, '--compat=nfqlb: IPv6 VIP packets are not offloaded: the queue keys them as the reference does');
  }
  return vips.length === 0 ? undefined : { ...o, vips };
}
