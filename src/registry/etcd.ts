// The registry over etcd v3 (the `etcd3` client, loaded only by the commands that use it).
// Every failure comes out as one RegistryError line; every write is a transaction that checks
// the revisions it decided on, and is redone on a fresh read when another writer came between.
//
// Register's guarantee (docs/registry.md): the claim transaction puts targets/<slot> only if
//   - no key under the service changed since the read it chose from (a compare of the mod
//     revision over the whole service range, which etcd checks key by key), so no fwmark or
//     slot appeared meanwhile: a concurrent registrant of the same fwmark, on any slot, fails
//     and sees the winner on its re-read;
//   - the config is the one it read (deleting it is no change to the range compare), and
//   - the slot key does not exist (create revision 0), or, taking over the fwmark's draining
//     registration (a restarted target), that key is as read (its mod revision).
// So the fwmark check needs no second key that every writer of the data model must keep in step.
import type { Etcd3, ICompare, IKeyValue, IRequestOp, ITxnResponse } from 'etcd3';
import { UsageError } from '../usage-error.js';
import {
  checkConfig,
  checkTarget,
  type DesiredSet,
  desiredSet,
  fwmarkIn,
  leaseHex,
  newTarget,
  planClaim,
  type RawEntry,
  type ServiceConfig,
  type ServiceKeys,
  type Snapshot,
  type TargetState,
  withState,
} from './model.js';

type EtcdModule = typeof import('etcd3');

export interface EtcdOptions {
  /** http:// or https:// URLs, all of one scheme. */
  endpoints: string[];
  /** TLS (https) trust and client certificate; ca null uses the system's roots. */
  tls: { ca: Buffer | null; cert: Buffer | null; key: Buffer | null } | null;
  user: { name: string; password: string } | null;
  /** Bound on each request: an unreachable etcd fails after about this long. */
  timeoutMs: number;
}

export type RegistryErrorCode =
  | 'EUNREACHABLE'
  | 'EAUTH'
  | 'EACCES'
  | 'EEXIST'
  | 'ENOENT'
  | 'ETAKEN'
  | 'ENOSPC'
  | 'EINVAL'
  | 'ECONFLICT'
  | 'EETCD';

/** A failure of the registry or of etcd (not of the caller's input: that is a UsageError). */
export class RegistryError extends Error {
  constructor(
    readonly code: RegistryErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Selects a target: by slot, by fwmark, or by both (the slot must then hold that fwmark). */
export interface Selector {
  slot?: number;
  fwmark?: number;
  /** Only while the key is held under this lease (decimal); else ETAKEN: another registrant took it over. */
  lease?: string;
}

export interface Claim {
  slot: number;
  fwmark: number;
  key: string;
  revision: number;
  /** Set when the claim took over the fwmark's draining registration: the lease (hex) it was under. */
  tookOver: { lease: string | null } | null;
}

export interface ClaimOptions {
  name?: string | null;
  /** This slot or none. */
  slot?: number;
  /** This slot if it is free, else the lowest free one. */
  prefer?: number;
  /** Lease ID (decimal) the key is put under. */
  lease?: string;
}

export interface HeldLease {
  /** Decimal, as etcd sends it. */
  readonly id: string;
  /** Called once if etcd drops the lease (its keys are then gone). */
  onLost(cb: (why: string) => void): void;
  /** Revokes it: etcd deletes every key it holds. */
  revoke(): Promise<void>;
}

/** Transactions retried after a conflict before giving up (each retry follows another writer's success). */
const MAX_ATTEMPTS = 100;

const utf8 = (s: string) => Buffer.from(s);

/** The key after every key that starts with `prefix` (etcd's range end for a prefix). */
function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]!++;
  return b;
}

function entryOf(kv: IKeyValue): RawEntry {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    lease: String(kv.lease ?? '0'),
  };
}

/** Why grpc could not connect, from its message ("No connection established. Last error: ..."). */
export function connectFailure(message: string): string {
  const last = /Last error: (?:Error: )?([\s\S]*?)\s*(?:\(\d{4}-\d\d-\d\dT[^)]*\))?\.?\s*(?:Resolution note|$)/.exec(message)?.[1];
  if (!last || last === 'null') return 'no connection';
  const tls = /SSL routines:[^:]*:([^:]+):/.exec(last)?.[1];
  if (tls === undefined) return last;
  const refused = /alert (bad|unknown|certificate required)/.test(tls);
  return refused ? `TLS: ${tls}: etcd refused the client certificate, or wants one (--etcd_cert)` : `TLS: ${tls}`;
}

/** The compare of a rewrite: the key is still as it was read. */
function unchanged(e: RawEntry): ICompare {
  return { key: utf8(e.key), target: 'Mod', result: 'Equal', mod_revision: e.modRevision };
}

function backoff(attempt: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(200, 5 * 2 ** attempt)));
}

export class Registry {
  private constructor(
    private readonly etcd: Etcd3,
    private readonly mod: EtcdModule,
    private readonly o: EtcdOptions,
  ) {}

  /** A client; nothing is sent until the first request, which is where a bad endpoint or password shows. */
  static async connect(o: EtcdOptions): Promise<Registry> {
    const mod = await import('etcd3');
    // grpc takes a null CA for "the system's roots"; etcd3's type says Buffer.
    const credentials = o.tls && {
      rootCertificate: o.tls.ca as Buffer,
      privateKey: o.tls.key ?? undefined,
      certChain: o.tls.cert ?? undefined,
    };
    const etcd = new mod.Etcd3({
      hosts: o.endpoints,
      ...(credentials ? { credentials } : {}),
      ...(o.user ? { auth: { username: o.user.name, password: o.user.password } } : {}),
      dialTimeout: o.timeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + o.timeoutMs }),
    });
    return new Registry(etcd, mod, o);
  }

  close(): void {
    this.etcd.close();
  }

  /** All keys of a service at one revision. */
  async snapshot(keys: ServiceKeys): Promise<Snapshot> {
    const r = await this.call('read', () => this.etcd.getAll().prefix(keys.dir).exec());
    return { revision: Number(r.header.revision), entries: r.kvs.map(entryOf) };
  }

  /** The service's validated desired set (what `registry show` prints and a follower applies). */
  async read(keys: ServiceKeys): Promise<DesiredSet> {
    return desiredSet(keys, await this.snapshot(keys));
  }

  /** Writes the config: only if there is none, unless `force`. */
  async init(keys: ServiceKeys, config: ServiceConfig, force: boolean): Promise<void> {
    const put: IRequestOp = { request_put: { key: utf8(keys.config), value: utf8(JSON.stringify(config)) } };
    const compare: ICompare[] = force ? [] : [{ key: utf8(keys.config), target: 'Create', result: 'Equal', create_revision: 0 }];
    const r = await this.txn('write the config', compare, [put], [{ request_range: { key: utf8(keys.config) } }]);
    if (!r.succeeded) {
      const old = r.responses[0]?.response_range?.kvs?.[0]?.value?.toString() ?? '';
      throw new RegistryError('EEXIST', `service '${keys.service}' already has a config ${old} (--force replaces it)`);
    }
  }

  /**
   * Claims a slot for `fwmark` (see the guarantee at the top): `slot` if given, else `prefer` when
   * it is free (a re-registration after a lost lease), else the lowest free slot; or the slot of
   * the fwmark's draining registration, which it takes over (planClaim).
   */
  async claim(keys: ServiceKeys, fwmark: number, o: ClaimOptions = {}): Promise<Claim> {
    return this.retrying(async () => {
      const snap = await this.snapshot(keys);
      const configEntry = snap.entries.find((e) => e.key === keys.config);
      if (!configEntry) throw new RegistryError('ENOENT', `service '${keys.service}' has no config (nfqlb registry init)`);
      const c = checkConfig(configEntry.value);
      if (!('ok' in c)) throw new RegistryError('EINVAL', `${keys.config}: ${c.reason}`);
      const { N } = c.ok;
      if (o.slot !== undefined && o.slot >= N) throw new UsageError(`--slot=${o.slot}: slot >= N=${N}`);
      const plan = planClaim(keys, N, snap.entries, fwmark, o.slot, o.prefer);
      if ('refused' in plan) {
        if (plan.refused === 'fwmark') throw new RegistryError('EEXIST', `fwmark ${fwmark} is already registered (${plan.key})`);
        if (plan.refused === 'slot') throw new RegistryError('EEXIST', `slot ${o.slot} is taken (${plan.key})`);
        throw new RegistryError('ENOSPC', `all ${N} slots of service '${keys.service}' are taken`);
      }
      const { slot, takeOver } = plan;
      const key = keys.target(slot);
      // A take-over puts the key under the new lease: the old holder's lease no longer deletes it.
      const free: ICompare = takeOver ? unchanged(takeOver) : { key: utf8(key), target: 'Create', result: 'Equal', create_revision: 0 };
      const r = await this.txn(
        'register',
        [
          {
            key: utf8(keys.dir),
            range_end: prefixEnd(keys.dir),
            target: 'Mod',
            result: 'Less',
            mod_revision: snap.revision + 1,
          } as ICompare,
          { key: utf8(keys.config), target: 'Mod', result: 'Equal', mod_revision: configEntry.modRevision },
          free,
        ],
        [{ request_put: { key: utf8(key), value: utf8(newTarget(fwmark, o.name ?? null, Date.now())), lease: o.lease ?? '0' } }],
      );
      const tookOver = takeOver && { lease: leaseHex(takeOver.lease) };
      return r.succeeded ? { slot, fwmark, key, revision: Number(r.header.revision), tookOver } : undefined;
    });
  }

  /** Sets a target's state (and ts); its lease and other fields stay. False when it already was. */
  async setState(keys: ServiceKeys, sel: Selector, state: TargetState): Promise<boolean> {
    return this.retrying(async () => {
      const e = this.find(keys, await this.snapshot(keys), sel);
      const t = checkTarget(e.value);
      if (!('ok' in t)) throw new RegistryError('EINVAL', `${e.key}: ${t.reason} (write a valid value or delete it)`);
      if (t.ok.state === state) return false;
      const put = { key: utf8(e.key), value: utf8(withState(e.value, state, Date.now())), ignore_lease: true };
      const r = await this.txn(state === 'draining' ? 'drain' : 'undrain', [unchanged(e)], [{ request_put: put }]);
      return r.succeeded ? true : undefined;
    });
  }

  /** Deletes a target's key (also one whose value is invalid); returns the key. */
  async remove(keys: ServiceKeys, sel: Selector): Promise<string> {
    return this.retrying(async () => {
      const e = this.find(keys, await this.snapshot(keys), sel);
      const r = await this.txn('delete', [unchanged(e)], [{ request_delete_range: { key: utf8(e.key) } }]);
      return r.succeeded ? e.key : undefined;
    });
  }

  /** A lease of `ttl` seconds, kept alive until revoked or lost. */
  async grantLease(ttl: number): Promise<HeldLease> {
    const lease = this.etcd.lease(ttl);
    const id = await this.call('grant a lease', () => lease.grant());
    return {
      id,
      onLost: (cb) => lease.once('lost', (e: Error) => cb(this.explain(e, 'keep the lease').message)),
      revoke: () => this.call('revoke the lease', () => lease.revoke()),
    };
  }

  /**
   * Calls onChange with the revision of each change under the service after `afterRevision`,
   * and onError when the watch stream fails (the client reconnects it; a follower re-reads
   * then, since watchers have been seen to go silent after reconnects). Resolves to a stop function.
   */
  async watch(
    keys: ServiceKeys,
    afterRevision: number,
    onChange: (revision: number) => void,
    onError: (e: Error) => void,
  ): Promise<() => Promise<void>> {
    const from = String(afterRevision + 1);
    const w = await this.call('watch', () => this.etcd.watch().prefix(keys.dir).startRevision(from).create());
    w.on('data', (res) => {
      if ((res.events ?? []).length > 0) onChange(Number(res.header.revision));
    });
    w.on('disconnected', (e) => onError(this.explain(e, 'watch')));
    w.on('error', (e) => onError(this.explain(e, 'watch')));
    return () => w.cancel();
  }

  private find(keys: ServiceKeys, snap: Snapshot, sel: Selector): RawEntry {
    const targets = snap.entries.filter((e) => e.key.startsWith(keys.targets));
    const matches = targets.filter(
      (e) => (sel.slot === undefined || e.key === keys.target(sel.slot)) && (sel.fwmark === undefined || fwmarkIn(e.value) === sel.fwmark),
    );
    if (matches.length === 0) {
      const what = [sel.slot === undefined ? '' : `at slot ${sel.slot}`, sel.fwmark === undefined ? '' : `with fwmark ${sel.fwmark}`];
      throw new RegistryError('ENOENT', `service '${keys.service}' has no target ${what.filter((w) => w).join(' ')}`);
    }
    if (matches.length > 1) {
      throw new UsageError(`fwmark ${sel.fwmark} is in ${matches.map((e) => e.key).join(' and ')}: name one with --slot`);
    }
    const e = matches[0]!;
    if (sel.lease !== undefined && e.lease !== sel.lease) {
      throw new RegistryError('ETAKEN', `${e.key} is held under another lease (${leaseHex(e.lease) ?? 'none'}): it was taken over`);
    }
    return e;
  }

  /** Runs `attempt` until it returns a result; undefined means another writer came between. */
  private async retrying<T>(attempt: () => Promise<T | undefined>): Promise<T> {
    for (let i = 0; i < MAX_ATTEMPTS; i++) {
      const r = await attempt();
      if (r !== undefined) return r;
      await backoff(i);
    }
    throw new RegistryError('ECONFLICT', `the service kept changing under ${MAX_ATTEMPTS} attempts: try again`);
  }

  private txn(what: string, compare: ICompare[], success: IRequestOp[], failure: IRequestOp[] = []): Promise<ITxnResponse> {
    return this.call(what, () => this.etcd.kv.txn({ compare, success, failure }));
  }

  /** One request, bounded in time as a whole (the client's retries included), its failure explained. */
  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(this.noAnswer()), this.o.timeoutMs);
    });
    try {
      return await Promise.race([fn(), late]);
    } catch (e) {
      throw this.explain(e, what);
    } finally {
      clearTimeout(timer);
    }
  }

  /** etcd's and grpc's errors as one line that says what to check. */
  private explain(e: unknown, what: string): RegistryError | UsageError {
    if (e instanceof RegistryError || e instanceof UsageError) return e;
    const m = this.mod;
    const err = e as Error;
    const user = this.o.user ? `user '${this.o.user.name}'` : 'no --etcd_user';
    const endpoints = this.o.endpoints.join(',');
    if (err instanceof m.EtcdAuthenticationFailedError) {
      return new RegistryError('EAUTH', `etcd: authentication failed for ${user}: check the password`);
    }
    // With auth on, a client with neither a user nor a client certificate gets "user name is empty".
    if (err instanceof m.EtcdPermissionDeniedError || err instanceof m.GRPCUnauthenticatedError || /user name is empty/.test(err.message)) {
      return new RegistryError('EACCES', `etcd: permission denied to ${what} under ${endpoints} (${user})`);
    }
    if (err instanceof m.GRPCDeadlineExceededError) return this.noAnswer();
    if (err instanceof m.GRPCUnavailableError) {
      let why = connectFailure(err.message);
      // A TLS 1.3 server refuses a client without a certificate after the client's handshake is
      // done, so grpc often has no error to tell.
      if (why === 'no connection' && this.o.tls && !this.o.tls.cert) why += '; does etcd want a client certificate (--etcd_cert)?';
      return new RegistryError('EUNREACHABLE', `etcd ${endpoints}: unreachable (${why})`);
    }
    return new RegistryError('EETCD', `etcd: ${what}: ${err.message.replace(/^\d+ [A-Z_]+: /, '')}`);
  }

  private noAnswer(): RegistryError {
    return new RegistryError('EUNREACHABLE', `etcd ${this.o.endpoints.join(',')}: no answer within ${this.o.timeoutMs} ms`);
  }

  /**
   * One LB's health view (`nfqlb follow --health`): puts `<dir>health/<lb>/<slot>` for each of
   * `put` and deletes those of `remove`, in one transaction, every key under `lease` (decimal):
   * the view goes when the LB stops renewing it. The keys are not targets: desiredSet ignores them.
   */
  async putHealthView(
    keys: ServiceKeys,
    lb: string,
    lease: string,
    put: ReadonlyMap<number, string>,
    remove: readonly number[],
  ): Promise<void> {
    const key = (slot: number) => utf8(`${keys.dir}health/${lb}/${slot}`);
    await this.txn(
      'publish the health view',
      [],
      [
        ...remove.map((slot) => ({ request_delete_range: { key: key(slot) } })),
        ...[...put].map(([slot, value]) => ({ request_put: { key: key(slot), value: utf8(value), lease } })),
      ],
    );
  }
}
