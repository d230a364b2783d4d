// `lblab --registry`: the tier's targets in etcd (docs/registry.md). The lab starts a 3-member
// etcd cluster with TLS and users (./etcd.ts), writes the service's config, runs an
// `nfqlb register --lease` sidecar beside every server (server n claims slot n with fwmark
// 100+n, the slots and fwmarks the lab's direct `activate` uses, so the Maglev tables match) and
// an `nfqlb follow` on every LB in place of the lab's activate/deactivate. Servers leave and
// come back only through the registry: the sidecar is stopped (SIGTERM: draining, then deleted;
// SIGKILL: the lease runs out) and started again: a sidecar started while its predecessor still
// drains takes the draining registration over at once, as a restarted target does.
//
// The lab reads every LB's table straight from /dev/shm (the names are global) to time and
// compare what the followers publish, and an operator's client (./registry-writer.ts) in the
// first member's namespace makes changes whose `ts` the timing starts from.
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { NFQLB_TABLE, TableFollower } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import { EtcdCluster } from './etcd.js';
import { binArgv, type LabHandle, repoRoot, shmName } from './lb-setup.js';
import type { WriterAnswer, WriterConfig, WriterOp } from './registry-writer.js';
import { serverFwmark } from './rules.js';
import { routerAddr, VIP, vmName } from './topology.js';
import { HOST_PORT } from './traffic/server.js';

export const SERVICE = 'web';
export const KEY_PREFIX = '/tslb';
/** The sidecars' lease (s): a SIGKILLed target leaves every table within this plus the expiry's lag. */
export const LEASE_S = 5;
/** How long a stopped sidecar keeps its target draining before it deletes it (ms), stateless. */
export const DRAIN_MS = 1000;
/** The port each follower serves its metrics on, at the router's address on net 1. */
export const FOLLOW_METRICS_PORT = 9130;
/** The lab's Maglev M, as its direct `nfqlb init --M=900` (rounded down to the prime 887). */
const M = 900;

/** Slot -> fwmark of the targets a table (or the registry) has active. */
export type Slots = Map<number, number>;

/** The active targets of a table. */
export function activeSlots(t: TargetTable): Slots {
  const slots: Slots = new Map();
  for (const [slot, fw] of t.active.entries()) if (fw >= 0) slots.set(slot, fw);
  return slots;
}

export const sameSlots = (a: Slots, b: Slots): boolean => a.size === b.size && [...a].every(([s, f]) => b.get(s) === f);

/** One metric's first sample in Prometheus text, or undefined. */
export function metricValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

export class RegistryTier {
  readonly etcd: EtcdCluster;
  /** N of the service: room for the lab's servers and the propagation test's 32 targets. */
  readonly N: number;
  private readonly sidecars = new Map<number, ChildProcess>();
  private readonly followers = new Map<number, ChildProcess>();
  private readonly tables = new Map<number, TableFollower<TargetTable>>();
  private writer: Writer | null = null;
  private starts = 0;

  constructor(
    private readonly lab: LabHandle,
    minSlots: number,
    /** The sidecars' --drain (ms). */
    readonly drainMs: number,
    /** `nfqlb follow --health` on every LB (./health-tests.ts); it publishes views, so it runs as writer. */
    private readonly health = false,
  ) {
    this.etcd = new EtcdCluster(lab, KEY_PREFIX);
    this.N = Math.max(minSlots, lab.topo.nvm) + 1;
  }

  private nfqlb(ns: string, args: string[]): string {
    return this.lab.topo.exec(ns, [...binArgv('nfqlb'), ...args]);
  }

  /** The cluster, the service's config, the writer, and a sidecar per server. */
  async start(): Promise<void> {
    await this.etcd.start();
    this.nfqlb(this.etcd.operatorNs, [
      'registry',
      'init',
      ...this.etcd.clientOptions('writer'),
      `--service=${SERVICE}`,
      `--M=${M}`,
      `--N=${this.N}`,
    ]);
    this.writer = await Writer.start(this.lab, this.etcd);
    await Promise.all(Array.from({ length: this.lab.topo.nvm }, (_, k) => this.startSidecar(k + 1)));
  }

  /**
   * Starts server n's sidecar (`nfqlb register --lease`); resolves once it has claimed slot n,
   * taking it over from a stopped sidecar that still drains it. The stopped one is left to end
   * its drain (the lab SIGKILLs whatever still runs when it is removed). Answers whether that
   * predecessor was still running (so the claim was a take-over).
   */
  async startSidecar(n: number): Promise<boolean> {
    const old = this.sidecars.get(n);
    const draining = old !== undefined && old.exitCode === null && old.signalCode === null;
    const ns = this.lab.topo.ns.server(n);
    const argv = [
      ...binArgv('nfqlb'),
      'register',
      ...this.etcd.clientOptions('writer'),
      `--service=${SERVICE}`,
      `--fwmark=${serverFwmark(n)}`,
      `--name=${vmName(n)}`,
      `--slot=${n}`,
      `--lease=${LEASE_S}`,
      `--drain=${this.drainMs}`,
    ];
    this.sidecars.set(n, await this.lab.daemon(ns, argv, `${ns}-register-${this.starts++}`, '"lease"'));
    return draining;
  }

  /** Signals server n's sidecar; SIGTERM drains and deregisters (resolves at once, not at its exit). */
  stopSidecar(n: number, signal: NodeJS.Signals): void {
    const p = this.sidecars.get(n);
    if (!p || p.exitCode !== null || p.signalCode !== null) throw new Error(`server ${n}: no sidecar running`);
    p.kill(signal);
  }

  /** `nfqlb follow` argv for router i, applying the registry to table `shm`. */
  followArgv(i: number): string[] {
    return [
      ...binArgv('nfqlb'),
      'follow',
      ...this.etcd.clientOptions(this.health ? 'writer' : 'reader'),
      `--service=${SERVICE}`,
      `--shm=${shmName(this.lab.topo, 'nfqlb', i)}`,
      `--metrics=${routerAddr(i, 1, 4)}:${FOLLOW_METRICS_PORT}`,
      // Probes to the lab's VIPs on the servers' mconnect port, this LB named as its router.
      ...(this.health ? [`--health=tcp:${HOST_PORT}`, `--vip=${VIP[4]},${VIP[6]}`, `--lb=${vmName(200 + i)}`] : []),
    ];
  }

  /** Starts router i's follower; resolves once its table holds what the registry holds (`expected`). */
  async startFollower(i: number, expected: Slots): Promise<void> {
    const ns = this.lab.topo.ns.router(i);
    this.followers.set(i, await this.lab.daemon(ns, this.followArgv(i), `${ns}-follow-${this.starts++}`, '"following"'));
    await this.waitTables(`router ${i}'s follower to publish the registry's targets`, [i], expected, 20_000);
  }

  /** Signals router i's follower; resolves once it has exited. */
  async stopFollower(i: number, signal: NodeJS.Signals): Promise<void> {
    const p = this.followers.get(i);
    if (!p || p.exitCode !== null || p.signalCode !== null) throw new Error(`router ${i}: no follower running`);
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill(signal);
    await exited;
  }

  /** Router i's table as published now (followed across a re-init). */
  table(i: number): TargetTable {
    let f = this.tables.get(i);
    if (!f) {
      f = new TableFollower(NFQLB_TABLE, shmName(this.lab.topo, 'nfqlb', i), { log: false });
      this.tables.set(i, f);
    }
    f.check();
    return f.table;
  }

  /**
   * Polls the tables of `routers` every ms until each holds `expected`; returns when each got
   * there (Date.now()). Throws after timeoutMs naming what each holds.
   */
  async waitTables(what: string, routers: readonly number[], expected: Slots, timeoutMs: number): Promise<Map<number, number>> {
    const at = new Map<number, number>();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const i of routers) {
        if (at.has(i)) continue;
        try {
          if (sameSlots(activeSlots(this.table(i)), expected)) at.set(i, Date.now());
        } catch {
          /* not published yet */
        }
      }
      if (at.size === routers.length) return at;
      if (Date.now() > deadline) {
        const held = routers.map((i) => {
          try {
            return `${i}: ${[...activeSlots(this.table(i))].map(([s, f]) => `${s}=${f}`).join(' ')}`;
          } catch (e) {
            return `${i}: ${(e as Error).message}`;
          }
        });
        const want = [...expected].map(([s, f]) => `${s}=${f}`).join(' ');
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: want ${want}; routers ${held.join('; ')}`);
      }
      await sleep(1);
    }
  }

  /** The followers' metrics (Prometheus text) of these routers, in order: one curl from the operator's namespace. */
  metrics(routers: readonly number[]): string[] {
    const urls = routers.map((i) => `http://${routerAddr(i, 1, 4)}:${FOLLOW_METRICS_PORT}/metrics`);
    const END = '# end of scrape';
    const text = this.lab.topo.exec(this.etcd.operatorNs, ['curl', '-sf', '--max-time', '2', '-w', `${END}\n`, ...urls]);
    return text.split(`${END}\n`).slice(0, routers.length);
  }

  /** Lets the operator's client go (it exits at the end of its input). */
  close(): void {
    this.writer?.close();
  }

  /** A change through the operator's client; answers the revision and the entry's ts. */
  write(op: WriterOp): Promise<WriterAnswer> {
    if (!this.writer) throw new Error('the registry tier is not started');
    return this.writer.send(op);
  }
}

/** The operator's client (./registry-writer.ts): one change per line, one answer per line, in order. */
class Writer {
  private readonly waiting: ((line: string) => void)[] = [];

  private constructor(private readonly p: ChildProcess) {
    createInterface({ input: p.stdout! }).on('line', (line) => this.waiting.shift()?.(line));
  }

  static async start(lab: LabHandle, etcd: EtcdCluster): Promise<Writer> {
    const config: WriterConfig = {
      endpoints: etcd.endpoints.split(','),
      ca: etcd.pki.ca,
      cert: etcd.pki.client.cert,
      key: etcd.pki.client.key,
      user: 'writer',
      passwordFile: etcd.passwordFile('writer'),
      prefix: KEY_PREFIX,
      service: SERVICE,
    };
    const script = join(repoRoot(), 'dist', 'src', 'lab', 'registry-writer.js');
    const p = lab.topo.spawn(etcd.operatorNs, [process.execPath, script, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const w = new Writer(p);
    const ready = await w.next(10_000);
    if (!ready.includes('"ready"')) throw new Error(`registry writer: ${ready}`);
    return w;
  }

  private next(timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`registry writer: no answer in ${timeoutMs} ms`)), timeoutMs);
      this.waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }

  close(): void {
    this.p.stdin!.end();
  }

  async send(op: WriterOp): Promise<WriterAnswer> {
    const answer = this.next(15_000);
    this.p.stdin!.write(`${JSON.stringify(op)}\n`);
    const a = JSON.parse(await answer) as WriterAnswer | { error: string };
    if ('error' in a) throw new Error(`registry writer: ${JSON.stringify(op)}: ${a.error}`);
    return a;
  }
}
