// `make soak`: nfqlb lb under moderate, steady traffic for SOAK_SECONDS (default 600), with a
// target deactivated or activated again every few seconds. Prints the lb's RSS over time,
// the messages and packets that passed, and the kernel's queue drops; fails (exit 1) if the
// RSS grew by more than the bound, i.e. if memory grows with time. Not part of `make test`.
//
// SOAK_HEALTH=1: the same traffic with `nfqlb health` probing every server over the run instead
// of the toggles (the checker owns the table then): fails if it changed a target's state even
// once on healthy servers under load (a false positive), and prints the checker's CPU.

import type { ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { metricSum } from '../lab/health-tests.js';
import { binArgv, type LabHandle, nfqueueLb, removeLabShm, shmName } from '../lab/lb-setup.js';
import { CLIENT_CIDR, createTopology, VIP, vmName } from '../lab/topology.js';
import { ECHO_PORT } from '../lab/traffic/server.js';
import { analyze, asStats } from '../lab/traffic/stats.js';
import { toolArgv } from '../lab/traffic/tools.js';
import { kernelQueueStats } from '../nfqueue.js';
import { CLK_TCK, userSystemTicks } from './measure.js';

const PREFIX = 'tlbsoak-';
const SECONDS = Number(process.env.SOAK_SECONDS ?? 600);
const HEALTH = process.env.SOAK_HEALTH === '1';
const HEALTH_METRICS_PORT = 9140;
const NVM = 4;
const NCONN = 100;
const RATE = 1000; // messages/s over all connections: moderate, far below what the lb can take
const TOGGLE_MS = 3000;
const SAMPLE_MS = 10_000;
// Warm-up allocations (JIT, pools) are done before the first sample; a leak of a few bytes per
// packet over 10 minutes (~600k messages, ~2.4M packets) would show as tens of MiB.
const WARMUP_MS = 10_000;
const RSS_BOUND_MIB = 24;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rssMiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
/** A process's user + system CPU so far, in seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks). */
const cpuSeconds = (pid: number): number => {
  const { user, system } = userSystemTicks(pid);
  return (user + system) / CLK_TCK;
};

if (!(SECONDS >= 30)) {
  console.error(`SOAK_SECONDS=${process.env.SOAK_SECONDS}: at least 30`);
  process.exit(2);
}
const topo = createTopology({ prefix: PREFIX, nvm: NVM, nrouters: 1 });
const procs: ChildProcess[] = [];
const statsFile = join(tmpdir(), `${PREFIX}ctraffic.json`);
let lbPid = 0;
let checkerPid = 0;
let failed = false;
try {
  for (let n = 1; n <= NVM; n++) procs.push(topo.spawn(topo.ns.server(n), [...toolArgv('server'), `--name=${vmName(n)}`]));
  const lab: LabHandle = {
    topo,
    daemon: (ns, argv, _name, ready) =>
      new Promise((resolve, reject) => {
        const p = topo.spawn(ns, argv);
        procs.push(p);
        if (lbPid === 0) lbPid = p.pid!;
        else checkerPid = p.pid!;
        let out = '';
        p.stdout!.on('data', (d: Buffer) => {
          if (out.length < 1 << 16) out += d.toString();
          if (out.includes(ready)) resolve(p);
        });
        p.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
        p.once('exit', (code) => reject(new Error(`${argv.join(' ')} exited (${code}): ${out}`)));
      }),
  };
  const lb = nfqueueLb(lab, { synOnly: false, conntrack: 0 });
  await lb.start();
  const router = topo.ns.router(1);
  if (HEALTH) {
    const argv = [
      ...binArgv('nfqlb'),
      'health',
      `--shm=${shmName(topo, 'nfqlb', 1)}`,
      `--vip=${VIP[4]}`,
      `--health=tcp:${ECHO_PORT}`,
      `--metrics=${HEALTH_METRICS_PORT}`,
    ];
    await lab.daemon(router, argv, 'health', '"health checking"');
  }
  const healthMetrics = () => topo.exec(router, ['curl', '-sf', `http://127.0.0.1:${HEALTH_METRICS_PORT}/metrics`]);

  const client = topo.spawn(topo.ns.tester, [
    ...toolArgv('ctraffic'),
    `--address=${VIP[4]}:5003`,
    `--nconn=${NCONN}`,
    `--rate=${RATE}`,
    `--timeout=${SECONDS}s`,
    `--srccidr=${CLIENT_CIDR[4]}`,
    `--stats-file=${statsFile}`,
  ]);
  procs.push(client);
  const clientDone = new Promise<number | null>((r) => client.once('exit', r));
  console.log(
    `soak: nfqlb lb, ${NVM} servers, ${NCONN} connections at ${RATE} msg/s, ` +
      `${HEALTH ? 'nfqlb health probing them every second' : `a target toggled every ${TOGGLE_MS / 1000} s`}, ${SECONDS} s`,
  );

  const t0 = performance.now();
  const elapsed = () => performance.now() - t0;
  let next = 0;
  let toggles = 0;
  const out = new Set<number>();
  // Round robin: take server n out, put it back at the next step, take n+1 out, ...
  const toggler = setInterval(() => {
    if (HEALTH) return;
    if (out.size > 0) {
      lb.setServers([...out], true);
      out.clear();
    } else {
      out.add((next++ % NVM) + 1);
      lb.setServers([...out], false);
    }
    toggles++;
  }, TOGGLE_MS);
  await sleep(WARMUP_MS);
  const rssStart = rssMiB(lbPid);
  const checkerCpuStart = HEALTH ? cpuSeconds(checkerPid) : 0;
  const checkerT0 = elapsed();
  let rssMax = rssStart;
  console.log(`  t=${(elapsed() / 1000).toFixed(0)}s lb RSS ${rssStart.toFixed(1)} MiB (start)`);
  while (elapsed() < SECONDS * 1000 - SAMPLE_MS) {
    await sleep(SAMPLE_MS);
    const rss = rssMiB(lbPid);
    rssMax = Math.max(rssMax, rss);
    console.log(`  t=${(elapsed() / 1000).toFixed(0)}s lb RSS ${rss.toFixed(1)} MiB`);
  }
  const code = await clientDone;
  clearInterval(toggler);
  const rssEnd = rssMiB(lbPid);
  const q = kernelQueueStats(2, topo.exec(topo.ns.router(1), ['cat', '/proc/net/netfilter/nfnetlink_queue']));
  const a = analyze(asStats(JSON.parse(readFileSync(statsFile, 'utf8'))));
  console.log(
    [
      `lb RSS: ${rssStart.toFixed(1)} MiB at start, ${rssEnd.toFixed(1)} MiB at the end, ` +
        `${rssMax.toFixed(1)} MiB at most (bound: start + ${RSS_BOUND_MIB} MiB)`,
      `messages sent/received: ${a.sent}/${a.received} (not sent while a connection lagged: ${a.dropped})`,
      `packets queued to the lb: ${q?.idSequence ?? '?'}; kernel queue drops: ${q ? q.queueDropped + q.userDropped : '?'} ` +
        `(queue full ${q?.queueDropped ?? '?'}, socket overrun ${q?.userDropped ?? '?'})`,
      `target toggles: ${toggles}; connections lost to them (and reconnected): ${a.lostEvents}; failed connects: ${a.failedConnects}`,
    ].join('\n  '),
  );
  if (HEALTH) {
    const cpu = (cpuSeconds(checkerPid) - checkerCpuStart) / ((elapsed() - checkerT0) / 1000);
    const text = healthMetrics();
    // Each target's first probe settles it as up (a transition from unknown): only downs are false.
    const transitions = metricSum(text, 'nfqlb_health_transitions_total', 'to="down"');
    const up = metricSum(text, 'nfqlb_target_up');
    console.log(
      `  nfqlb health: ${transitions} transitions to down, ${up} of ${NVM} targets up at the end; ` +
        `checker CPU ${(cpu * 100).toFixed(2)}% of a core (${NVM} targets probed once a second)`,
    );
    if (transitions !== 0 || up !== NVM) {
      console.log(`FAIL: the checker changed a healthy target's state (${transitions} transitions, ${up} up)`);
      failed = true;
    }
  }
  if (code !== 0) throw new Error(`ctraffic exited with ${code}`);
  if (rssEnd > rssStart + RSS_BOUND_MIB) {
    console.log(`FAIL: the lb's RSS grew by ${(rssEnd - rssStart).toFixed(1)} MiB`);
    failed = true;
  }
  if (a.received < a.sent * 0.95) {
    console.log(`FAIL: only ${a.received} of ${a.sent} messages came back`);
    failed = true;
  }
} finally {
  for (const p of procs) p.kill('SIGKILL');
  topo.destroy();
  removeLabShm(PREFIX);
  rmSync(statsFile, { force: true });
}
process.exitCode = failed ? 1 : 0;
