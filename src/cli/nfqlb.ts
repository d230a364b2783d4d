// `nfqlb`: the reference's command set over the library. Each command validates all of its
// input before it touches shared memory, so a bad call changes nothing.

import { connect } from 'node:net';
import { hashTuple } from '../hash.js';
import { primeBelow } from '../maglev.js';
import { checkAnnounceDevice } from '../nfqlb/announce.js';
import { parseCompat } from '../nfqlb/compat.js';
import { CT_DEFAULT_TIMEOUTS } from '../nfqlb/conntrack.js';
import { DEFAULT_TRACE_ADDRESS, parseControlAddress, socketOptions } from '../nfqlb/control-address.js';
import { clientKey } from '../nfqlb/control-auth.js';
import { flowRequest } from '../nfqlb/flow-client.js';
import { FRAG_STAT, FRAG_STATS_BYTES, formatFragStats } from '../nfqlb/frag-table.js';
import { openLogConfig } from '../nfqlb/log-level.js';
import { parseOffloadOptions } from '../nfqlb/offload.js';
import { type LbOptions, parseQueueRange, runLb } from '../nfqlb/run.js';
import { LEVEL_WORD, MASK_WORD, parseTraceSelection } from '../nfqlb/tracer.js';
import { openShm } from '../shm.js';
import { NFQLB_TABLE, TargetStore } from '../target-store.js';
import { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';
import { type CommandTable, dispatch, opt } from './command.js';
import { healthCommands } from './health.js';
import { intOption, metricsOption, type Parsed } from './options.js';
import { registerCommands, registryMain } from './registry.js';

const INT32_MAX = 0x7fffffff;

/** The reference release whose commands, formats and tables this nfqlb reproduces. */
const NFQLB_VERSION = '1.2.0';

function openStore(name: string, writable: boolean): TargetStore<TargetTable> {
  return TargetStore.open(NFQLB_TABLE, name, writable);
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

/** Options lb and flowlb share (the reference's names and defaults). */
const lbOptions = {
  lbshm: { arg: true, help: 'LB-tier shared memory: fragments go to the LB that owns their addresses' },
  queue: { arg: true, help: 'NFQUEUE number, or a:b for one worker thread per queue (default 2)' },
  qlength: { arg: true, help: 'Queue length (default 1024)' },
  fail_open: { help: 'When the queue is full, the kernel accepts packets unmarked instead of dropping them' },
  mtu: { arg: true, help: 'MTU, at least that of the ingress device (default 1500)' },
  tun: { arg: true, help: 'Tun device to re-inject stored fragments through (default none: none stored)' },
  reassembler: { arg: true, help: 'Reassembler size (default 0; only 0 is supported)' },
  notargets_fwmark: { arg: true, help: 'fwmark when no target is active (default -1 = drop)' },
  hash_mode: { arg: true, help: '0: 5-tuple, 1: SCTP ports only (default 1)' },
  ft_shm: { arg: true, help: 'Frag table; shared memory stats (default ftshm)' },
  ft_size: { arg: true, help: 'Frag table; size (default 500)' },
  ft_buckets: { arg: true, help: 'Frag table; extra buckets (default 500)' },
  ft_frag: { arg: true, help: 'Frag table; stored frags (default 100)' },
  ft_ttl: { arg: true, help: 'Frag table; ttl milliS (default 200)' },
  trace_address: { arg: true, help: `Trace server address (default ${DEFAULT_TRACE_ADDRESS})` },
  batch: { arg: true, help: 'Packets handled per wake-up (default 128)' },
  announce: { arg: true, help: 'Create and hold this device while serving; a routing daemon announces the VIPs through it' },
  drain: { arg: true, help: 'With --announce: ms to keep serving after withdrawing on SIGTERM (default 2000)' },
  allow_remote: { help: 'Accept a tcp flow/trace address that is not loopback (clients still need the control key)' },
  metrics: { arg: true, help: 'Serve Prometheus /metrics and /healthz on [ADDR:]PORT (default off; a port alone is loopback)' },
  conntrack: { arg: true, help: 'Connection tracking: flow entries per queue, 64 bytes each (default 0 = stateless)' },
  ct_syn_timeout: { arg: true, help: `Conntrack; seconds a TCP flow lives after a SYN (default ${CT_DEFAULT_TIMEOUTS.synMs / 1000})` },
  ct_established_timeout: {
    arg: true,
    help: `Conntrack; idle seconds of an established TCP flow (default ${CT_DEFAULT_TIMEOUTS.establishedMs / 1000})`,
  },
  ct_close_timeout: { arg: true, help: `Conntrack; seconds after FIN or RST (default ${CT_DEFAULT_TIMEOUTS.closeMs / 1000})` },
  ct_other_timeout: { arg: true, help: `Conntrack; idle seconds of UDP and other flows (default ${CT_DEFAULT_TIMEOUTS.otherMs / 1000})` },
  compat: {
    arg: true,
    help: 'nfqlb: every packet a reference nfqlb 1.2.0 forwards gets its fwmark, bugs included (default off; docs/compatibility.md)',
  },
};

const MAX_CT_TIMEOUT_S = 7 * 86400;

function ctTimeout(p: Parsed, name: string, dfltMs: number): number {
  return 1000 * intOption(name, opt(p, name, String(dfltMs / 1000)), 1, MAX_CT_TIMEOUT_S);
}

/** The options lb and flowlb share, in the library's names; each checked in the order given. */
function lbRunOptions(p: Parsed): Omit<LbOptions, 'targetTable' | 'sctpEncapPort'> {
  if (intOption('reassembler', opt(p, 'reassembler', '0'), 0, INT32_MAX) !== 0) {
    throw new UsageError('--reassembler: user-space reassembly is not supported (the servers reassemble)');
  }
  return {
    tierTable: opt(p, 'lbshm') ?? null,
    queues: parseQueueRange(opt(p, 'queue', '2')),
    queueLength: intOption('qlength', opt(p, 'qlength', '1024'), 1, 1 << 20),
    failOpen: p.opts.has('fail_open'),
    mtu: intOption('mtu', opt(p, 'mtu', '1500'), 576, 65535),
    tun: opt(p, 'tun') ?? null,
    noTargetFwmark: intOption('notargets_fwmark', opt(p, 'notargets_fwmark', '-1'), -1, INT32_MAX),
    hashMode: intOption('hash_mode', opt(p, 'hash_mode', '1'), 0, 1),
    batch: intOption('batch', opt(p, 'batch', '128'), 1, 1024),
    fragments: {
      statsShm: opt(p, 'ft_shm', 'ftshm'),
      size: intOption('ft_size', opt(p, 'ft_size', '500'), 1, 1 << 24),
      buckets: intOption('ft_buckets', opt(p, 'ft_buckets', '500'), 0, 1 << 24),
      maxStored: intOption('ft_frag', opt(p, 'ft_frag', '100'), 0, 1 << 20),
      ttlMs: intOption('ft_ttl', opt(p, 'ft_ttl', '200'), 1, 3_600_000),
    },
    traceAddress: opt(p, 'trace_address', DEFAULT_TRACE_ADDRESS),
    announce: announceOptions(p),
    allowRemote: p.opts.has('allow_remote'),
    metrics: metricsOption(p),
    conntrack: conntrackOptions(p),
    compat: parseCompat(opt(p, 'compat')),
  };
}

/** --announce and its --drain (checked also without --announce). */
function announceOptions(p: Parsed): LbOptions['announce'] {
  const device = opt(p, 'announce') === undefined ? null : checkAnnounceDevice(opt(p, 'announce')!);
  const lingerMs = intOption('drain', opt(p, 'drain', '2000'), 0, 600_000);
  return device === null ? null : { device, lingerMs };
}

/** --conntrack and its timeouts (checked also without --conntrack). */
function conntrackOptions(p: Parsed): LbOptions['conntrack'] {
  const entries = intOption('conntrack', opt(p, 'conntrack', '0'), 0, 1 << 24);
  const timeouts = {
    synMs: ctTimeout(p, 'ct_syn_timeout', CT_DEFAULT_TIMEOUTS.synMs),
    establishedMs: ctTimeout(p, 'ct_established_timeout', CT_DEFAULT_TIMEOUTS.establishedMs),
    closeMs: ctTimeout(p, 'ct_close_timeout', CT_DEFAULT_TIMEOUTS.closeMs),
    otherMs: ctTimeout(p, 'ct_other_timeout', CT_DEFAULT_TIMEOUTS.otherMs),
  };
  return entries === 0 ? undefined : { entries, timeouts };
}

/** What selects packets, for flow-set and trace-flow-set. */
const flowMatchOptions = {
  protocols: { arg: true, help: 'Protocols. tcp, udp, sctp' },
  dsts: { arg: true, help: 'Destination CIDRs' },
  srcs: { arg: true, help: 'Source CIDRs' },
  dports: { arg: true, help: 'Destination port ranges' },
  sports: { arg: true, help: 'Source port ranges' },
  match: { arg: true, help: 'Byte-match statements, e.g. "tcp[2:2] = 5001,udp[0:4] & 0xffff = 5001"' },
};

const MAX_ARG_LEN = 1000;

function matchParams(p: Parsed): [string, string | undefined][] {
  const names = ['protocols', 'dsts', 'srcs', 'dports', 'sports', 'match'] as const;
  for (const n of names) {
    if ((opt(p, n)?.length ?? 0) > MAX_ARG_LEN) throw new UsageError(`${n} too long`);
  }
  if ((opt(p, 'dports') !== undefined || opt(p, 'sports') !== undefined) && opt(p, 'protocols') === undefined) {
    throw new UsageError('ports specified without protocols');
  }
  return names.map((n) => [n, opt(p, n)]);
}

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
      TargetStore.create(NFQLB_TABLE, name, { M, N, ownFwmark: ownFw });
      return 0;
    },
  },
  delete: {
    synopsis: 'delete --shm=name\n  Remove a shared memory table',
    options: { shm: { arg: true, required: true, help: 'Shared memory' } },
    run(p) {
      TargetStore.delete(NFQLB_TABLE, opt(p, 'shm', ''));
      return 0;
    },
  },
  show: {
    synopsis: 'show [--shm=nfqlb]\n  Show a target table',
    options: shmOption,
    run(p) {
      const name = opt(p, 'shm', 'nfqlb');
      process.stdout.write(`${openStore(name, false).table.show(name)}\n`);
      return 0;
    },
  },
  activate: {
    synopsis: 'activate [--shm=] <fwmarks...>\nactivate [--shm=] --index=# <fwmark>\n  Activate targets',
    options: { ...shmOption, index: { arg: true, help: 'Slot in the active table (< N)' } },
    run(p) {
      const fwmarks = p.args.map(fwmarkArg);
      const name = opt(p, 'shm', 'nfqlb');
      const store = openStore(name, true);
      const index = indexArg(p, store.table);
      if (index === undefined) store.activate(fwmarks);
      else if (fwmarks.length === 1) store.activateAt(index, fwmarks[0]!);
      else throw new UsageError('--index takes exactly one fwmark');
      return 0;
    },
  },
  deactivate: {
    synopsis: [
      'deactivate [--shm=] [--now] <fwmarks...>',
      'deactivate [--shm=] [--now] --index=#',
      '  Deactivate targets. An lb with --conntrack drains them: new flows avoid them, recorded flows',
      '  stay until they end; --now removes them at once (their flows go back to Maglev)',
    ].join('\n'),
    options: {
      ...shmOption,
      index: { arg: true, help: 'Slot in the active table (< N)' },
      now: { help: 'Remove at once, also a target that is draining (for a dead target)' },
    },
    run(p) {
      const fwmarks = p.args.map(fwmarkArg);
      const name = opt(p, 'shm', 'nfqlb');
      const store = openStore(name, true);
      const index = indexArg(p, store.table);
      if (index !== undefined && fwmarks.length > 0) throw new UsageError('--index takes no fwmark');
      const now = p.opts.has('now');
      if (now && index !== undefined && store.table.active[index]! < 0) {
        // A drained target's slot is empty: the table no longer says which fwmark it held, and
        // doing nothing would leave that target draining (reachable) until it is activated.
        const draining = store.draining();
        if (draining.length > 0) {
          throw new UsageError(
            `--index=${index}: the slot is empty; name a draining target by its fwmark (draining: ${draining.join(' ')})`,
          );
        }
      }
      if (index === undefined) store.deactivate(fwmarks, { now });
      else store.deactivateAt(index, { now });
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
      const t = openStore(shm, false).table;
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
      process.stdout.write(`${NFQLB_VERSION}\n`);
      return 0;
    },
  },
  lb: {
    synopsis: 'lb [options]\n  Load-balance packets from NFQUEUE by setting the fwmark of the chosen target',
    options: {
      tshm: { arg: true, help: 'Target shared memory (default nfqlb)' },
      sctp_encap: { arg: true, help: 'SCTP UDP encapsulation port (default 0 = none)' },
      offload: { arg: true, help: 'Mark whole VIP packets at tc ingress of these devices (DEV[,DEV...]); queue only unmarked ones' },
      vip: { arg: true, multiple: true, help: 'VIPs for --offload (ADDR[,ADDR...], repeatable)' },
      ...lbOptions,
    },
    run(p) {
      const o = lbRunOptions(p);
      const offload = parseOffloadOptions(opt(p, 'offload'), p.opts.get('vip') ?? []);
      // The kernel program is stateless: flows it marks would never see the flow table.
      if (offload !== undefined && o.conntrack !== undefined) {
        throw new UsageError('--offload and --conntrack: the offloaded packets bypass the flow table; choose one');
      }
      return runLb({
        ...o,
        targetTable: opt(p, 'tshm', 'nfqlb'),
        sctpEncapPort: intOption('sctp_encap', opt(p, 'sctp_encap', '0'), 0, 65535),
        offload,
      });
    },
  },
  flowlb: {
    synopsis: 'flowlb [options]\n  Load-balance with flows (set with flow-set; flow channel $NFQLB_FLOW_ADDRESS, default unix:nfqlb)',
    options: {
      ...lbOptions,
      nolb_fwmark: { arg: true, help: 'fwmark when no flow matches (default -1 = drop)' },
      promiscuous_ping: { help: 'ICMP echo requests match flows on addresses only' },
    },
    run(p) {
      return runLb({
        ...lbRunOptions(p),
        targetTable: null,
        sctpEncapPort: 0,
        flow: {
          noMatchFwmark: intOption('nolb_fwmark', opt(p, 'nolb_fwmark', '-1'), -1, INT32_MAX),
          promiscuousPing: p.opts.has('promiscuous_ping'),
        },
      });
    },
  },
  stats: {
    synopsis: 'stats [--ft_shm=ftshm]\n  Print the fragment table statistics of a running lb (JSON)',
    options: { ft_shm: { arg: true, help: 'Frag table statistics shared memory (default ftshm)' } },
    run(p) {
      const buf = openShm(opt(p, 'ft_shm', 'ftshm'), false);
      const blocks = Math.max(1, Math.floor(buf.byteLength / FRAG_STATS_BYTES));
      if (buf.byteLength < FRAG_STATS_BYTES) throw new UsageError(`--ft_shm: not a fragment statistics file (${buf.byteLength} bytes)`);
      const views = Array.from({ length: blocks }, (_, i) => new Uint32Array(buf, i * FRAG_STATS_BYTES, FRAG_STAT.WORDS));
      process.stdout.write(`${formatFragStats(views)}\n`);
      return 0;
    },
  },
  'flow-set': {
    synopsis:
      'flow-set [options]\n  Set a flow. An un-defined value means match-all.\n  Use comma separated lists for multiple items (no spaces)',
    options: {
      name: { arg: true, required: true, help: 'Name of the flow (letters, digits, -+_)' },
      target: { arg: true, required: true, help: 'Name of SHM for the load-balancer' },
      prio: { arg: true, help: 'Priority. 0 has lowest precedence (default)' },
      ...flowMatchOptions,
      udpencap: { arg: true, help: 'UDP encapsulation port for SCTP' },
    },
    async run(p) {
      const udpencap = opt(p, 'udpencap');
      const protocols = opt(p, 'protocols');
      if (udpencap !== undefined) {
        intOption('udpencap', udpencap, 1, 65535);
        if (protocols === undefined) throw new UsageError('udpencap specified without protocols');
        if (!/sctp/i.test(protocols)) throw new UsageError('udpencap specified without sctp');
      }
      if (opt(p, 'prio') !== undefined) intOption('prio', opt(p, 'prio')!, 0, INT32_MAX);
      return reply(
        await flowRequest('set', [
          ['name', opt(p, 'name')],
          ['target', opt(p, 'target')],
          ['priority', opt(p, 'prio')],
          ...matchParams(p),
          ['udpencap', udpencap],
        ]),
      );
    },
  },
  ...flowSetCommands('', 'flow'),
  trace: {
    synopsis: 'trace [options]\n  Initiate trace and direct output to stdout',
    options: {
      mask: { arg: true, help: 'Trace mask (32-bit). Most for debug' },
      selection: { arg: true, help: 'Trace selection. A comma separated list of;\n     log,packet,frag,flow-conf,sctp,target,flows' },
      trace_address: { arg: true, help: `Trace server address (default ${DEFAULT_TRACE_ADDRESS})` },
    },
    run(p) {
      const maskText = opt(p, 'mask');
      const selection = opt(p, 'selection');
      if ((maskText === undefined) === (selection === undefined)) throw new UsageError('Specify one of --mask or --selection');
      let mask: number;
      if (selection !== undefined) mask = parseTraceSelection(selection);
      else {
        if (!/^(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})$/.test(maskText!) || Number(maskText) > 0xffffffff)
          throw new UsageError(`--mask: '${maskText}' is not a 32-bit number`);
        mask = Number(maskText);
      }
      const addressText = opt(p, 'trace_address', DEFAULT_TRACE_ADDRESS);
      const address = parseControlAddress(addressText);
      process.stdout.write(`Mask=0x${mask.toString(16).padStart(8, '0')}\n`);
      openLogConfig()[MASK_WORD] = mask | 0;
      return streamTrace(address, addressText);
    },
  },
  loglevel: {
    synopsis: 'loglevel [level]\n  Set the log level of running lbs (4 warning, 5 notice, 6 info, 7 debug) and print it',
    options: {},
    run(p) {
      if (p.args.length > 1) throw new UsageError('loglevel takes at most one level');
      const level = p.args[0] === undefined ? undefined : intOption('level', p.args[0], 4, 7);
      const config = openLogConfig();
      if (level !== undefined) config[LEVEL_WORD] = level;
      process.stdout.write(`loglevel=${config[LEVEL_WORD]}\n`);
      return 0;
    },
  },
  'trace-flow-set': {
    synopsis: 'trace-flow-set [options]\n  Set a trace flow (trace selection "flows"). An un-defined value means match-all',
    options: { name: { arg: true, required: true, help: 'Name of the flow' }, ...flowMatchOptions },
    async run(p) {
      return reply(await flowRequest('trace-set', [['name', opt(p, 'name')], ...matchParams(p)]));
    },
  },
  ...flowSetCommands('trace-', 'trace flow'),
};

/** delete, list and list-names: the same commands over the flows and over the trace flows. */
function flowSetCommands(prefix: '' | 'trace-', what: string): CommandTable {
  return {
    [`${prefix}flow-delete`]: {
      synopsis: `${prefix}flow-delete --name=\n  Delete a ${what}`,
      options: { name: { arg: true, required: true, help: 'Name of the flow' } },
      async run(p) {
        return reply(await flowRequest(`${prefix}delete`, [['name', opt(p, 'name')]]));
      },
    },
    [`${prefix}flow-list`]: {
      synopsis: `${prefix}flow-list [--name=]\n  List ${what}s (JSON)`,
      options: { name: { arg: true, help: 'Name of a flow' } },
      async run(p) {
        process.stdout.write(await flowRequest(`${prefix}list`, [['name', opt(p, 'name')]]));
        return 0;
      },
    },
    [`${prefix}flow-list-names`]: {
      synopsis: `${prefix}flow-list-names\n  List ${what} names (JSON)`,
      options: {},
      async run() {
        process.stdout.write(await flowRequest(`${prefix}list-names`, []));
        return 0;
      },
    },
  };
}

/** Prints a set/delete reply; success is a reply starting with OK. */
function reply(text: string): number {
  process.stdout.write(`${text}\n`);
  return text.startsWith('OK') ? 0 : 1;
}

/**
 * Streams the trace server's lines to stdout until it closes or we are interrupted. On tcp
 * the control key goes first; a server that turns us away says why in one JSON line.
 */
function streamTrace(address: ReturnType<typeof parseControlAddress>, addressText: string): Promise<number> {
  return new Promise((resolve) => {
    let noKey = '';
    const c = connect(socketOptions(address), () => {
      if (address.kind !== 'tcp') return;
      const k = clientKey();
      // Without a key an empty line gets the refusal at once rather than after the server's timeout.
      if ('key' in k) c.write(`auth:${k.key}\n`);
      else {
        noKey = ` (${k.missing})`;
        c.write('\n');
      }
    });
    const stop = () => c.end();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    let first = true;
    let code = 0;
    c.on('data', (d: Buffer) => {
      if (first && d[0] === 0x7b) {
        const line = d.toString().split('\n')[0]!;
        let error = line;
        try {
          error = String((JSON.parse(line) as { error?: unknown }).error);
        } catch {
          // Not JSON after all: show it as it came.
        }
        process.stderr.write(`nfqlb trace: ${addressText}: ${error}${noKey}\n`);
        code = 1;
        return;
      }
      first = false;
      process.stdout.write(d);
    });
    c.on('error', (e) => {
      process.stderr.write(`nfqlb trace: Trace client connect to ${addressText}: ${e.message}\n`);
      resolve(1);
    });
    c.on('close', () => resolve(code));
  });
}

export function main(argv: readonly string[]): Promise<number> {
  // `registry` has commands of its own (init, show, ...), each with its options.
  if (argv[0] === 'registry') return registryMain(argv.slice(1));
  return dispatch('nfqlb', { ...commands, ...healthCommands, ...registerCommands }, argv);
}
