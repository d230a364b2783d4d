// The lab's health tests (`lblab test health_*`, docs/lab.md): a registry tier whose every LB
// runs `nfqlb follow --health` (probes to the VIPs through each target's fwmark, docs/health.md).
// A server's listening process crashes and comes back, one LB loses its path to one target, every
// server stops, a checker restarts. Each returns the figures it prints and the problems that
// fail it, measured on the LBs' published tables (read from /dev/shm), their metrics and new
// connections started at a steady rate (mconnect --rate) over IPv4 and IPv6 at once.
import { setTimeout as sleep } from 'node:timers/promises';
import { sameInt32 } from '../target-table.js';
import type { RegistryTier } from './registry.js';
import { serverSlots } from './registry-tests.js';
import { serverFwmark } from './rules.js';
import { type Family, type Topology, VIP, vmName } from './topology.js';
import type { MconnectResult } from './traffic/mconnect.js';

/** The checker's defaults (1 s interval, 500 ms timeout, fall 3) detect a dead target within this (ms). */
export const DETECTION_GOAL_MS = 3500;
/** What the tier adds to a detection: publishing the view and reading the others' through etcd (ms). */
const TIER_MS = 1000;
/** New connections per second and family while a test runs traffic. */
const RATE = 100;

/** What the tests need of a running lab with --registry --health. */
export interface HealthLab {
  readonly topo: Topology;
  readonly registry: RegistryTier;
  /** SIGKILLs server n's traffic server (its namespace stays up). */
  killServer(n: number): void;
  startServer(n: number): Promise<void>;
  /** mconnect --rate on every family at once, starting now: `rate` new connections a second for durationMs. */
  connects(rate: number, durationMs: number): Promise<{ family: Family; result: MconnectResult }[]>;
  /** The log of router i's follower (the one started last). */
  followerLog(i: number): string;
  log(line: string): void;
}

export interface HealthOutcome {
  figures: string[];
  problems: string[];
}

const routersOf = (topo: Topology): number[] => Array.from({ length: topo.nrouters }, (_, k) => k + 1);

/** The sum of a metric's samples in Prometheus text whose labels include `match` (0 when it has none). */
export function metricSum(text: string, name: string, match = ''): number {
  const re = new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm');
  return [...text.matchAll(re)].filter((m) => (m[1] ?? '').includes(match)).reduce((sum, m) => sum + Number(m[2]), 0);
}

/** Polls `ok` every 20 ms until it holds; returns when (Date.now()). Throws naming `what` after timeoutMs. */
async function until(what: string, ok: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (ok()) return Date.now();
    } catch {
      /* not serving yet */
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Every LB's metric `name`, summed over its samples. */
const metricOnAll = (lab: HealthLab, name: string): number[] =>
  lab.registry.metrics(routersOf(lab.topo)).map((text) => metricSum(text, name));

/**
 * Waits until every LB's checker is past its warm-up and sees every server up, and every table
 * holds them all: the state each test starts from.
 */
export async function settled(lab: HealthLab): Promise<void> {
  const { topo, registry } = lab;
  const routers = routersOf(topo);
  await until('every follower to end its warm-up', () => routers.every((i) => lab.followerLog(i).includes('warm-up over')), 20_000);
  await until('every LB to see every server up', () => metricOnAll(lab, 'nfqlb_target_up').every((n) => n === topo.nvm), 15_000);
  await registry.waitTables('every table to hold every server', routers, serverSlots(topo.nvm), 15_000);
}

/**
 * Runs `body` while sampling every LB's lookup array every 2 ms; answers how many samples
 * differed from the tables before it.
 */
async function watchingTables(lab: HealthLab, body: () => Promise<void>): Promise<number> {
  const routers = routersOf(lab.topo);
  const before = routers.map((i) => Int32Array.from(lab.registry.table(i).lookup));
  let changed = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      if (routers.some((i, k) => !sameInt32(lab.registry.table(i).lookup, before[k]!))) changed++;
      await sleep(2);
    }
  })();
  try {
    await body();
  } finally {
    running = false;
    await loop;
  }
  return changed;
}

/** The failed connections of a rate run started at or after `t` (ms since the epoch). */
const failedAfter = (r: MconnectResult, t: number): number => (r.failed_at ?? []).filter((at) => r.started! + at >= t).length;

/**
 * health_target_crash: new connections at 100/s per family over all servers; server n's
 * listening process is SIGKILLed (its namespace and sidecar stay). Its target must leave every
 * LB's table within the detection goal, and no connection started after that may fail. Then the
 * process starts again and the target comes back into every table.
 */
export async function healthTargetCrash(lab: HealthLab, n: number): Promise<HealthOutcome> {
  const { topo, registry } = lab;
  const routers = routersOf(topo);
  const figures: string[] = [];
  const problems: string[] = [];
  await settled(lab);
  const traffic = lab.connects(RATE, 9000);
  traffic.catch(() => undefined); // awaited below; a failure on the way must not go unhandled meanwhile
  const t = Date.now();
  await sleep(1000); // places the crash 1 s into the traffic
  const killed = Date.now();
  lab.killServer(n);
  const out = await registry.waitTables(`${vmName(n)} to leave every table`, routers, serverSlots(topo.nvm, [n]), 15_000);
  const outAt = Math.max(...out.values());
  await sleep(Math.max(0, t + 6000 - Date.now())); // the restart 6 s into the traffic
  const restarted = Date.now();
  await lab.startServer(n);
  const back = await registry.waitTables(`${vmName(n)} to come back into every table`, routers, serverSlots(topo.nvm), 15_000);
  const backMs = Math.max(...back.values()) - restarted;
  const detection = outAt - killed;
  figures.push(
    `${vmName(n)}'s server SIGKILLed -> out of all ${routers.length} LBs' tables in ${detection} ms (goal <= ${DETECTION_GOAL_MS} ms); ` +
      `restarted -> back in every table in ${backMs} ms`,
  );
  if (detection > DETECTION_GOAL_MS) problems.push(`detection took ${detection} ms, more than ${DETECTION_GOAL_MS} ms`);
  for (const { family, result } of await traffic) {
    const failed = result.failed_connects + result.failed_reads;
    const after = failedAfter(result, outAt);
    figures.push(
      `IPv${family}: ${result.connections} new connections at ${RATE}/s: failed ${failed - after} before the detection, ${after} after it`,
    );
    if (after > 0) problems.push(`IPv${family}: ${after} connections failed after ${vmName(n)} left the tables (expected 0)`);
  }
  return { figures, problems };
}

/** Drops LB i's packets to the VIPs with fwmark `fw`, its probes and forwarded ones (`-A`), or lets them through again (`-D`). */
function cutPath(lab: HealthLab, i: number, fw: number, op: '-A' | '-D'): void {
  for (const [cmd, vip] of [
    ['iptables', VIP[4]],
    ['ip6tables', VIP[6]],
  ] as const) {
    for (const chain of ['OUTPUT', 'FORWARD'])
      lab.topo.exec(lab.topo.ns.router(i), [cmd, op, chain, '-d', vip, '-m', 'mark', '--mark', String(fw), '-j', 'DROP']);
  }
}

/**
 * health_partition: the path from the last LB to server n is cut (iptables in that LB's
 * namespace). It sees the target down, the tier's majority does not: no table changes anywhere,
 * and that LB reports the disagreement within the detection goal plus the tier's round trip.
 */
export async function healthPartition(lab: HealthLab, n: number): Promise<HealthOutcome> {
  const { topo } = lab;
  const routers = routersOf(topo);
  const lb = routers.at(-1)!;
  const figures: string[] = [];
  const problems: string[] = [];
  await settled(lab);
  const t0 = Date.now();
  const changed = await watchingTables(lab, async () => {
    cutPath(lab, lb, serverFwmark(n), '-A');
    let cut = true;
    try {
      const at = await until(
        `${vmName(200 + lb)} to report the disagreement`,
        () => metricSum(lab.registry.metrics([lb])[0]!, 'nfqlb_health_disagreement') === 1,
        15_000,
      );
      const disagree = metricOnAll(lab, 'nfqlb_health_disagreement');
      const ms = at - t0;
      const goal = DETECTION_GOAL_MS + TIER_MS;
      figures.push(
        `${vmName(200 + lb)}'s path to ${vmName(n)} cut -> disagreement reported in ${ms} ms (goal <= ${goal} ms); ` +
          `nfqlb_health_disagreement per LB: ${disagree.join(' ')}`,
      );
      if (ms > goal) problems.push(`the disagreement took ${ms} ms, more than ${goal} ms`);
      if (disagree.some((v, k) => v !== (routers[k] === lb ? 1 : 0)))
        problems.push(`nfqlb_health_disagreement per LB is ${disagree.join(' ')}: expected 1 on ${vmName(200 + lb)} only`);
      cutPath(lab, lb, serverFwmark(n), '-D');
      cut = false;
      await until('the disagreement to end', () => metricOnAll(lab, 'nfqlb_health_disagreement').every((v) => v === 0), 15_000);
    } finally {
      if (cut) cutPath(lab, lb, serverFwmark(n), '-D');
    }
  });
  figures.push(`path restored, disagreement over after ${Date.now() - t0} ms; table samples that changed meanwhile: ${changed}`);
  if (changed > 0) problems.push(`a table changed in ${changed} samples while one LB's path was cut`);
  return { figures, problems };
}

/**
 * health_all_down: every server's listening process is SIGKILLed, half of them a probe round
 * before the others, so each checker sees the first half fall a round before the rest. Fail
 * open: no table changes, and every LB sets nfqlb_service_all_down; the servers then start again
 * and it clears.
 */
export async function healthAllDown(lab: HealthLab): Promise<HealthOutcome> {
  const { topo } = lab;
  const figures: string[] = [];
  const problems: string[] = [];
  const servers = Array.from({ length: topo.nvm }, (_, k) => k + 1);
  const half = Math.ceil(servers.length / 2);
  await settled(lab);
  const t0 = Date.now();
  let at = 0;
  const changed = await watchingTables(lab, async () => {
    const probes = metricOnAll(lab, 'nfqlb_health_probe_seconds_count');
    for (const n of servers.slice(0, half)) lab.killServer(n);
    // A round probes every server on both VIPs; once that many more probes ended, a round ran since.
    const round = 2 * topo.nvm;
    await until(
      'every LB to probe a round with half the servers down',
      () => metricOnAll(lab, 'nfqlb_health_probe_seconds_count').every((n, k) => n >= probes[k]! + round),
      5000,
    );
    for (const n of servers.slice(half)) lab.killServer(n);
    at = await until(
      'nfqlb_service_all_down = 1 on every LB',
      () => metricOnAll(lab, 'nfqlb_service_all_down').every((v) => v === 1),
      15_000,
    );
    // Hold a probe interval longer: the tables must stay as they are while all is down.
    await sleep(1000);
  });
  figures.push(
    `all ${topo.nvm} servers SIGKILLed (${half} a probe round before the others) -> ` +
      `nfqlb_service_all_down = 1 on all ${topo.nrouters} LBs in ${at - t0} ms; table samples that changed: ${changed}`,
  );
  if (changed > 0) problems.push(`a table changed in ${changed} samples with every server down (fail open keeps them)`);
  const t1 = Date.now();
  await Promise.all(servers.map((n) => lab.startServer(n)));
  const up = await until(
    'nfqlb_service_all_down = 0 on every LB',
    () => metricOnAll(lab, 'nfqlb_service_all_down').every((v) => v === 0),
    15_000,
  );
  figures.push(`servers restarted -> nfqlb_service_all_down = 0 on every LB again in ${up - t1} ms`);
  return { figures, problems };
}

/**
 * health_restart: router 1's follower (and so its checker) is SIGKILLed and started again while
 * new connections come at 100/s per family. Through its warm-up nothing is taken out: no table
 * changes on any LB, no connection fails.
 */
export async function healthRestart(lab: HealthLab): Promise<HealthOutcome> {
  const { topo, registry } = lab;
  const figures: string[] = [];
  const problems: string[] = [];
  await settled(lab);
  const traffic = lab.connects(RATE, 8000);
  traffic.catch(() => undefined); // awaited below; a failure on the way must not go unhandled meanwhile
  let t0 = 0;
  let started = 0;
  let warm = 0;
  const changed = await watchingTables(lab, async () => {
    await sleep(1000); // places the restart 1 s into the traffic
    t0 = Date.now();
    await registry.stopFollower(1, 'SIGKILL');
    await registry.startFollower(1, serverSlots(topo.nvm));
    started = Date.now() - t0;
    warm = await until("the restarted follower's warm-up to end", () => lab.followerLog(1).includes('warm-up over'), 20_000);
    await traffic;
  });
  const results = await traffic;
  figures.push(
    `${vmName(201)}'s follower SIGKILLed and restarted (following in ${started} ms, warm-up over after ${warm - t0} ms); ` +
      `table samples that changed: ${changed}`,
  );
  if (changed > 0) problems.push(`a table changed in ${changed} samples over the checker's restart`);
  for (const { family, result } of results) {
    const failed = result.failed_connects + result.failed_reads;
    figures.push(`IPv${family}: ${result.connections} new connections at ${RATE}/s: failed ${failed}`);
    if (failed > 0) problems.push(`IPv${family}: ${failed} connections failed over the checker's restart (expected 0)`);
  }
  return { figures, problems };
}
