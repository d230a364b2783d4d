// `make bench`: figures and ratios against baselines measured in the same run. Not a test.
import { benchMaglev } from './maglev.js';
import { benchParse } from './parse.js';
import { benchNfqlb } from './nfqlb.js';
import { benchXdp } from './xdp.js';

benchMaglev();
benchParse();
await benchNfqlb();
await benchXdp();
