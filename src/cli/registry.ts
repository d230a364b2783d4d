// `nfqlb registry init|show|drain|undrain|delete` and `nfqlb register`: a tier's target
// registry in etcd (docs/registry.md). All input, files included, is checked before the first
// request; the password never comes from argv. The etcd client is loaded only here, so the
// other nfqlb commands do not pay for it.
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { log } from '../log.js';
import type { MetricsServer } from '../metrics.js';
import { pinoLevel } from '../nfqlb/log-level.js';
import type { Claim, EtcdOptions, Registry, RegistryError, Selector } from '../registry/etcd.js';
import { DEFAULT_PREFIX, type DesiredSet, FWMARK_MAX, ServiceKeys } from '../registry/model.js';
import { shmPath } from '../shm.js';
import { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';
import { type CommandTable, dispatch, opt } from './command.js';
import { healthOptions, healthSpecs } from './health.js';
import { intOption, metricsOption, type OptionSpecs, type Parsed } from './options.js';

const INT32_MAX = 0x7fffffff;
export const DEFAULT_ETCD = 'http://127.0.0.1:2379';
export const PASSWORD_ENV = 'NFQLB_ETCD_PASSWORD';
const DEFAULT_TIMEOUT_MS = 5000;

/** The connection options every registry command takes. */
export const etcdOptionSpecs: OptionSpecs = {
  etcd: { arg: true, help: `etcd endpoints, comma-separated http(s)://HOST:PORT (default ${DEFAULT_ETCD})` },
  etcd_cacert: { arg: true, help: 'CA certificates (PEM) that verify etcd; https endpoints without it use the system roots' },
  etcd_cert: { arg: true, help: 'Client certificate (PEM) for etcd, with --etcd_key' },
  etcd_key: { arg: true, help: 'Client key (PEM) for etcd' },
  etcd_user: { arg: true, help: `etcd user; the password is read from --etcd_password_file or $${PASSWORD_ENV}` },
  etcd_password_file: { arg: true, help: 'File holding the etcd password (one line)' },
  // An option of its own so that it is refused, rather than taken as a prefix of --etcd_password_file.
  etcd_password: { arg: true, help: 'Refused: a password in argv is visible to every user of the machine' },
  etcd_timeout: { arg: true, help: `ms an etcd request may take before the command gives up (default ${DEFAULT_TIMEOUT_MS})` },
};

const serviceSpecs: OptionSpecs = {
  service: { arg: true, required: true, help: 'Service: one target table of the tier' },
  prefix: { arg: true, help: `Key prefix (default ${DEFAULT_PREFIX})` },
  ...etcdOptionSpecs,
};

const ENDPOINT_RE = /^(https?):\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$/;

/** `--etcd`: URLs of one scheme. Returns them and whether they are https. */
export function parseEndpoints(text: string): { endpoints: string[]; https: boolean } {
  const endpoints = text.split(',');
  const schemes = new Set<string>();
  for (const e of endpoints) {
    const m = ENDPOINT_RE.exec(e);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) throw new UsageError(`--etcd: '${e}' is not http(s)://HOST:PORT`);
    schemes.add(m[1]!);
  }
  if (schemes.size > 1) throw new UsageError('--etcd: the endpoints mix http:// and https://');
  return { endpoints, https: schemes.has('https') };
}

type ReadFile = (path: string) => Buffer;

function readOption(p: Parsed, name: string, read: ReadFile): Buffer | null {
  const path = opt(p, name);
  if (path === undefined) return null;
  try {
    return read(path);
  } catch (e) {
    throw new UsageError(`--${name}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** The etcd connection from the options; `env` and `read` are parameters for the unit tests. */
export function etcdOptions(p: Parsed, env: NodeJS.ProcessEnv = process.env, read: ReadFile = (f) => readFileSync(f)): EtcdOptions {
  const { endpoints, https } = parseEndpoints(opt(p, 'etcd', DEFAULT_ETCD));
  const ca = readOption(p, 'etcd_cacert', read);
  const cert = readOption(p, 'etcd_cert', read);
  const key = readOption(p, 'etcd_key', read);
  if ((cert === null) !== (key === null)) throw new UsageError('--etcd_cert and --etcd_key go together');
  if (!https && (ca || cert)) throw new UsageError('--etcd_cacert, --etcd_cert and --etcd_key need https:// endpoints');
  if (p.opts.has('etcd_password')) {
    throw new UsageError(`--etcd_password: never on the command line; use --etcd_password_file= or $${PASSWORD_ENV}`);
  }
  const user = opt(p, 'etcd_user');
  const passwordFile = opt(p, 'etcd_password_file');
  let password: string | undefined;
  if (passwordFile !== undefined) {
    if (user === undefined) throw new UsageError('--etcd_password_file needs --etcd_user');
    try {
      password = read(passwordFile).toString();
    } catch (e) {
      // The path is not repeated: it may be a password typed in the wrong place.
      throw new UsageError(`--etcd_password_file: cannot read the file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  } else if (user !== undefined) {
    password = env[PASSWORD_ENV];
    if (password === undefined) throw new UsageError(`--etcd_user needs a password: --etcd_password_file= or $${PASSWORD_ENV}`);
  }
  if (user !== undefined && (user === '' || /[\s:]/.test(user))) throw new UsageError(`--etcd_user: '${user}' is not a user name`);
  password = password?.replace(/\r?\n$/, '');
  if (password === '') throw new UsageError('the etcd password is empty');
  return {
    endpoints,
    tls: https ? { ca, cert, key } : null,
    user: user === undefined ? null : { name: user, password: password! },
    timeoutMs: intOption('etcd_timeout', opt(p, 'etcd_timeout', String(DEFAULT_TIMEOUT_MS)), 100, 600_000),
  };
}

export function serviceKeys(p: Parsed): ServiceKeys {
  return new ServiceKeys(opt(p, 'prefix', DEFAULT_PREFIX), opt(p, 'service', ''));
}

/** The one target a command names: --slot or --fwmark, not both. */
export function selectorOption(p: Parsed): Selector {
  const slot = opt(p, 'slot');
  const fwmark = opt(p, 'fwmark');
  if ((slot === undefined) === (fwmark === undefined)) throw new UsageError('name the target with one of --slot or --fwmark');
  return slot === undefined ? { fwmark: intOption('fwmark', fwmark!, 1, FWMARK_MAX) } : { slot: intOption('slot', slot, 0, INT32_MAX) };
}

/** grpc names the TLS server by the endpoint's address, which Node flags as deprecated on every
 * connection to an IP endpoint: a warning on stderr that says nothing to the user. */
function quietDeprecations(): void {
  process.noDeprecation = true;
}

/**
 * Ends the process soon after a command is done: grpc leaves a connection attempt to an endpoint
 * that never answers open after close, for up to 20 s (the timer is unref'd: it fires only if
 * something is still holding the process).
 */
function exitSoon(): void {
  setTimeout(() => process.exit(), 200).unref();
}

/** Runs `fn` with a client on the command's service; every option must be checked before this. */
async function withRegistry<T>(p: Parsed, fn: (reg: Registry, keys: ServiceKeys) => Promise<T>): Promise<T> {
  const keys = serviceKeys(p);
  const o = etcdOptions(p);
  quietDeprecations();
  const { Registry } = await import('../registry/etcd.js');
  const reg = await Registry.connect(o);
  try {
    return await fn(reg, keys);
  } finally {
    reg.close();
    exitSoon();
  }
}

const DEFAULT_RELIST_MS = 30_000;

/**
 * `nfqlb follow`: runs until SIGTERM or SIGINT, then leaves the table as it is. At start, wrong
 * credentials (or a service name etcd refuses) are one line and exit 1, the table untouched. An
 * unreachable etcd is one line and exit 1 too when there is no local table yet; when there is
 * one, the follower keeps it (lbs go on with the last table, also after a reboot) and keeps
 * trying.
 */
async function follow(p: Parsed): Promise<number> {
  const keys = serviceKeys(p);
  const etcd = etcdOptions(p);
  const shm = opt(p, 'shm', 'nfqlb');
  shmPath(shm);
  const relistMs = intOption('relist', opt(p, 'relist', String(DEFAULT_RELIST_MS)), 100, 3_600_000);
  const metrics = metricsOption(p);
  const tierHealth = tierHealthOptions(p);
  const level = opt(p, 'loglevel');
  if (level !== undefined) log.level = pinoLevel(intOption('loglevel', level, 4, 7));
  quietDeprecations();
  const { RegistryFollower } = await import('../registry/follower.js');
  const follower = new RegistryFollower({ keys, shm, etcd, relistMs });
  // Before the first read: the checker learns the targets from the follower's publications.
  const stopHealth =
    tierHealth === null ? null : (await import('./follow-health.js')).startTierHealth(follower, { keys, etcd, ...tierHealth });
  let stop!: () => void;
  const stopped = new Promise<void>((r) => (stop = r));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  let server: MetricsServer | null = null;
  try {
    if (metrics) {
      const { MetricsServer } = await import('../metrics.js');
      server = await MetricsServer.start(metrics, follower.metrics, () =>
        follower.problem === null ? null : `registry: ${follower.problem}`,
      );
    }
    const hadTable = existsSync(shmPath(shm));
    const first = await Promise.race([
      follower.start().then(
        () => null,
        (e: Error) => e,
      ),
      stopped.then(() => null),
    ]);
    if (first !== null) {
      const code = (first as RegistryError).code;
      if (!hadTable || (code !== 'EUNREACHABLE' && code !== 'EETCD')) throw first;
      log.warn({ err: first.message, shm }, 'registry unreachable at start: keeping the local table, trying again');
    }
    log.info({ service: keys.service, shm }, 'following');
    await stopped;
    return 0;
  } finally {
    await stopHealth?.();
    follower.stop();
    await server?.close();
    exitSoon();
  }
}

const DEFAULT_HC_LEASE_S = 5;

/** `follow --health` and its options (checked also without --health), or null without it. */
function tierHealthOptions(p: Parsed) {
  const lb = opt(p, 'lb', hostname());
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(lb)) throw new UsageError(`--lb: '${lb}' is not a name (letters, digits, _.-, at most 64)`);
  const leaseTtl = intOption('hc_lease', opt(p, 'hc_lease', String(DEFAULT_HC_LEASE_S)), 1, 3600);
  if (!p.opts.has('health')) {
    const stray = ['vip', 'lb', 'hc_lease', ...Object.keys(healthSpecs)].find((n) => p.opts.has(n));
    if (stray !== undefined) throw new UsageError(`--${stray} goes with --health`);
    return null;
  }
  return { health: healthOptions(p), lb, leaseTtl };
}

/** What `registry show` prints: the desired set without the bookkeeping a follower uses. */
export function showJson(keys: ServiceKeys, d: DesiredSet): string {
  return JSON.stringify(
    {
      service: keys.service,
      prefix: keys.prefix,
      revision: d.revision,
      config: d.config,
      targets: d.targets.map(({ slot, fwmark, state, name, ts, lease }) => ({ slot, fwmark, state, name, ts, lease })),
      rejected: d.rejected,
    },
    null,
    2,
  );
}

const selectorSpecs: OptionSpecs = {
  ...serviceSpecs,
  slot: { arg: true, help: 'The target at this slot' },
  fwmark: { arg: true, help: 'The target with this fwmark' },
};

function stateCommand(state: 'draining' | 'active', synopsis: string): CommandTable[string] {
  return {
    synopsis,
    options: selectorSpecs,
    run(p) {
      const sel = selectorOption(p);
      return withRegistry(p, async (reg, keys) => {
        await reg.setState(keys, sel, state);
        return 0;
      });
    },
  };
}

const registryCommands: CommandTable = {
  init: {
    synopsis: 'init --service= [--M=997] [--N=32] [--force]\n  Write the service config (create-only: --force replaces it)',
    options: {
      ...serviceSpecs,
      M: { arg: true, help: 'Maglev lookup table size, rounded down to a prime (default 997)' },
      N: { arg: true, help: 'Max number of targets (slots 0..N-1), <= M (default 32)' },
      force: { help: 'Replace an existing config' },
    },
    run(p) {
      const wantM = intOption('M', opt(p, 'M', '997'), 3, INT32_MAX);
      const N = intOption('N', opt(p, 'N', '32'), 1, INT32_MAX);
      const M = TargetTable.adjustM(wantM);
      if (N > M) throw new UsageError(`N can't be larger than M (${N} > ${M})`);
      if (TargetTable.byteLength(M, N) > 2 ** 30) throw new UsageError(`M=${M}, N=${N} needs more than 1 GiB of shared memory`);
      return withRegistry(p, async (reg, keys) => {
        await reg.init(keys, { M, N }, p.opts.has('force'));
        if (M !== wantM) process.stdout.write(`M adjusted; ${wantM} -> ${M}\n`);
        return 0;
      });
    },
  },
  show: {
    synopsis: 'show --service=\n  Print the targets, the revision and the rejected keys (JSON)',
    options: serviceSpecs,
    run(p) {
      return withRegistry(p, async (reg, keys) => {
        process.stdout.write(`${showJson(keys, await reg.read(keys))}\n`);
        return 0;
      });
    },
  },
  drain: stateCommand('draining', 'drain --service= --slot=|--fwmark=\n  Set a target draining: LBs send it no new flows'),
  undrain: stateCommand('active', 'undrain --service= --slot=|--fwmark=\n  Set a draining target active again'),
  delete: {
    synopsis: 'delete --service= --slot=|--fwmark=\n  Delete a target (also a rejected key, by --slot)',
    options: selectorSpecs,
    run(p) {
      const sel = selectorOption(p);
      return withRegistry(p, async (reg, keys) => {
        await reg.remove(keys, sel);
        return 0;
      });
    },
  },
};

/** `nfqlb registry <command>`: the commands on a service's keys. */
export function registryMain(argv: readonly string[]): Promise<number> {
  return dispatch('nfqlb registry', registryCommands, argv);
}

/** The top-level nfqlb commands of the registry: register, and registry (dispatched by registryMain). */
export const registerCommands: CommandTable = {
  registry: {
    synopsis: `registry ${Object.keys(registryCommands).join('|')} --service= [opt...]\n  A tier's targets in etcd ('nfqlb registry -h')`,
    options: {},
    run: (p) => registryMain(p.args),
  },
  register: {
    synopsis: [
      'register --service= --fwmark= [--name=] [--slot=] [--lease=SECONDS [--drain=MS]]',
      '  Claim a slot for a target (the lowest free one, or --slot). With --lease, stay running and keep',
      '  the lease alive; on SIGTERM set the target draining, wait --drain, then delete it. A draining',
      '  registration of the fwmark is taken over (a restarted target): its old holder leaves it alone',
    ].join('\n'),
    options: {
      ...serviceSpecs,
      fwmark: { arg: true, required: true, help: `The target's fwmark, 1..${FWMARK_MAX}` },
      name: { arg: true, help: 'A name for people (e.g. the host)' },
      slot: { arg: true, help: 'Claim this slot, or fail (default the lowest free one)' },
      lease: { arg: true, help: 'Hold the key with a lease of this TTL, seconds (e.g. 10), and stay running' },
      drain: { arg: true, help: 'With --lease: ms the target stays draining after SIGTERM before its key is deleted (default 2000)' },
    },
    run(p) {
      const fwmark = intOption('fwmark', opt(p, 'fwmark', ''), 1, FWMARK_MAX);
      const name = opt(p, 'name') ?? null;
      if (name !== null && !/^[\x21-\x7e]{1,64}$/.test(name)) {
        throw new UsageError(`--name: '${name}' is not 1..64 printable characters without spaces`);
      }
      const slotText = opt(p, 'slot');
      const slot = slotText === undefined ? undefined : intOption('slot', slotText, 0, INT32_MAX);
      const leaseText = opt(p, 'lease');
      const ttl = leaseText === undefined ? undefined : intOption('lease', leaseText, 1, 3600);
      if (ttl === undefined && opt(p, 'drain') !== undefined) throw new UsageError('--drain goes with --lease');
      const drainMs = intOption('drain', opt(p, 'drain', '2000'), 0, 600_000);
      return withRegistry(p, async (reg, keys) => {
        const print = ({ slot, key, revision, tookOver }: Claim, lease: string | null) => {
          const claimed = { service: keys.service, slot, fwmark, key, revision, lease, took_over: tookOver !== null };
          process.stdout.write(`${JSON.stringify(claimed)}\n`);
        };
        if (ttl === undefined) {
          print(await reg.claim(keys, fwmark, { name, slot }), null);
          return 0;
        }
        const { holdRegistration } = await import('../registry/sidecar.js');
        return holdRegistration(reg, keys, { fwmark, name, slot, ttl, drainMs, onClaim: (c, l) => print(c, BigInt(l.id).toString(16)) });
      });
    },
  },
  follow: {
    synopsis: [
      'follow --service= [--shm=nfqlb] [--relist=MS] [--metrics=[ADDR:]PORT] [--health= --vip= [--lb=] [--hc_*=]]',
      "  Make the local table follow the service's targets in the registry (stays running); with --health,",
      '  hold down the targets a majority of the live LBs see down (docs/health.md)',
    ].join('\n'),
    options: {
      ...serviceSpecs,
      shm: { arg: true, help: 'The local target table (default nfqlb); made from the config when missing' },
      relist: { arg: true, help: `ms between full re-reads of the service, besides the watch (default ${DEFAULT_RELIST_MS})` },
      metrics: { arg: true, help: 'Serve Prometheus /metrics and /healthz on [ADDR:]PORT (default off; a port alone is loopback)' },
      loglevel: { arg: true, help: 'Log level: 4 warning, 5 notice, 6 info, 7 debug (default info, or $LOG_LEVEL)' },
      health: { arg: true, help: "Health checks: tcp:PORT or http:PORT/PATH; publishes this LB's view (needs write access)" },
      ...healthSpecs,
      lb: { arg: true, help: "This LB's name in the tier's health views (default the host name)" },
      hc_lease: { arg: true, help: `Seconds the view outlives an LB that stopped (default ${DEFAULT_HC_LEASE_S})` },
    },
    run: follow,
  },
};
