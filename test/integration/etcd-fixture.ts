// A real etcd (one member) with TLS and users, in a network namespace the test made, for the
// tests of the registry commands and of the follower: certificates made with openssl into a temp
// dir; root, a tier writer (readwrite on /tslb/) and a reader (read only); every client presents
// a certificate whose name is no user, so a client without a password has no rights. The member
// can be killed and started again on its data (users and keys kept).

import { type ChildProcess, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnInNs } from '../../src/lab/netns.js';
import { waitFor } from '../wait.js';
import { runIn } from './harness.js';

const ENDPOINT = 'https://127.0.0.1:2379';
const PEER = 'http://127.0.0.1:2380';

export interface Kv {
  key: string;
  value: string;
  lease: string | null;
}

export class EtcdFixture {
  readonly endpoint = ENDPOINT;
  /** The client's TLS options: etcd wants a client certificate. */
  readonly tls: string[];
  /** The tier writer, its password in a file. */
  readonly writer: string[];
  /** etcdctl's connection (environment). */
  readonly etcdctlEnv: Record<string, string>;
  private proc: ChildProcess | null = null;

  private constructor(
    readonly ns: string,
    /** The temp dir of the certificates (ca.crt, client.crt, client.key), writer.pw and the data. */
    readonly dir: string,
  ) {
    this.tls = [
      `--etcd=${ENDPOINT}`,
      `--etcd_cacert=${this.file('ca.crt')}`,
      `--etcd_cert=${this.file('client.crt')}`,
      `--etcd_key=${this.file('client.key')}`,
    ];
    this.writer = [...this.tls, '--etcd_user=writer', `--etcd_password_file=${this.file('writer.pw')}`];
    this.etcdctlEnv = {
      ETCDCTL_ENDPOINTS: ENDPOINT,
      ETCDCTL_CACERT: this.file('ca.crt'),
      ETCDCTL_CERT: this.file('client.crt'),
      ETCDCTL_KEY: this.file('client.key'),
    };
  }

  /** Certificates, a member serving in `ns` (which must exist), its users and roles; auth on. */
  static async create(ns: string, tmpPrefix: string): Promise<EtcdFixture> {
    const f = new EtcdFixture(ns, mkdtempSync(join(tmpdir(), tmpPrefix)));
    f.makeCerts(tmpPrefix);
    writeFileSync(f.file('writer.pw'), 'writerpw\n', { mode: 0o600 });
    await f.start();
    for (const args of [
      ['user', 'add', 'root', '--new-user-password=rootpw'],
      ['user', 'grant-role', 'root', 'root'],
      ['role', 'add', 'tier-writer'],
      ['role', 'grant-permission', 'tier-writer', '--prefix=true', 'readwrite', '/tslb/'],
      ['user', 'add', 'writer', '--new-user-password=writerpw'],
      ['user', 'grant-role', 'writer', 'tier-writer'],
      ['role', 'add', 'tier-reader'],
      ['role', 'grant-permission', 'tier-reader', '--prefix=true', 'read', '/tslb/'],
      ['user', 'add', 'reader', '--new-user-password=readerpw'],
      ['user', 'grant-role', 'reader', 'tier-reader'],
      ['auth', 'enable'],
    ])
      f.etcdctl(args, null);
    return f;
  }

  file(name: string): string {
    return join(this.dir, name);
  }

  /** Starts the member (again, on its data) and waits until it serves. */
  async start(): Promise<void> {
    const etcd = spawnInNs(this.ns, [
      'etcd',
      '--name=m1',
      `--data-dir=${this.file('data')}`,
      `--listen-client-urls=${ENDPOINT}`,
      `--advertise-client-urls=${ENDPOINT}`,
      `--listen-peer-urls=${PEER}`,
      `--initial-advertise-peer-urls=${PEER}`,
      `--initial-cluster=m1=${PEER}`,
      `--cert-file=${this.file('server.crt')}`,
      `--key-file=${this.file('server.key')}`,
      `--trusted-ca-file=${this.file('ca.crt')}`,
      '--client-cert-auth',
    ]);
    this.proc = etcd;
    etcd.stderr!.resume();
    etcd.stdout!.resume();
    const healthy = () => runIn(this.ns, ['etcdctl', 'endpoint', 'health'], { env: this.etcdctlEnv }).status === 0;
    await waitFor('etcd to serve', healthy, { timeout: 20_000, interval: 200 });
  }

  /** SIGKILLs the member and waits until it is gone. */
  async kill(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  /** Kills the member and removes the temp dir. */
  async close(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** etcdctl in the namespace, as root unless told. */
  etcdctl(args: string[], user: string | null = 'root:rootpw'): string {
    const r = runIn(this.ns, ['etcdctl', ...args], { env: { ...this.etcdctlEnv, ...(user ? { ETCDCTL_USER: user } : {}) } });
    if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  /** The keys under `prefix` and the store's revision, as etcd holds them. */
  kvs(prefix: string): { revision: number; kvs: Kv[] } {
    // Lease IDs are 64-bit: read as strings, not as JSON numbers.
    const r = JSON.parse(this.etcdctl(['get', '--prefix', prefix, '-w', 'json']).replace(/"lease":(\d+)/g, '"lease":"$1"')) as {
      header: { revision: number };
      kvs?: { key: string; value: string; lease?: string }[];
    };
    const b64 = (s: string) => Buffer.from(s, 'base64').toString();
    return {
      revision: r.header.revision,
      kvs: (r.kvs ?? []).map((kv) => ({ key: b64(kv.key), value: b64(kv.value), lease: kv.lease ? BigInt(kv.lease).toString(16) : null })),
    };
  }

  /** The JSON value of one key, or undefined. */
  value(key: string): Record<string, unknown> | undefined {
    const kv = this.kvs(key).kvs.find((k) => k.key === key);
    return kv && (JSON.parse(kv.value) as Record<string, unknown>);
  }

  private openssl(...args: string[]): void {
    execFileSync('openssl', args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** A CA, a server certificate for 127.0.0.1 and a client certificate that names no etcd user. */
  private makeCerts(cnPrefix: string): void {
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    this.openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', `/CN=${cnPrefix}ca`);
    const exts = { server: 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n', client: 'extendedKeyUsage=clientAuth\n' };
    for (const [name, ext] of Object.entries(exts)) {
      writeFileSync(this.file(`${name}.ext`), ext);
      this.openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cnPrefix}${name}`);
      const sign = ['-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', `${name}.ext`];
      this.openssl('x509', '-req', '-in', `${name}.csr`, '-out', `${name}.crt`, ...sign);
    }
  }
}
