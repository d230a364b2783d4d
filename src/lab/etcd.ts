// etcd for the registry: the certificates, the member command line and the users, written once
// for the lab (`lblab --registry`: a 3-member cluster in namespaces of its own) and the tests
// that start an etcd of their own.
//
// TLS everywhere: a CA, a certificate per member for its addresses (serving clients and, for the
// lab's cluster, its peers), and one client certificate whose name is no etcd user, so a client
// without a password has no rights. Auth: root, a tier writer (readwrite on the key prefix) and a
// reader (read on it).
import { type ChildProcess, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LabHandle } from './lb-setup.js';
import { run } from './netns.js';
import { hostAddr } from './topology.js';

export const CLIENT_PORT = 2379;
const PEER_PORT = 2380;
/** The lab's members are hosts 231.. on net 1, where the LBs and the servers are. */
const MEMBER_HOST_BASE = 230;
/** What etcd 3.4 logs once it serves clients (after it has joined its cluster). */
const READY = 'ready to serve client requests';

export type EtcdUser = 'root' | 'writer' | 'reader';

/** Where certificates and keys are, by what they are for. */
export interface EtcdPki {
  readonly dir: string;
  readonly ca: string;
  readonly client: { cert: string; key: string };
  server(member: string): { cert: string; key: string };
}

/** Makes a CA (`<cn>-ca`), a certificate per member for its IPs, and a client certificate `<cn>-client` in `dir`. */
export function makeEtcdPki(dir: string, cn: string, members: Readonly<Record<string, readonly string[]>>): EtcdPki {
  mkdirSync(dir, { recursive: true });
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', `/CN=${cn}-ca`);
  const sign = (name: string, ext: string): void => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}-${name}`);
    const x509 = ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial'];
    openssl(...x509, '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
  };
  // A member is its peers' client too: both usages.
  for (const [name, ips] of Object.entries(members)) {
    sign(name, `subjectAltName=${ips.map((ip) => `IP:${ip}`).join(',')}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  }
  sign('client', 'extendedKeyUsage=clientAuth\n');
  const pair = (name: string) => ({ cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) });
  return { dir, ca: join(dir, 'ca.crt'), client: pair('client'), server: pair };
}

const url = (scheme: 'https' | 'http', host: string, port: number): string =>
  `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`;

export interface MemberSpec {
  name: string;
  host: string;
}

/**
 * `etcd` argv for member `m` of `cluster`: clients over TLS with client certificates; peers over
 * TLS too, or over plain http on loopback (`peerTls` false: a one-member etcd has no peers).
 */
export function etcdArgv(m: MemberSpec, cluster: readonly MemberSpec[], dataDir: string, pki: EtcdPki, peerTls = true): string[] {
  const client = url('https', m.host, CLIENT_PORT);
  const peer = (x: MemberSpec): string => url(peerTls ? 'https' : 'http', x.host, PEER_PORT);
  const { cert, key } = pki.server(m.name);
  return [
    'etcd',
    `--name=${m.name}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer(m)}`,
    `--initial-advertise-peer-urls=${peer(m)}`,
    `--initial-cluster=${cluster.map((x) => `${x.name}=${peer(x)}`).join(',')}`,
    `--cert-file=${cert}`,
    `--key-file=${key}`,
    `--trusted-ca-file=${pki.ca}`,
    '--client-cert-auth',
    ...(peerTls
      ? [`--peer-cert-file=${cert}`, `--peer-key-file=${key}`, `--peer-trusted-ca-file=${pki.ca}`, '--peer-client-cert-auth']
      : []),
  ];
}

/** `etcdctl` environment for these endpoints with the client certificate, as `user:password` or no user. */
export function etcdctlEnv(endpoints: string, pki: EtcdPki, user: string | null): Record<string, string> {
  return {
    ETCDCTL_ENDPOINTS: endpoints,
    ETCDCTL_CACERT: pki.ca,
    ETCDCTL_CERT: pki.client.cert,
    ETCDCTL_KEY: pki.client.key,
    ...(user === null ? {} : { ETCDCTL_USER: user }),
  };
}

/** The etcdctl commands (run before auth is on, so as no user) that create the users and enable auth. */
export function etcdAuthCommands(keyPrefix: string, passwords: Readonly<Record<EtcdUser, string>>): string[][] {
  const dir = keyPrefix.endsWith('/') ? keyPrefix : `${keyPrefix}/`;
  return [
    ['user', 'add', 'root', `--new-user-password=${passwords.root}`],
    ['user', 'grant-role', 'root', 'root'],
    ['role', 'add', 'tier-writer'],
    ['role', 'grant-permission', 'tier-writer', '--prefix=true', 'readwrite', dir],
    ['user', 'add', 'writer', `--new-user-password=${passwords.writer}`],
    ['user', 'grant-role', 'writer', 'tier-writer'],
    ['role', 'add', 'tier-reader'],
    ['role', 'grant-permission', 'tier-reader', '--prefix=true', 'read', dir],
    ['user', 'add', 'reader', `--new-user-password=${passwords.reader}`],
    ['user', 'grant-role', 'reader', 'tier-reader'],
    ['auth', 'enable'],
  ];
}

/** Why the lab's etcd cannot run here, or null. */
export function etcdUnavailable(): string | null {
  try {
    run(['etcd', '--version']);
    run(['etcdctl', 'version']);
  } catch {
    return "etcd is not installed (apt-get install etcd-server etcd-client, then 'systemctl disable --now etcd')";
  }
  return null;
}

/** Where a lab's etcd certificates, passwords and data dirs go (removed with the lab). */
export function etcdDir(prefix: string): string {
  return `/tmp/${prefix}etcd`;
}

/** Removes a lab's etcd files (the members die with its namespaces). */
export function removeEtcdFiles(prefix: string): void {
  if (existsSync(etcdDir(prefix))) rmSync(etcdDir(prefix), { recursive: true, force: true });
}

interface Member extends MemberSpec {
  ns: string;
  proc: ChildProcess | null;
  starts: number;
}

/** The lab's etcd cluster: members in namespaces of their own on net 1, started and removed by the lab. */
export class EtcdCluster {
  readonly dir: string;
  readonly pki: EtcdPki;
  /** The members' client URLs, comma-separated (what `--etcd=` takes). */
  readonly endpoints: string;
  private readonly members: Member[];
  private readonly passwords: Record<EtcdUser, string>;

  constructor(
    private readonly lab: LabHandle,
    readonly keyPrefix: string,
    size = 3,
  ) {
    const { topo } = lab;
    this.dir = etcdDir(topo.prefix);
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.members = Array.from({ length: size }, (_, k) => {
      const host = MEMBER_HOST_BASE + k + 1;
      return { name: `etcd${k + 1}`, host: hostAddr(1, host, 4), ns: topo.addHost(host, 1), proc: null, starts: 0 };
    });
    this.endpoints = this.members.map((m) => url('https', m.host, CLIENT_PORT)).join(',');
    this.pki = makeEtcdPki(join(this.dir, 'pki'), `${topo.prefix}etcd`, Object.fromEntries(this.members.map((m) => [m.name, [m.host]])));
    this.passwords = { root: secret(), writer: secret(), reader: secret() };
    for (const [user, pw] of Object.entries(this.passwords)) writeFileSync(this.passwordFile(user as EtcdUser), `${pw}\n`, { mode: 0o600 });
  }

  /** Starts every member, waits for the cluster, then creates the users and turns auth on. */
  async start(): Promise<void> {
    await this.restartAll();
    for (const args of etcdAuthCommands(this.keyPrefix, this.passwords)) this.etcdctl(args, null);
  }

  /** Where the lab's operator works: the first member's namespace (it reaches every member). */
  get operatorNs(): string {
    return this.members[0]!.ns;
  }

  /** The file holding `user`'s password (for `--etcd_password_file`). */
  passwordFile(user: EtcdUser): string {
    return join(this.dir, `${user}.pw`);
  }

  /** The nfqlb options that reach the cluster as `user`. */
  clientOptions(user: EtcdUser): string[] {
    return [
      `--etcd=${this.endpoints}`,
      `--etcd_cacert=${this.pki.ca}`,
      `--etcd_cert=${this.pki.client.cert}`,
      `--etcd_key=${this.pki.client.key}`,
      `--etcd_user=${user}`,
      `--etcd_password_file=${this.passwordFile(user)}`,
    ];
  }

  /** etcdctl from the first member's namespace, against every member; as root unless told. */
  etcdctl(args: readonly string[], user: EtcdUser | null = 'root'): string {
    const env = etcdctlEnv(this.endpoints, this.pki, user && `${user}:${this.passwords[user]}`);
    const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    return run(['ip', 'netns', 'exec', this.operatorNs, 'env', ...envArgs, 'etcdctl', '--dial-timeout=2s', ...args]);
  }

  /** Members (1-based) whose etcd runs. */
  running(): number[] {
    return this.members.flatMap((m, k) => (m.proc && m.proc.exitCode === null && m.proc.signalCode === null ? [k + 1] : []));
  }

  /** The member (1-based) that leads, as the running members see it; null without a leader. */
  leader(): number | null {
    // Member IDs are 64-bit: read as strings, not as JSON numbers.
    const text = this.etcdctl(['endpoint', 'status', '-w', 'json']).replace(/"(member_id|leader)":(\d+)/g, '"$1":"$2"');
    const status = JSON.parse(text) as { Endpoint: string; Status: { header: { member_id: string }; leader: string } }[];
    const lead = status.find((s) => s.Status.header.member_id === s.Status.leader)?.Endpoint;
    const k = this.members.findIndex((m) => lead === url('https', m.host, CLIENT_PORT));
    return k < 0 ? null : k + 1;
  }

  /** SIGKILLs member i (1-based); resolves once it is gone. */
  async kill(i: number): Promise<void> {
    const p = this.members[i - 1]?.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) throw new Error(`etcd member ${i} is not running`);
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill('SIGKILL');
    await exited;
  }

  /** Starts member i again on its data dir; resolves once it serves (it needs a quorum for that). */
  async restart(i: number): Promise<void> {
    const m = this.members[i - 1];
    if (!m) throw new RangeError(`no etcd member ${i}`);
    const argv = etcdArgv(m, this.members, join(this.dir, `${m.name}.data`), this.pki);
    // A restart logs to a file of its own: the ready line of the last run is in the old one.
    m.proc = await this.lab.daemon(m.ns, argv, `${m.ns}-etcd${m.starts++ === 0 ? '' : `-${m.starts}`}`, READY);
  }

  /** Starts every member that does not run, together (each waits for a quorum). */
  async restartAll(): Promise<void> {
    const down = this.members.map((_, k) => k + 1).filter((i) => !this.running().includes(i));
    await Promise.all(down.map((i) => this.restart(i)));
  }

  /** SIGKILLs every running member. */
  async killAll(): Promise<void> {
    await Promise.all(this.running().map((i) => this.kill(i)));
  }
}

const secret = (): string => randomBytes(12).toString('base64url');
