// `lblab`: the xcluster load-balancer test suite on network namespaces. Test names and options
// follow the original load-balancer.sh (`__nvm=10 ./load-balancer.sh test --scale="1 2"
// nfqueue_scale` becomes `lblab test --nvm=10 --scale="1 2" nfqueue_scale`; the original's
// environment variables __nvm, __nrouters, __scale and xcluster_SYN_ONLY=yes work too).

import { formatHosts, formatLossReport } from '../lab/report.js';
import { checkTest, formatMs, type LabOptions, removeLab, runHealthTests, runTest, TESTS, type TestResult } from '../lab/suite.js';
import { type Family, MAX_ROUTERS, MAX_SERVERS } from '../lab/topology.js';
import { parseDuration } from '../lab/traffic/common.js';
import { UsageError } from '../usage-error.js';
import { type CommandTable, dispatch, opt } from './command.js';
import { intOption, type Parsed } from './options.js';

const DEFAULT_PREFIX = 'lblab-';
const DEFAULT_OUT = '/tmp/lblab';
/** Flow entries of `nfqlb lb --conntrack` in the lab: far more than its connections. */
const LAB_CONNTRACK_SIZE = 65536;

const prefixOption = { prefix: { arg: true, help: `Namespace prefix of the lab (default ${DEFAULT_PREFIX})` } };

function families(text: string): Family[] {
  const list = text.split(',').map((f) => f.trim().replace(/^ipv/i, ''));
  if (list.length === 0 || list.some((f) => f !== '4' && f !== '6')) throw new UsageError(`--family: '${text}' is not 4, 6 or 4,6`);
  return [...new Set(list.map((f) => Number(f) as Family))];
}

function scaleList(text: string): number[] {
  const words = text
    .trim()
    .split(/[\s,]+/)
    .filter(Boolean);
  if (words.length === 0) throw new UsageError('--scale: empty');
  return words.map((w) => intOption('scale', w, 1, 220));
}

/** The original's environment variables (`__nvm=10 ./load-balancer.sh ...`); empty = unset. */
const env = (name: string): string | undefined => process.env[name] || undefined;

function labOptions(p: Parsed): LabOptions {
  const scale = opt(p, 'scale') ?? env('__scale');
  const duration = opt(p, 'duration');
  const durationMs = duration === undefined ? undefined : parseDuration(duration);
  if (durationMs !== undefined && durationMs < 2000) throw new UsageError(`--duration: ${duration} is too short (at least 2s)`);
  return {
    prefix: opt(p, 'prefix', DEFAULT_PREFIX),
    nvm: intOption('nvm', opt(p, 'nvm') ?? env('__nvm') ?? '4', 1, MAX_SERVERS),
    nrouters: intOption('nrouters', opt(p, 'nrouters') ?? env('__nrouters') ?? '1', 1, MAX_ROUTERS),
    scale: scale === undefined ? undefined : scaleList(scale),
    families: families(opt(p, 'family', '4')),
    nconn: intOption('nconn', opt(p, 'nconn', '100'), 1, 10_000),
    rate: intOption('rate', opt(p, 'rate', '100'), 1, 1_000_000),
    durationMs,
    outDir: opt(p, 'out', DEFAULT_OUT),
    synOnly: p.opts.has('syn-only') || env('xcluster_SYN_ONLY') === 'yes',
    conntrack: p.opts.has('conntrack') ? LAB_CONNTRACK_SIZE : 0,
    stopServers: p.opts.has('stop-servers'),
    noStop: p.opts.has('no-stop'),
    bgp: p.opts.has('bgp'),
    resilient: p.opts.has('resilient'),
    registry: p.opts.has('registry'),
    health: p.opts.has('health'),
    log: (line) => process.stdout.write(`${line}\n`),
  };
}

function printResult(r: TestResult, view: boolean): void {
  const out: string[] = [];
  for (const m of r.mconnect) {
    out.push(
      `${r.test} IPv${m.family}: mconnect ${m.result.connections} connections, failed connects ${m.result.failed_connects}, ` +
        `failed reads ${m.result.failed_reads}`,
    );
    out.push(`  ${formatHosts(m.result.hosts)}`);
  }
  for (const run of r.runs) {
    out.push(`${r.test} IPv${run.family}: ${run.report.nconn} connections`);
    out.push(formatLossReport(run.report, run.nservers));
    for (const c of run.convergence) out.push(`  Convergence, ${c.kind} (${c.how} -> gateway route changed): ${formatMs(c.ms)}`);
    if (run.maxDelay !== undefined) out.push(`  Longest message delay: ${run.maxDelay} ms`);
    out.push(`  Plot: ${run.plotFile}`);
    if (view) out.push(`  View: open file://${run.plotFile} in a browser (stats: ${run.statsFile})`);
  }
  for (const f of r.figures) out.push(`  ${f}`);
  if (r.unavailable) out.push(`NOT RUN ${r.test}: ${r.unavailable}`);
  else out.push(`${r.ok ? 'PASS' : 'FAIL'} ${r.test}${r.problems.length > 0 ? `: ${r.problems.join('; ')}` : ''}`);
  process.stdout.write(`${out.join('\n')}\n`);
}

/** The loss figures of every scale run, one line each (several runs: the demo's closing table). */
function summary(results: TestResult[]): string {
  const rows = results.flatMap((r) =>
    r.runs.map((run) => {
      const cell = (kind: 'scale-in' | 'scale-out'): string => {
        const p = run.report.phases.find((x) => x.event.kind === kind);
        return p ? `${p.lost} / ${p.ideal}` : '-';
      };
      const cells = `${cell('scale-in').padStart(12)}  ${cell('scale-out').padStart(12)}`;
      return `  ${r.test.padEnd(18)} IPv${run.family}  ${cells}   ${run.plotFile}`;
    }),
  );
  if (rows.length < 2) return '';
  const n = results.find((r) => r.runs.length > 0)?.runs[0]?.report.nconn ?? 0;
  return `${[
    `Lost / ideal connections (of ${n}):`,
    `  ${'test'.padEnd(18)} family  ${'scale-in'.padStart(10)}  ${'scale-out'.padStart(12)}   plot`,
    ...rows,
  ].join('\n')}\n`;
}

const commands: CommandTable = {
  test: {
    synopsis: [
      'test --list',
      'test [--nvm=4] [--nrouters=1] [--scale="1 2"] [--family=4|6|4,6] [--view] [--syn-only] [--conntrack]\n' +
        '     [--stop-servers] [--no-stop] [--bgp] [--resilient] [--registry] [--health] [opt...] <test...>',
      '  Run tests (names as the original load-balancer.sh); start_* leave the lab up',
    ].join('\n'),
    options: {
      list: { help: 'List the tests' },
      nvm: { arg: true, help: 'Servers vm-001.. (default 4, or $__nvm)' },
      nrouters: { arg: true, help: 'Routers (load-balancers) vm-201.. (default 1, or $__nrouters)' },
      scale: { arg: true, help: 'Servers to scale, e.g. "1 2" (routers as 201.. for *_scale_lb; default 1 / 201, or $__scale)' },
      family: { arg: true, help: 'Address families of the scale runs: 4, 6 or 4,6 (default 4)' },
      view: { help: 'Print where to view each plot' },
      'syn-only': { help: 'nfqueue: only new connections go through the queue (or xcluster_SYN_ONLY=yes)' },
      conntrack: { help: `nfqueue: nfqlb lb --conntrack=${LAB_CONNTRACK_SIZE}: established flows keep their server, scale-in drains` },
      'stop-servers': { help: 'Scale-in stops the servers (and removes them at once: deactivate --now); scale-out restarts them' },
      'no-stop': { help: 'Leave the lab up after the test' },
      bgp: { help: 'nfqueue: LBs behind a BGP gateway (BIRD on the tester and every LB) instead of static ECMP' },
      resilient: { help: 'ecmp: kernel resilient next-hop groups instead of hash-threshold multipath' },
      registry: {
        help: 'nfqueue: a 3-member etcd (TLS, users); nfqlb follow on every LB, an nfqlb register sidecar per server (registry_* imply it)',
      },
      health: { help: 'with --registry: nfqlb follow --health on every LB (health_* imply both; given together they share one lab)' },
      nconn: { arg: true, help: 'ctraffic/mconnect connections (default 100)' },
      rate: { arg: true, help: 'ctraffic messages per second, all connections together (default 100)' },
      duration: { arg: true, help: 'ctraffic run length (default 20s for *_scale, 10s for *_scale_in/out)' },
      out: { arg: true, help: `Directory for stats, plots and logs (default ${DEFAULT_OUT})` },
      ...prefixOption,
    },
    async run(p) {
      if (p.opts.has('list')) {
        process.stdout.write(`${Object.keys(TESTS).join('\n')}\n`);
        return 0;
      }
      if (p.args.length === 0) throw new UsageError("no test given (see 'lblab test --list')");
      const o = labOptions(p);
      for (const t of p.args) checkTest(t, o); // all of them before the first lab is built
      // Ctrl-C: the lab's processes live in its namespaces; removing the lab ends them all.
      const onSignal = (): void => {
        removeLab(o.prefix);
        process.exit(130);
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const results: TestResult[] = [];
      try {
        const routers = `${o.nrouters} router${o.nrouters > 1 ? 's' : ''}`;
        const scale = o.scale ? `, scale ${o.scale.join(' ')}` : '';
        const extras = `${o.conntrack ? ', conntrack' : ''}${o.stopServers ? ', servers stopped' : ''}${o.registry ? ', registry' : ''}`;
        // The health tests share one lab (each starts from every target up).
        const health = p.args.filter((t) => TESTS[t]?.health);
        for (const test of p.args.filter((t) => !health.includes(t))) {
          o.log(`=== lblab: ${test} (${o.nvm} servers, ${routers}${scale}${extras})`);
          const r = await runTest(test, o);
          results.push(r);
          printResult(r, p.opts.has('view'));
        }
        if (health.length > 0) {
          o.log(`=== lblab: ${health.join(' ')} (${o.nvm} servers, ${routers}${scale}${extras}, health)`);
          for (const r of await runHealthTests(health, o)) {
            results.push(r);
            printResult(r, p.opts.has('view'));
          }
        }
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      process.stdout.write(summary(results));
      return results.every((r) => r.ok) ? 0 : 1;
    },
  },
  down: {
    synopsis: 'down [--prefix=lblab-]\n  Remove a lab left up by start_* or --no-stop (namespaces, processes, shared memory)',
    options: prefixOption,
    run(p) {
      removeLab(opt(p, 'prefix', DEFAULT_PREFIX));
      return 0;
    },
  },
};

export function main(argv: string[]): Promise<number> {
  return dispatch('lblab', commands, argv);
}
