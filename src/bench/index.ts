// `make bench`: figures and ratios against baselines measured in the same run. Not a test.
// It owns the machine while it runs: other load on either core shows in every figure.
import { execFileSync } from 'node:child_process';
import { benchConntrack } from './conntrack.js';
import { pickGenerator } from './generators.js';
import { benchHealth, WINDOW_S } from './health.js';
import { benchMaglev } from './maglev.js';
import { checkCpus, GEN_CPU } from './measure.js';
import { benchNfqlb, referenceNfqlb } from './nfqlb.js';
import { benchParse } from './parse.js';
import { benchXdp } from './xdp.js';

// BENCH_ONLY=xdp (a comma list of these parts) runs only those; default all.
const PARTS = ['maglev', 'parse', 'conntrack', 'nfqlb', 'xdp', 'health'];
const only = (process.env.BENCH_ONLY ?? PARTS.join(',')).split(',');
const unknown = only.filter((p) => !PARTS.includes(p));
if (unknown.length > 0) {
  console.error(`BENCH_ONLY: unknown part ${unknown.join(',')} (parts: ${PARTS.join(',')})`);
  process.exit(2);
}
const runs = (part: string): boolean => only.includes(part);
if (runs('health') && !(WINDOW_S >= 1)) {
  console.error(`BENCH_HEALTH_SECONDS=${process.env.BENCH_HEALTH_SECONDS}: at least 1`);
  process.exit(2);
}

checkCpus();
// A REF_NFQLB that is no nfqlb fails now, not after the first half of the run.
const ref = runs('nfqlb') ? referenceNfqlb() : null;
// The bench itself (counter reads, execs) stays off the lb's core; every thread, not just main.
execFileSync('taskset', ['-apc', String(GEN_CPU), String(process.pid)], { stdio: 'ignore' });
if (runs('maglev')) benchMaglev();
if (runs('parse')) benchParse();
if (runs('conntrack')) benchConntrack();
if (runs('nfqlb') || runs('xdp')) {
  const gen = await pickGenerator();
  if (runs('nfqlb')) await benchNfqlb(gen, ref);
  if (runs('xdp')) await benchXdp(gen);
}
if (runs('health')) await benchHealth();
