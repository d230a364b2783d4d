// `nfqlb`: the reference's command set over the library. Each command validates all of its
// input before it touches shared memory, so a bad call changes nothing.
import { renameSync } from 'node:fs';
import { dispatch, opt, type CommandTable } from './command.js';
import { intOption, UsageError, type Parsed } from './options.js';
import { primeBelow } from '../maglev.js';
import { TargetTable } from '../target-table.js';
import { hashTuple } from '../hash.js';
import { createShm, deleteShm, openShm, shmPath } from '../shm.js';
import { runLb, parseQueueRange } from '../nfqlb/run.js';

const INT32_MAX = 0x7fffffff;

/** The reference release whose commands, formats and tables this nfqlb reproduces. */
const NFQLB_VERSION = '1.2.0';

function openTable(name: string, writable: boolean): TargetTable {
  return new TargetTable(openShm(name, writable));
}

function fwmarkArg(text: string): number {
  return intOption('fwmark', text, 0, INT32_MAX);
}

function indexArg(p: Parsed, t: TargetTable): number | undefined {
  const text = opt(p, 'index');
  if (text === undefined) return undefined;
  const i = intOption('index', text, 0, INT32_MAX);
  if (i >= t.N) throw new UsageError(`--index=${i}: lookup index too large (N=${t.N})`);
  return i;
}

const shmOption = { shm: { arg: true, help: 'Shared memory (default nfqlb)' } };

const commands: CommandTable = {
  init: {
    synopsis: 'init [--shm=nfqlb] [--M=997] [--N=32] [--ownfw=0]\n  Create the target table in /dev/shm',
    options: {
      ...shmOption,
      M: { arg: true, help: 'Maglev lookup table size, rounded down to a prime (default 997)' },
      N: { arg: true, help: 'Max number of targets, <= M (default 32)' },
      ownfw: { arg: true, help: 'Own fwmark, for the LB-tier table (default 0)' },
    },
    run(p) {
      const name = opt(p, 'shm', 'nfqlb');
      const wantM = intOption('M', opt(p, 'M', '997'), 0, INT32_MAX);
      const N = intOption('N', opt(p, 'N', '32'), 0, INT32_MAX);
      const ownFw = intOption('ownfw', opt(p, 'ownfw', '0'), -1, INT32_MAX);
      const M = TargetTable.adjustM(wantM);
      if (N > M) throw new UsageError(`N can't be larger than M (${N} > ${M})`);
      if (TargetTable.byteLength(M, N) > 2 ** 30) throw new UsageError(`M=${M}, N=${N} needs more than 1 GiB of shared memory`);
      if (M !== wantM) process.stdout.write(`M adjusted; ${wantM} -> ${M}\n`);
      // Built under a temporary name and renamed over the old one: a running lb keeps its
      // mapping of the old file instead of seeing it truncated under its feet.
      const tmp = `.${name}.init-${process.pid}`;
      TargetTable.initialize(createShm(tmp, TargetTable.byteLength(M, N)), M, N, ownFw);
      renameSync(shmPath(tmp), shmPath(name));
      return 0;
    },
  },
  delete: {
    synopsis: 'delete --shm=name\n  Remove a shared memory table',
    options: { shm: { arg: true, required: true, help: 'Shared memory' } },
    run(p) {
      deleteShm(opt(p, 'shm', ''));
      return 0;
    },
  },
  show: {
    synopsis: 'show [--shm=nfqlb]\n  Show a target table',
    options: shmOption,
    run(p) {
      const name = opt(p, 'shm', 'nfqlb');
      process.stdout.write(openTable(name, false).show(name) + '\n');
      return 0;
    },
  },
  activate: {
    synopsis: 'activate [--shm=] <fwmarks...>\nactivate [--shm=] --index=# <fwmark>\n  Activate targets',
    options: { ...shmOption, index: { arg: true, help: 'Slot in the active table (< N)' } },
    run(p) {
      const fwmarks = p.args.map(fwmarkArg);
      const t = openTable(opt(p, 'shm', 'nfqlb'), true);
      const index = indexArg(p, t);
      if (index === undefined) t.activate(fwmarks);
      else if (fwmarks.length === 1) t.setIndex(index, fwmarks[0]!);
      else throw new UsageError('--index takes exactly one fwmark');
      return 0;
    },
  },
  deactivate: {
    synopsis: 'deactivate [--shm=] <fwmarks...>\ndeactivate [--shm=] --index=#\n  Deactivate targets',
    options: { ...shmOption, index: { arg: true, help: 'Slot in the active table (< N)' } },
    run(p) {
      const fwmarks = p.args.map(fwmarkArg);
      const t = openTable(opt(p, 'shm', 'nfqlb'), true);
      const index = indexArg(p, t);
      if (index === undefined) t.deactivate(fwmarks);
      else if (fwmarks.length === 0) t.clearIndex(index);
      else throw new UsageError('--index takes no fwmark');
      return 0;
    },
  },
  fwmark: {
    synopsis: 'fwmark [--shm=] [--proto=tcp|udp|sctp] --src=addr:port --dst=addr:port\n  Print the hash and fwmark for a flow',
    options: {
      shm: { arg: true, help: 'Shared memory; with it the fwmark is printed' },
      proto: { arg: true, help: 'tcp|udp|sctp; absent means an address-only hash' },
      src: { arg: true, required: true, help: 'Source addr:port, e.g. "[1000::80]:80"' },
      dst: { arg: true, required: true, help: 'Destination addr:port' },
      hash_mode: { arg: true, help: '0: 5-tuple, 1: SCTP ports only (default 1)' },
    },
    run(p) {
      const protoText = opt(p, 'proto');
      if (protoText !== undefined && protoText !== 'tcp' && protoText !== 'udp' && protoText !== 'sctp') {
        throw new UsageError(`--proto: '${protoText}' is not tcp, udp or sctp`);
      }
      const hashMode = intOption('hash_mode', opt(p, 'hash_mode', '1'), 0, 1);
      const hash = hashTuple({ proto: protoText ?? null, src: opt(p, 'src', ''), dst: opt(p, 'dst', '') }, hashMode);
      const shm = opt(p, 'shm');
      if (shm === undefined) {
        process.stdout.write(`{ "hash": ${hash} }\n`);
        return 0;
      }
      const t = openTable(shm, false);
      const lookupIndex = t.lookupIndex(hash);
      const activeIndex = t.lookup[lookupIndex]!;
      const fwmark = t.fwmarkOf(hash);
      process.stdout.write(`{ "hash": ${hash}, "lookupindex": ${lookupIndex}, "activeindex": ${activeIndex}, "fwmark": ${fwmark} }\n`);
      return 0;
    },
  },
  primebelow: {
    synopsis: 'primebelow <n>\n  Print the largest prime <= n',
    options: {},
    run(p) {
      if (p.args.length !== 1) throw new UsageError('primebelow takes one number');
      process.stdout.write(`${primeBelow(intOption('n', p.args[0]!, 2, 2 ** 31))}\n`);
      return 0;
    },
  },
  version: {
    synopsis: 'version\n  Print the version (the reference release this is compatible with)',
    options: {},
    run() {
      process.stdout.write(NFQLB_VERSION + '\n');
      return 0;
    },
  },
  lb: {
    synopsis: 'lb [options]\n  Load-balance packets from NFQUEUE by setting the fwmark of the chosen target',
    options: {
      tshm: { arg: true, help: 'Target shared memory (default nfqlb)' },
      queue: { arg: true, help: 'NFQUEUE number, or a:b for one worker thread per queue (default 2)' },
      qlength: { arg: true, help: 'Queue length (default 1024)' },
      mtu: { arg: true, help: 'MTU, at least that of the ingress device (default 1500)' },
      notargets_fwmark: { arg: true, help: 'fwmark when no target is active (default -1 = drop)' },
      hash_mode: { arg: true, help: '0: 5-tuple, 1: SCTP ports only (default 1)' },
      batch: { arg: true, help: 'Packets handled per wake-up (default 128)' },
    },
    run(p) {
      return runLb({
        tshm: opt(p, 'tshm', 'nfqlb'),
        queues: parseQueueRange(opt(p, 'queue', '2')),
        qlength: intOption('qlength', opt(p, 'qlength', '1024'), 1, 1 << 20),
        mtu: intOption('mtu', opt(p, 'mtu', '1500'), 576, 65535),
        notargetsFwmark: intOption('notargets_fwmark', opt(p, 'notargets_fwmark', '-1'), -1, INT32_MAX),
        hashMode: intOption('hash_mode', opt(p, 'hash_mode', '1'), 0, 1),
        batch: intOption('batch', opt(p, 'batch', '128'), 1, 1024),
      });
    },
  },
};

export function main(argv: readonly string[]): Promise<number> {
  return dispatch('nfqlb', commands, argv);
}
