// `--compat=nfqlb`: for a tier that still has reference LBs (Nordix/nfqueue-loadbalancer 1.2.0),
// every packet the reference forwards gets the reference's fwmark, its bugs included; where it
// drops a packet, the correct key is used (it sends that packet nowhere, so no flow moves).
// The parse is PARSE_NFQLB (packet.ts); docs/compatibility.md lists where the modes differ.
import { UsageError } from '../usage-error.js';

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
