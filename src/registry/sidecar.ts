// `nfqlb register --lease`: the sidecar a target runs beside its server (as Meridio's TAPA
// does). It holds its slot under a lease it keeps alive. On SIGTERM or SIGINT it drains: the
// target goes to "draining" (the LBs stop sending it new flows), stays for the drain time,
// then its key is deleted and the lease revoked. Killed outright, it stops renewing the lease
// and etcd deletes the key when the lease's TTL runs out. If etcd drops the lease while the
// sidecar lives (etcd unreachable for longer than the TTL), it registers again, on the same
// slot when that is still free.
//
// A target restarted while its old sidecar drains (a rolling restart) takes the draining
// registration over at once (Registry.claim): the key is put active under the new lease. The
// old sidecar then leaves the key alone: it changes and deletes only a key held under its own
// lease, and its lease, revoked or expired, no longer holds the key.
import { log } from '../log.js';
import { type Claim, type HeldLease, type Registry, RegistryError } from './etcd.js';
import type { ServiceKeys } from './model.js';

export interface HoldOptions {
  fwmark: number;
  name: string | null;
  slot?: number;
  /** Lease TTL, seconds. */
  ttl: number;
  drainMs: number;
  /** Called after the first claim (the command prints it: the sidecar is then registered). */
  onClaim(c: Claim, lease: HeldLease): void;
}

/** How long a failed re-registration waits before the next try. */
const RETRY_MS = 1000;

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Grants a lease and claims a slot under it; the lease is revoked again if the claim fails. */
type Held = { claim: Claim; lease: HeldLease };

async function claimWithLease(reg: Registry, keys: ServiceKeys, o: HoldOptions, prefer?: number): Promise<Held> {
  const lease = await reg.grantLease(o.ttl);
  try {
    return { claim: await reg.claim(keys, o.fwmark, { name: o.name, slot: o.slot, prefer, lease: lease.id }), lease };
  } catch (e) {
    await lease.revoke().catch(() => undefined);
    throw e;
  }
}

/** Registers, holds the registration until a signal, then drains and deregisters. Resolves with the exit code. */
export async function holdRegistration(reg: Registry, keys: ServiceKeys, o: HoldOptions): Promise<number> {
  let stop!: () => void;
  const stopped = new Promise<'stop'>((r) => (stop = () => r('stop')));
  // Installed before the first claim: a SIGTERM while registering still ends in a clean deregistration.
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  try {
    let { claim, lease } = await claimWithLease(reg, keys, o);
    o.onClaim(claim, lease);
    logTakeOver(claim);
    for (;;) {
      const lost = new Promise<{ lost: string }>((r) => lease.onLost((why) => r({ lost: why })));
      const ev = await Promise.race([stopped, lost]);
      if (ev === 'stop') break;
      log.warn({ key: claim.key, why: ev.lost }, 'registry lease lost: registering again');
      // The old lease may still hold the key (etcd extends leases across a leader change).
      await lease.revoke().catch(() => undefined);
      const again = await reclaim(reg, keys, o, claim.slot, stopped);
      if (again === 'stop') return 0;
      ({ claim, lease } = again);
      logTakeOver(claim);
      log.info({ key: claim.key, fwmark: o.fwmark, lease: BigInt(lease.id).toString(16) }, 'registered again');
    }
    await deregister(reg, keys, o, claim, lease);
    return 0;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
}

async function reclaim(reg: Registry, keys: ServiceKeys, o: HoldOptions, prefer: number, stopped: Promise<'stop'>): Promise<Held | 'stop'> {
  let said = '';
  for (;;) {
    try {
      return await claimWithLease(reg, keys, o, prefer);
    } catch (e) {
      // One line per distinct failure, not one a second.
      const err = (e as Error).message;
      if (err !== said) log.warn({ err }, 'registering again failed: retrying');
      said = err;
    }
    if ((await Promise.race([stopped, delay(RETRY_MS)])) === 'stop') return 'stop';
  }
}

function logTakeOver(claim: Claim): void {
  if (claim.tookOver) log.info({ key: claim.key, from: claim.tookOver.lease }, 'took over the draining registration');
}

async function deregister(reg: Registry, keys: ServiceKeys, o: HoldOptions, claim: Claim, lease: HeldLease): Promise<void> {
  // By slot, fwmark and lease: never touch a key another registrant holds by now, such as the
  // restarted target that took this draining registration over.
  const sel = { slot: claim.slot, fwmark: o.fwmark, lease: lease.id };
  try {
    await reg.setState(keys, sel, 'draining');
    log.info({ key: claim.key, drainMs: o.drainMs }, 'draining');
    await delay(o.drainMs);
    await reg.remove(keys, sel);
  } catch (e) {
    const err = (e as Error).message;
    if (e instanceof RegistryError && e.code === 'ETAKEN')
      log.info({ key: claim.key, err }, 'taken over: leaving the key to its new holder');
    else log.warn({ key: claim.key, err }, 'deregistering');
  }
  await lease.revoke().catch((e: Error) => log.warn({ err: e.message }, 'revoking the lease'));
  log.info({ key: claim.key }, 'deregistered');
}
