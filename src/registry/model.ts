// The registry's data model (docs/registry.md): one service is one target table that every LB
// of a tier builds from the same keys in etcd. Pure: key names, value checks, the desired set
// a follower applies, and the slot a registrant claims. Nothing here talks to etcd.
//
//   <prefix>/<service>/config          {"M":997,"N":32}
//   <prefix>/<service>/targets/<slot>  {"fwmark":101,"state":"active","name":"vm-001","ts":1764000000000}
//
// A bad key is rejected alone, with a reason, and the rest applies: one broken writer must not
// take a tier's other targets down. Every rule depends only on what etcd holds (never on the
// order a reader saw changes in), so every LB rejects the same keys and builds the same table.

import { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';

export const DEFAULT_PREFIX = '/tslb';
/** The largest fwmark (the kernel's mark is 32 bits; nfqlb's table holds int32, -1 is "none"). */
export const FWMARK_MAX = 0x7fffffff;
/** Largest target table a config may ask for, as `nfqlb init` allows. */
const MAX_TABLE_BYTES = 2 ** 30;
/** A rejected value is shown up to this many characters. */
const SHOWN_VALUE_CHARS = 200;

export type TargetState = 'active' | 'draining';

export interface ServiceConfig {
  M: number;
  N: number;
}

/** One key of a service as etcd holds it. Revisions stay far below 2^53, so they are numbers. */
export interface RawEntry {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  /** Lease ID in decimal as etcd sends it; '0' is none. */
  lease: string;
}

/** The keys of a service, read at one revision. */
export interface Snapshot {
  revision: number;
  entries: RawEntry[];
}

export interface DesiredTarget {
  slot: number;
  fwmark: number;
  state: TargetState;
  name: string | null;
  /** The writer's clock (ms) when it last changed the target: propagation is measured from it. */
  ts: number | null;
  key: string;
  modRevision: number;
  /** Lease ID in hex (as etcdctl prints it), or null. */
  lease: string | null;
}

/**
 * What is wrong with a rejected key, in few words: the `reason` label of
 * nfqlb_registry_rejected_total (the reason text names values, too many for a label).
 */
export type RejectKind = 'malformed' | 'fwmark_range' | 'slot_range' | 'duplicate_fwmark' | 'bad_config' | 'no_config';

export interface RejectedEntry {
  key: string;
  kind: RejectKind;
  reason: string;
  value: string;
}

/** What a follower applies: targets by slot, at `revision`. config null means apply nothing. */
export interface DesiredSet {
  revision: number;
  config: ServiceConfig | null;
  /** Sorted by slot; slots and fwmarks are unique. */
  targets: DesiredTarget[];
  rejected: RejectedEntry[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const PREFIX_RE = /^(\/[A-Za-z0-9_.-]+)+$/;
const SLOT_RE = /^(0|[1-9][0-9]{0,9})$/;

/** The key names of one service; `dir` ends with '/', so that service "a" never matches "ab". */
export class ServiceKeys {
  readonly dir: string;
  readonly config: string;
  readonly targets: string;

  constructor(
    readonly prefix: string,
    readonly service: string,
  ) {
    if (!PREFIX_RE.test(prefix)) throw new UsageError(`--prefix: '${prefix}' is not /name[/name...] (letters, digits, _.-)`);
    if (!NAME_RE.test(service)) throw new UsageError(`--service: '${service}' is not a name (letters, digits, _.-, at most 64)`);
    this.dir = `${prefix}/${service}/`;
    this.config = `${this.dir}config`;
    this.targets = `${this.dir}targets/`;
  }

  target(slot: number): string {
    return `${this.targets}${slot}`;
  }

  /** The slot a targets/ key names, or null when its last part is not a plain decimal. */
  slotOf(key: string): number | null {
    const s = key.slice(this.targets.length);
    return SLOT_RE.test(s) ? Number(s) : null;
  }
}

type Checked<T> = { ok: T } | { reason: string };

function parseObject(value: string): Checked<Record<string, unknown>> {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch (e) {
    return { reason: `malformed JSON (${(e as Error).message})` };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { reason: 'not a JSON object' };
  return { ok: v as Record<string, unknown> };
}

/** A service's config value; M must be what `nfqlb init` would use (a prime), so no LB rounds it differently. */
export function checkConfig(value: string): Checked<ServiceConfig> {
  const o = parseObject(value);
  if (!('ok' in o)) return o;
  const { M, N } = o.ok;
  if (typeof M !== 'number' || !Number.isInteger(M) || M < 3) return { reason: `M ${JSON.stringify(M)} is not an integer >= 3` };
  if (TargetTable.adjustM(M) !== M) return { reason: `M ${M} is not a prime (nfqlb init would use ${TargetTable.adjustM(M)})` };
  if (typeof N !== 'number' || !Number.isInteger(N) || N < 1 || N > M) {
    return { reason: `N ${JSON.stringify(N)} is not an integer 1..M (M=${M})` };
  }
  if (TargetTable.byteLength(M, N) > MAX_TABLE_BYTES) return { reason: `M=${M}, N=${N} needs more than 1 GiB of shared memory` };
  return { ok: { M, N } };
}

export interface TargetValue {
  fwmark: number;
  state: TargetState;
  name: string | null;
  ts: number | null;
}

/** A target's value on its own (the slot and duplicates are checked by desiredSet). */
export function checkTarget(value: string): Checked<TargetValue> {
  const o = parseObject(value);
  if (!('ok' in o)) return o;
  const { fwmark, state, name, ts } = o.ok;
  if (fwmark === undefined) return { reason: 'no fwmark' };
  if (typeof fwmark !== 'number' || !Number.isInteger(fwmark) || fwmark < 1 || fwmark > FWMARK_MAX) {
    return { reason: `fwmark ${JSON.stringify(fwmark)} is out of range 1..${FWMARK_MAX}` };
  }
  if (state !== 'active' && state !== 'draining') return { reason: `state ${JSON.stringify(state)} is not "active" or "draining"` };
  if (name !== undefined && typeof name !== 'string') return { reason: 'name is not a string' };
  if (ts !== undefined && (typeof ts !== 'number' || !Number.isFinite(ts))) return { reason: 'ts is not a number (ms since the epoch)' };
  return { ok: { fwmark, state, name: name ?? null, ts: ts ?? null } };
}

/** The fwmark a value names, whatever else is wrong with it (register refuses to reuse even that one). */
export function fwmarkIn(value: string): number | null {
  const o = parseObject(value);
  return 'ok' in o && typeof o.ok.fwmark === 'number' ? o.ok.fwmark : null;
}

function shown(value: string): string {
  return value.length > SHOWN_VALUE_CHARS ? `${value.slice(0, SHOWN_VALUE_CHARS)}...` : value;
}

export function leaseHex(lease: string): string | null {
  return lease === '0' || lease === '' ? null : BigInt(lease).toString(16);
}

/**
 * The desired set of a service from its keys: the valid targets by slot, and every target key
 * (and a bad config) it rejected, with why. Two slots with one fwmark: the key created first
 * (lower create revision, then lower slot) keeps it, so a late duplicate cannot take a target's
 * place. Keys under the service other than config and targets/ are not the registry's: ignored.
 */
export function desiredSet(keys: ServiceKeys, snap: Snapshot): DesiredSet {
  const rejected: RejectedEntry[] = [];
  const reject = (e: RawEntry, kind: RejectKind, reason: string) => rejected.push({ key: e.key, kind, reason, value: shown(e.value) });
  const configEntry = snap.entries.find((e) => e.key === keys.config);
  let config: ServiceConfig | null = null;
  if (configEntry) {
    const c = checkConfig(configEntry.value);
    if ('ok' in c) config = c.ok;
    else reject(configEntry, 'bad_config', c.reason);
  }
  const valid: (DesiredTarget & { createRevision: number })[] = [];
  for (const e of snap.entries) {
    if (!e.key.startsWith(keys.targets)) continue;
    const slot = keys.slotOf(e.key);
    if (slot === null) {
      reject(e, 'slot_range', `slot '${e.key.slice(keys.targets.length)}' is not a decimal number`);
      continue;
    }
    if (config === null) {
      reject(e, 'no_config', configEntry ? 'the service config is invalid' : 'the service has no config (nfqlb registry init)');
      continue;
    }
    if (slot >= config.N) {
      reject(e, 'slot_range', `slot ${slot} >= N=${config.N}`);
      continue;
    }
    const t = checkTarget(e.value);
    if (!('ok' in t)) {
      // checkTarget's one reason about a well-formed value: the fwmark's range.
      reject(e, /^fwmark .* out of range/.test(t.reason) ? 'fwmark_range' : 'malformed', t.reason);
      continue;
    }
    valid.push({ slot, ...t.ok, key: e.key, modRevision: e.modRevision, lease: leaseHex(e.lease), createRevision: e.createRevision });
  }
  valid.sort((a, b) => a.createRevision - b.createRevision || a.slot - b.slot);
  const holder = new Map<number, DesiredTarget>();
  const targets: DesiredTarget[] = [];
  for (const { createRevision, ...t } of valid) {
    const first = holder.get(t.fwmark);
    if (first) {
      rejected.push({
        key: t.key,
        kind: 'duplicate_fwmark',
        reason: `fwmark ${t.fwmark} is also at slot ${first.slot}, which had it first`,
        value: shown(snap.entries.find((e) => e.key === t.key)!.value),
      });
      continue;
    }
    holder.set(t.fwmark, t);
    targets.push(t);
  }
  targets.sort((a, b) => a.slot - b.slot);
  rejected.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return { revision: snap.revision, config, targets, rejected };
}

/**
 * The slot a registrant claims: `wanted` when given and free, else the lowest free slot; null
 * when none is free. A slot is taken while any key holds it, valid or not: a create-only
 * write could not take it anyway.
 */
export function chooseSlot(N: number, taken: ReadonlySet<number>, wanted?: number): number | null {
  if (wanted !== undefined) return wanted < N && !taken.has(wanted) ? wanted : null;
  for (let s = 0; s < N; s++) if (!taken.has(s)) return s;
  return null;
}

/**
 * What a registrant of `fwmark` does with the service's `entries`: claim a free slot (`slot`
 * if given, else `prefer` when free, else the lowest free one), or take over the fwmark's own
 * registration when that one is draining (a target restarted while its old sidecar drains; with
 * `slot`, only on that slot). Any other key naming the fwmark refuses: two live registrants
 * never share one.
 */
export type ClaimPlan =
  | { slot: number; takeOver: RawEntry | null }
  | { refused: 'fwmark'; key: string }
  | { refused: 'slot'; key: string }
  | { refused: 'full' };

export function planClaim(
  keys: ServiceKeys,
  N: number,
  entries: readonly RawEntry[],
  fwmark: number,
  slot?: number,
  prefer?: number,
): ClaimPlan {
  const targets = entries.filter((e) => e.key.startsWith(keys.targets));
  const holders = targets.filter((e) => fwmarkIn(e.value) === fwmark);
  if (holders.length > 0) {
    const [h] = holders as [RawEntry];
    const t = checkTarget(h.value);
    const at = keys.slotOf(h.key);
    const draining = holders.length === 1 && 'ok' in t && t.ok.state === 'draining';
    if (draining && at !== null && at < N && (slot === undefined || slot === at)) return { slot: at, takeOver: h };
    return { refused: 'fwmark', key: h.key };
  }
  const taken = new Set<number>();
  for (const e of targets) {
    const s = keys.slotOf(e.key);
    if (s !== null) taken.add(s);
  }
  const chosen = chooseSlot(N, taken, slot ?? prefer) ?? (slot === undefined ? chooseSlot(N, taken) : null);
  if (chosen !== null) return { slot: chosen, takeOver: null };
  return slot === undefined ? { refused: 'full' } : { refused: 'slot', key: keys.target(slot) };
}

/** A new target's value, as register writes it. */
export function newTarget(fwmark: number, name: string | null, ts: number): string {
  return JSON.stringify({ fwmark, state: 'active', ...(name === null ? {} : { name }), ts });
}

/** A target's value with another state and ts, keeping whatever other fields its writer put there. */
export function withState(value: string, state: TargetState, ts: number): string {
  const o = parseObject(value);
  return JSON.stringify({ ...('ok' in o ? o.ok : {}), state, ts });
}
