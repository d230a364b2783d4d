// `make bench`: figures and ratios against baselines measured in the same run. Not a test.
// It owns the machine while it runs: other load on either core shows in every figure.
import { execFileSync } from 'node:child_process';
import { benchConntrack } from './conntrack.js';
import { pickGenerator } from './generators.js';
import { benchMaglev } from './maglev.js';
import { checkCpus, GEN_CPU } from './measure.js';
import { benchNfqlb, referenceNfqlb } from './nfqlb.js';
import { benchParse } from './parse.js';
import { benchXdp } from './xdp.js';

checkCpus();
// A REF_NFQLB that is no nfqlb fails now, not after the first half of the run.
const ref = referenceNfqlb();
// The bench itself (counter reads, execs) stays off the lb's core; every thread, not just main.
execFileSync('taskset', ['-apc', String(GEN_CPU), String(process.pid)], { stdio: 'ignore' });
benchMaglev();
benchParse();
benchConntrack();
const gen = await pickGenerator();
await benchNfqlb(gen, ref);
await benchXdp(gen);
