// Debian's Prometheus against a lab tier, with the configuration and alerts of contrib/prometheus
// (the configuration docs/metrics.md shows): an nfqlb lb and its health checker on router 1
// (the reference router setup), an xdplb lb and a flowlb on router 2, two followers of a real
// etcd, and Prometheus in a namespace of its own on the tester's net. Through Prometheus's HTTP
// API, every PromQL expression that README.md and docs/metrics.md show returns data from their
// real series, the alert rules load and evaluate on them, losing etcd makes the registry alert
// active, and killing a server's listener makes the target-down alert fire. docs/metrics.md's
// promtool lines run here too.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ipBatch } from '../../src/lab/netns.js';
import { hostAddr, routerAddr, type Topology } from '../../src/lab/topology.js';
import { waitFor } from '../wait.js';
import { docCommands, fencedBlocks, inlineCode, type Section } from './doc-blocks.js';
import { EtcdFixture } from './etcd-fixture.js';
import {
  activateServers,
  activateXdplbServers,
  createNfqueueLab,
  type Daemon,
  mconnect,
  NFQLB,
  nfqlb,
  nfqlbIn,
  ROOT,
  requireBuild,
  startDaemon,
  startXdplb,
  tearDownLab,
  XDPLB,
} from './harness.js';

const PREFIX = 'tpm-';
const SHM = 'tpm-targets';
/** flowlb's one flow goes to this table, which has no active target. */
const EMPTY = 'tpm-empty';
/** The fragment tables of the lb and the flowlb. */
const FT_SHM = ['tpm-ftlb', 'tpm-ftflow'] as const;
const XDP_SHM = 'tpm-xdplb';
const NVM = 2;
const PROM_NS = `${PREFIX}prom`;
const PROM_PORT = 9090;
/** The Prometheus host on net 2 (the tester's), next to the routers' .201 and .202. */
const PROM_ADDR = hostAddr(2, 230, 4);
const CONFIG = `${ROOT}contrib/prometheus/prometheus.yml`;
const ALERTS = `${ROOT}contrib/prometheus/alerts.yml`;
/** The lbs' endpoints as the lab's Prometheus scrapes them (all on the routers' net-2 addresses). */
const TARGETS = {
  lb: `${routerAddr(1, 2, 4)}:9110`,
  health: `${routerAddr(1, 2, 4)}:9111`,
  xdplb: `${routerAddr(2, 2, 4)}:9110`,
  flowlb: `${routerAddr(2, 2, 4)}:9111`,
  follow1: `${routerAddr(1, 2, 4)}:9112`,
  follow2: `${routerAddr(1, 2, 4)}:9113`,
};
/** The tables of the two followers of service web. */
const FOLLOWER_SHM = ['tpm-follow1', 'tpm-follow2'] as const;
const ALERTS_SECTION: Section = ['docs/metrics.md', 'Alerts'];

let topo: Topology;
let router: string;
const procs: ChildProcess[] = [];
/** The traffic servers' processes, server 1 first. */
const servers: ChildProcess[] = [];
const daemons: Daemon[] = [];
const dir = mkdtempSync(join(tmpdir(), 'tpm-'));
let prometheusOut = '';
let etcd: EtcdFixture | undefined;

/**
 * contrib/prometheus/prometheus.yml as the lab runs it: its target list replaced by the lab's
 * lbs and its scrape and evaluation intervals by 1 s, nothing else. Each edit must find its
 * line, so a changed file fails here instead of running unedited.
 */
function labConfig(text: string, targets: readonly string[]): string {
  const edits: [RegExp, string][] = [
    [/^( *- targets: ).*$/m, `[${targets.map((t) => `'${t}'`).join(', ')}]`],
    [/^( *scrape_interval: )15s$/m, '1s'],
    [/^( *evaluation_interval: )15s$/m, '1s'],
  ];
  for (const [line, value] of edits) {
    if (!line.test(text)) throw new Error(`${CONFIG} has no line ${line}`);
    text = text.replace(line, (_, key: string) => key + value);
  }
  return text;
}

/**
 * contrib/prometheus/alerts.yml as the lab runs it: NfqlbTargetDown's `for` of 30 s cut to 3 s,
 * so the test sees it fire without waiting half a minute (promtool's alerts.test.yml checks the
 * 30 s); the rule found by its name, or this fails.
 */
function labAlerts(text: string): string {
  const line = /^( *- alert: NfqlbTargetDown\n(?: .*\n)*? *for: )30s$/m;
  if (!line.test(text)) throw new Error(`${ALERTS}: NfqlbTargetDown has no 'for: 30s'`);
  return text.replace(line, (_, head: string) => `${head}3s`);
}

interface ApiAnswer<T> {
  status: string;
  data: T;
  error?: string;
}

/** GET a path of the lab's Prometheus: curl in its namespace, where it listens on loopback (throws if curl fails). */
const prometheusGet = (path: string): string => topo.exec(PROM_NS, ['curl', '-sS', `http://127.0.0.1:${PROM_PORT}${path}`]);

/** An API answer's data (it says what was wrong otherwise). */
function api<T>(path: string): T {
  const body = prometheusGet(path);
  const answer = JSON.parse(body) as ApiAnswer<T>;
  if (answer.status !== 'success') throw new Error(`GET ${path}: ${answer.error ?? body}`);
  return answer.data;
}

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

/** An instant query's samples (a scalar answer counts as one). */
function query(expr: string): Sample[] {
  const data = api<{ resultType: string; result: Sample[] | [number, string] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
  return data.resultType === 'scalar' ? [{ metric: {}, value: data.result as [number, string] }] : (data.result as Sample[]);
}

interface Alert {
  labels: Record<string, string>;
  state: 'pending' | 'firing';
}

const alerts = (): Alert[] => api<{ alerts: Alert[] }>('/api/v1/alerts').alerts;

/** Connections through both lbs: IPv4 and IPv6 through nfqlb (router 1), IPv4 through xdplb (router 2). */
function traffic(): void {
  const failed = (family: 4 | 6): number => {
    const r = mconnect(topo, family, { nconn: 20 });
    return r.failed_connects + r.failed_reads;
  };
  for (const family of [4, 6] as const) expect(failed(family)).toBe(0);
  topo.setTesterRoute([2]);
  try {
    expect(failed(4)).toBe(0);
  } finally {
    topo.setTesterRoute([1]);
  }
}

/** The PromQL expressions README.md and docs/metrics.md show: the inline code under a heading that names PromQL. */
function documentedPromql(): string[] {
  return ['README.md', 'docs/metrics.md'].flatMap((page) => inlineCode(page, /PromQL/));
}

beforeAll(async () => {
  requireBuild();
  if (spawnSync('prometheus', ['--version']).status !== 0) throw new Error("no prometheus: install Debian's package (make deps)");
  ({ topo, router } = createNfqueueLab(PREFIX, NVM, procs, 2));
  servers.push(...procs.slice(0, NVM));
  const router2 = topo.ns.router(2);

  // Router 1: nfqlb lb over both servers, its metrics open to the net as docs/metrics.md has it.
  nfqlb('init', `--shm=${SHM}`);
  activateServers(SHM, NVM);
  const lb = topo.spawn(router, ['node', NFQLB, 'lb', '--queue=2', `--tshm=${SHM}`, `--ft_shm=${FT_SHM[0]}`, '--metrics=0.0.0.0:9110']);
  procs.push(lb);
  daemons.push(await startDaemon(lb));

  // Its health checker, quick: a refused connect counts at once, two make a target down.
  const health = topo.spawn(router, [
    'node',
    NFQLB,
    'health',
    `--shm=${SHM}`,
    '--vip=10.0.0.0,1000::',
    '--health=tcp:5001',
    '--hc_interval=200',
    '--hc_timeout=150',
    '--hc_fall=2',
    '--hc_warmup=0',
    '--metrics=0.0.0.0:9111',
  ]);
  procs.push(health);
  daemons.push(await startDaemon(health, '"msg":"health checking"'));

  // Router 2: xdplb over the same servers (by MAC), and a flowlb on a queue no rule feeds,
  // whose one flow has a table without targets (PromQL's "is any table empty?").
  const xdplb = (...args: string[]) => topo.exec(router2, ['node', XDPLB, ...args, `--shm=${XDP_SHM}`]);
  activateXdplbServers(topo, xdplb, NVM);
  daemons.push(await startXdplb(topo, router2, XDP_SHM, ['--vip=10.0.0.0', '--vip=1000::', '--metrics=0.0.0.0:9110'], procs));
  nfqlb('init', `--shm=${EMPTY}`);
  const flowlb = topo.spawn(router2, ['node', NFQLB, 'flowlb', '--queue=3', `--ft_shm=${FT_SHM[1]}`, '--metrics=0.0.0.0:9111']);
  procs.push(flowlb);
  daemons.push(await startDaemon(flowlb));
  const set = nfqlbIn(router2, ['flow-set', '--name=web', `--target=${EMPTY}`, '--protocols=tcp']);
  expect(set.stdout, set.stderr).toBe('OK\n');

  // The registry: etcd on router 1's loopback, service web with two targets, and two followers
  // of it (as two lbs of a tier would run them), as etcd's read-only user.
  etcd = await EtcdFixture.create(router, 'tpm-etcd-');
  for (const args of [
    ['registry', 'init', ...etcd.writer, '--service=web', '--M=97', '--N=8'],
    ['register', ...etcd.writer, '--service=web', '--fwmark=101'],
    ['register', ...etcd.writer, '--service=web', '--fwmark=102'],
  ]) {
    const r = nfqlbIn(router, args);
    expect(r.status, r.stderr).toBe(0);
  }
  // A second slot with fwmark 101: rejected, counted by the followers.
  etcd.etcdctl(['put', '/tslb/web/targets/7', '{"fwmark":101,"state":"active","name":"a-copy"}']);
  for (const [i, shm] of FOLLOWER_SHM.entries()) {
    const argv = [
      'node',
      NFQLB,
      'follow',
      ...etcd.tls,
      '--etcd_user=reader',
      '--service=web',
      `--shm=${shm}`,
      `--metrics=0.0.0.0:${9112 + i}`,
    ];
    const follower = topo.spawn(router, ['env', 'NFQLB_ETCD_PASSWORD=readerpw', ...argv]);
    procs.push(follower);
    daemons.push(await startDaemon(follower, '"msg":"following"'));
  }

  // Prometheus's host: a namespace of its own with a port on net 2's bridge.
  ipBatch(null, [`netns add ${PROM_NS}`]);
  ipBatch(topo.ns.net(2), [`link add ${PROM_NS} type veth peer name eth1 netns ${PROM_NS}`, `link set ${PROM_NS} master ${PREFIX}br up`]);
  ipBatch(PROM_NS, ['link set lo up', 'link set eth1 up', `addr add ${PROM_ADDR}/24 dev eth1`]);
  writeFileSync(join(dir, 'prometheus.yml'), labConfig(readFileSync(CONFIG, 'utf8'), Object.values(TARGETS)));
  writeFileSync(join(dir, 'alerts.yml'), labAlerts(readFileSync(ALERTS, 'utf8')));
  const prometheus = topo.spawn(PROM_NS, [
    'prometheus',
    `--config.file=${join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${PROM_PORT}`,
  ]);
  procs.push(prometheus);
  prometheus.stdout!.on('data', (d: Buffer) => (prometheusOut += d.toString()));
  prometheus.stderr!.on('data', (d: Buffer) => (prometheusOut += d.toString()));
  await waitFor('Prometheus to be ready', () => prometheus.exitCode === null && prometheusGet('/-/ready').includes('Ready'), {
    timeout: 20_000,
    interval: 200,
  }).catch((e: Error) => {
    throw new Error(`${e.message}\n${prometheusOut}`);
  });
}, 60_000);

afterAll(async () => {
  for (const d of daemons) await d.stop('SIGKILL');
  await etcd?.close();
  const left = tearDownLab(PREFIX, topo, procs, [SHM, EMPTY, ...FT_SHM, XDP_SHM, ...FOLLOWER_SHM]);
  rmSync(dir, { recursive: true, force: true });
  expect(left).toEqual([]);
});

describe('contrib/prometheus', () => {
  it('prometheus.yml is the scrape configuration docs/metrics.md shows', () => {
    const shown = fencedBlocks('docs/metrics.md', 'yaml').filter((b) => b.heading === 'Scraping');
    expect(shown).toHaveLength(1);
    expect(`${shown[0]!.lines.join('\n')}\n`).toBe(readFileSync(CONFIG, 'utf8'));
  });

  it("docs/metrics.md's promtool lines pass as written: the configuration, the rules and their unit tests", () => {
    const lines = docCommands(ALERTS_SECTION);
    expect(lines).toEqual([
      'promtool check config contrib/prometheus/prometheus.yml',
      'promtool check rules contrib/prometheus/alerts.yml',
      'promtool test rules contrib/prometheus/alerts.test.yml',
    ]);
    const r = spawnSync('sh', ['-ec', lines.join('\n')], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    // The configuration's rule file, then the rules alone.
    expect(r.stdout.match(/SUCCESS: 10 rules found/g)).toHaveLength(2);
    expect(r.stdout).toMatch(/Unit Testing: {2}contrib\/prometheus\/alerts\.test\.yml\n {2}SUCCESS/);
  });
});

describe("Debian's Prometheus scraping a lab tier", () => {
  it('scrapes every endpoint of the lab: the lbs, the health checker, the followers', async () => {
    type Target = { scrapeUrl: string; health: string; lastError: string };
    const targets = await waitFor(
      'every target to be scraped',
      () => {
        const active = api<{ activeTargets: Target[] }>('/api/v1/targets').activeTargets;
        return active.length === Object.keys(TARGETS).length && active.every((t) => t.health === 'up') ? active : null;
      },
      { timeout: 15_000, interval: 250 },
    );
    expect(targets.map((t) => t.scrapeUrl).sort()).toEqual(
      Object.values(TARGETS)
        .map((t) => `http://${t}/metrics`)
        .sort(),
    );
  });

  it('evaluates every PromQL expression of README.md and docs/metrics.md to data, through the HTTP API', async () => {
    const exprs = documentedPromql();
    expect(exprs.length).toBeGreaterThanOrEqual(20);
    // The per-target series appear with a target's first packets, and a rate needs an increase
    // within a series: traffic once, then again once Prometheus has the series.
    traffic();
    await waitFor(
      'the per-target series and the followers',
      () =>
        query('nfqlb_target_packets_total').length === NVM &&
        query('xdplb_target_packets_total').length === NVM &&
        query('nfqlb_registry_apply_seconds_count').length === FOLLOWER_SHM.length,
      { timeout: 10_000, interval: 250 },
    );
    traffic();
    // A registry change for the followers to apply (and time).
    const r = nfqlbIn(router, ['register', ...etcd!.writer, '--service=web', '--fwmark=103']);
    expect(r.status, r.stderr).toBe(0);
    const started = Date.now();
    const answers: Record<string, Sample[]> = {};
    for (const expr of exprs) {
      // Data: at least one sample with a number (a rate over no increase divides 0 by 0).
      answers[expr] = await waitFor(
        `${expr} to return a number`,
        () => {
          const samples = query(expr);
          return samples.some((s) => Number.isFinite(Number(s.value[1]))) ? samples : null;
        },
        { timeout: 15_000, interval: 250 },
      );
    }
    console.log(`all ${exprs.length} PromQL expressions returned data ${Date.now() - started} ms after the traffic; series:`);
    for (const [expr, samples] of Object.entries(answers)) console.log(`  ${samples.length}  ${expr}`);
    // The share per target adds up to 1 over nfqlb's two servers.
    const share = answers[exprs[0]!]!;
    expect(share.map((s) => s.metric.fwmark).sort()).toEqual(['101', '102']);
    expect(share.reduce((n, s) => n + Number(s.value[1]), 0)).toBeCloseTo(1, 6);
  });

  it("loads alerts.yml and evaluates every rule without error; only the empty table's alert is active", async () => {
    const names = [...readFileSync(ALERTS, 'utf8').matchAll(/^ *- alert: (\w+)$/gm)].map((m) => m[1]!);
    type Rule = { name: string; health: string; lastError?: string; lastEvaluation: string };
    const rules = await waitFor(
      'every rule to be evaluated',
      () => {
        const all = api<{ groups: { name: string; rules: Rule[] }[] }>('/api/v1/rules').groups.flatMap((g) => g.rules);
        return all.length > 0 && all.every((r) => !r.lastEvaluation.startsWith('0001-')) ? all : null;
      },
      { timeout: 10_000, interval: 250 },
    );
    expect(rules.map((r) => r.name)).toEqual(names);
    expect(rules.filter((r) => r.health !== 'ok')).toEqual([]);
    const active = await waitFor('the empty table alert', () => {
      const a = alerts();
      return a.some((x) => x.labels.alertname === 'NfqlbTableEmpty') ? a : null;
    });
    expect(active.map((a) => [a.labels.alertname, a.labels.instance, a.labels.table])).toEqual([
      ['NfqlbTableEmpty', TARGETS.flowlb, EMPTY],
    ]);
  });

  it("reads the followers' registry metrics as the tier alerts do: one table, then the registry lost", async () => {
    type Rule = { name: string; query: string };
    const rules = api<{ groups: { rules: Rule[] }[] }>('/api/v1/rules').groups.flatMap((g) => g.rules);
    // The tables-differ alert counts the distinct table hashes of a job's followers: one here.
    const tables = 'count by (job, service) (count_values by (job, service) ("hash", nfqlb_table_hash))';
    expect(rules.find((r) => r.name === 'NfqlbTierTablesDiffer')?.query).toBe(`${tables} > 1`);
    const distinct = await waitFor('both followers scraped, with one table', () => {
      const one = query(tables);
      return query('count(nfqlb_table_hash)')[0]?.value[1] === '2' && one[0]?.value[1] === '1' ? one : null;
    });
    expect(distinct.map((s) => [s.metric.job, s.value[1]])).toEqual([['nfqlb', '1']]);
    expect(query(`${tables} > 1`)).toEqual([]);

    await etcd!.kill();
    const started = Date.now();
    const pending = await waitFor(
      'the registry-lost alert for both followers',
      () => {
        const lost = alerts().filter((a) => a.labels.alertname === 'NfqlbRegistryDisconnected');
        return lost.length === 2 ? lost : null;
      },
      { timeout: 20_000, interval: 250 },
    );
    console.log(`etcd killed -> NfqlbRegistryDisconnected active for both followers in ${Date.now() - started} ms`);
    expect(pending.map((a) => a.labels.instance).sort()).toEqual([TARGETS.follow1, TARGETS.follow2]);
    // Its `for` is a minute: pending, not yet firing.
    expect(pending.map((a) => a.state)).toEqual(['pending', 'pending']);
  });

  it("fires the target-down alert when a server's listener is killed", async () => {
    const up = () => query('nfqlb_target_up').map((x) => [x.metric.fwmark, x.value[1]]);
    expect(up().sort()).toEqual([
      ['101', '1'],
      ['102', '1'],
    ]);
    servers[1]!.kill('SIGKILL');
    const killed = Date.now();
    const targetDown = (state: Alert['state']) => () =>
      alerts().find((a) => a.labels.alertname === 'NfqlbTargetDown' && a.labels.fwmark === '102' && a.state === state);
    await waitFor('the target-down alert to be pending', targetDown('pending'), { timeout: 15_000, interval: 250 });
    const pendingMs = Date.now() - killed;
    // Its `for` is 3 s here.
    const firing = await waitFor('the target-down alert to fire', targetDown('firing'), { timeout: 20_000, interval: 250 });
    console.log(`server 2 killed -> NfqlbTargetDown pending after ${pendingMs} ms, firing after ${Date.now() - killed} ms`);
    expect(firing.labels).toMatchObject({ service: SHM, job: 'nfqlb', severity: 'warning' });
    expect(up().sort()).toEqual([
      ['101', '1'],
      ['102', '0'],
    ]);
    // One target of two is down: the service is not.
    expect(alerts().filter((a) => a.labels.alertname === 'NfqlbServiceAllDown')).toEqual([]);
  });
});
