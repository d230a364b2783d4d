// A real etcd (one member) with TLS and users, in a network namespace the test made, for the
// tests of the registry commands and of the follower, set up as the lab sets up its cluster
// (src/lab/etcd.ts): certificates made with openssl into a temp dir; root, a tier writer
// (readwrite on /tslb/) and a reader (read only); every client presents a certificate whose name
// is no user, so a client without a password has no rights. The member can be killed and started
// again on its data (users and keys kept).

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type EtcdPki, etcdArgv, etcdAuthCommands, etcdctlEnv, makeEtcdPki } from '../../src/lab/etcd.js';
import { spawnInNs } from '../../src/lab/netns.js';
import { waitFor } from '../wait.js';
import { runIn } from './harness.js';

const ENDPOINT = 'https://127.0.0.1:2379';
const MEMBER = { name: 'm1', host: '127.0.0.1' };
const PASSWORDS = { root: 'rootpw', writer: 'writerpw', reader: 'readerpw' };

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
    private readonly pki: EtcdPki,
  ) {
    this.tls = [
      `--etcd=${ENDPOINT}`,
      `--etcd_cacert=${this.file('ca.crt')}`,
      `--etcd_cert=${this.file('client.crt')}`,
      `--etcd_key=${this.file('client.key')}`,
    ];
    this.writer = [...this.tls, '--etcd_user=writer', `--etcd_password_file=${this.file('writer.pw')}`];
    this.etcdctlEnv = etcdctlEnv(ENDPOINT, pki, null);
  }

  /** Certificates, a member serving in `ns` (which must exist), its users and roles; auth on. */
  static async create(ns: string, tmpPrefix: string): Promise<EtcdFixture> {
    const dir = mkdtempSync(join(tmpdir(), tmpPrefix));
    const f = new EtcdFixture(ns, dir, makeEtcdPki(dir, tmpPrefix.replace(/-$/, ''), { [MEMBER.name]: [MEMBER.host] }));
    writeFileSync(f.file('writer.pw'), `${PASSWORDS.writer}\n`, { mode: 0o600 });
    await f.start();
    for (const args of etcdAuthCommands('/tslb', PASSWORDS)) f.etcdctl(args, null);
    return f;
  }

  file(name: string): string {
    return join(this.dir, name);
  }

  /** Starts the member (again, on its data) and waits until it serves. */
  async start(): Promise<void> {
    const etcd = spawnInNs(this.ns, etcdArgv(MEMBER, [MEMBER], this.file('data'), this.pki, false));
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
}
