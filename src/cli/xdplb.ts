// `xdplb`: the original xcluster xdplb's commands (init, activate, deactivate, show, lb)
// plus VIP management, so no bpftool is needed. Every command validates all of its input
// before it touches shared memory, so a bad call changes nothing.
import { existsSync, readdirSync } from 'node:fs';
import { TargetStore } from '../target-store.js';
import { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';
import { runXdpLb } from '../xdp/run.js';
import { parseMac, vipKey, XDPLB_M, XDPLB_N, XDPLB_TABLE, type XdpTable } from '../xdp/table.js';
import { type CommandTable, dispatch, opt } from './command.js';
import { intOption, metricsOption, type Parsed } from './options.js';

const DEFAULT_SHM = 'xdplb';
const shmOption = { shm: { arg: true, help: `Shared memory (default ${DEFAULT_SHM})` } };

function openTable(p: Parsed, writable: boolean): XdpTable {
  return TargetStore.open(XDPLB_TABLE, opt(p, 'shm', DEFAULT_SHM), writable).table;
}

/** The single <index> argument, checked against N. */
function indexArg(p: Parsed, t: XdpTable): number {
  if (p.args.length !== 1) throw new UsageError(p.args.length === 0 ? 'No index' : `one index expected, got ${p.args.length}`);
  const i = intOption('index', p.args[0]!, 0, 0x7fffffff);
  if (i >= t.N) throw new UsageError(`Invalid index [${i}]: must be 0..${t.N - 1}`);
  return i;
}

/**
 * A VIP's key; throws for text that is not one unicast address (a CIDR, an addr:port, a
 * multicast, broadcast, loopback or unspecified address cannot be a VIP).
 */
function checkVip(text: string): Uint8Array {
  const key = vipKey(text);
  const v4 = key.subarray(0, 10).every((b) => b === 0) && key[10] === 0xff && key[11] === 0xff;
  let kind: string | null = null;
  if (v4) {
    if (key[12]! >= 224) kind = 'multicast or broadcast';
    else if (key[12] === 127) kind = 'loopback';
    else if (key[12] === 0) kind = 'unspecified';
  } else if (key[0] === 0xff) kind = 'multicast';
  else if (key.subarray(0, 15).every((b) => b === 0) && key[15]! <= 1) kind = 'unspecified or loopback';
  if (kind !== null) throw new UsageError(`Invalid VIP [${text}]: a ${kind} address`);
  return key;
}

/** <addr...>, all checked before anything changes. */
function vipArgs(p: Parsed): string[] {
  if (p.args.length === 0) throw new UsageError('no VIP address given');
  for (const a of p.args) checkVip(a);
  return p.args;
}

/** A network device of this namespace, checked before the lb touches the table. */
function deviceArg(p: Parsed, name: 'idev' | 'edev'): string {
  const dev = opt(p, name, '');
  if (!/^[^/\s:]{1,15}$/.test(dev) || dev === '.' || dev === '..') throw new UsageError(`--${name}: '${dev}' is not a device name`);
  if (!existsSync(`/sys/class/net/${dev}`)) throw new UsageError(`--${name}: unknown device [${dev}] in this network namespace`);
  return dev;
}

/** The rx queue to serve: one the ingress device has. */
function queueArg(p: Parsed, idev: string): number {
  const queue = intOption('queue', opt(p, 'queue', '0'), 0, 65535);
  const rx = readdirSync(`/sys/class/net/${idev}/queues`).filter((q) => q.startsWith('rx-')).length;
  if (queue >= Math.max(rx, 1)) throw new UsageError(`--queue=${queue}: ${idev} has ${rx} rx queue${rx === 1 ? '' : 's'} (0..${rx - 1})`);
  return queue;
}

const commands: CommandTable = {
  init: {
    synopsis: `init [--shm=${DEFAULT_SHM}] [--M=${XDPLB_M}] [--N=${XDPLB_N}]\n  Create the table in /dev/shm`,
    options: {
      ...shmOption,
      M: { arg: true, help: `Maglev lookup table size, rounded down to a prime (default ${XDPLB_M})` },
      N: { arg: true, help: `Max number of targets, 1..M (default ${XDPLB_N})` },
    },
    run(p) {
      const name = opt(p, 'shm', DEFAULT_SHM);
      const wantM = intOption('M', opt(p, 'M', String(XDPLB_M)), 2, 1 << 24);
      const N = intOption('N', opt(p, 'N', String(XDPLB_N)), 1, 1 << 16);
      const M = TargetTable.adjustM(wantM);
      if (N > M) throw new UsageError(`N can't be larger than M (${N} > ${M})`);
      if (M !== wantM) process.stdout.write(`M adjusted; ${wantM} -> ${M}\n`);
      TargetStore.create(XDPLB_TABLE, name, { M, N });
      return 0;
    },
  },
  show: {
    synopsis: `show [--shm=${DEFAULT_SHM}]\n  Show the lookup table and the active targets`,
    options: shmOption,
    run(p) {
      process.stdout.write(openTable(p, false).show());
      return 0;
    },
  },
  activate: {
    synopsis: "activate [--shm=] [--mac=0:0:0:1:1:1] <index>\n  Set a target's MAC address and make it active",
    options: { ...shmOption, mac: { arg: true, help: 'MAC address of the target' } },
    run(p) {
      const text = opt(p, 'mac');
      const mac = text === undefined ? undefined : parseMac(text);
      // A target is one host: its MAC is unicast (I/G bit clear) and not all zeros.
      if (mac !== undefined && ((mac[0]! & 1) === 1 || mac.every((x) => x === 0))) {
        throw new UsageError(`Invalid MAC [${text}]: not a unicast address`);
      }
      const t = openTable(p, true);
      t.activate(indexArg(p, t), mac);
      return 0;
    },
  },
  deactivate: {
    synopsis: 'deactivate [--shm=] <index>\n  Stop sending new flows to a target',
    options: shmOption,
    run(p) {
      const t = openTable(p, true);
      t.deactivate(indexArg(p, t));
      return 0;
    },
  },
  'vip-add': {
    synopsis: 'vip-add [--shm=] <address...>\n  Add VIPs (IPv4 or IPv6); a running lb picks them up',
    options: shmOption,
    run(p) {
      const vips = vipArgs(p);
      openTable(p, true).addVips(vips);
      return 0;
    },
  },
  'vip-delete': {
    synopsis: 'vip-delete [--shm=] <address...>\n  Remove VIPs; their traffic goes to the kernel again',
    options: shmOption,
    run(p) {
      const vips = vipArgs(p);
      openTable(p, true).removeVips(vips);
      return 0;
    },
  },
  'vip-list': {
    synopsis: 'vip-list [--shm=]\n  Print the VIPs, one a line',
    options: shmOption,
    run(p) {
      for (const v of openTable(p, false).vips()) process.stdout.write(`${v}\n`);
      return 0;
    },
  },
  lb: {
    synopsis:
      'lb --idev=eth2 --edev=eth1 [--shm=] [--queue=0] [--mode=native|generic] [--offload] [--vip=addr]... [--metrics=[ADDR:]PORT]\n' +
      '  Load-balance VIP traffic arriving on idev to the active targets, out on edev (L2 DSR)',
    options: {
      ...shmOption,
      idev: { arg: true, required: true, help: 'Ingress device (the XDP program goes here)' },
      edev: { arg: true, required: true, help: "Egress device, on the targets' network" },
      queue: { arg: true, help: 'The ingress rx queue to serve (default 0)' },
      mode: { arg: true, help: 'XDP attach mode: native (default) or generic; with --offload native where supported, else generic' },
      offload: { help: 'Forward in the kernel: the XDP program decides, the AF_XDP socket gets only what it declines' },
      vip: { arg: true, multiple: true, help: 'A VIP to add to the table at start (repeatable)' },
      batch: { arg: true, help: 'Frames per batch (default 64)' },
      metrics: { arg: true, help: 'Serve Prometheus /metrics and /healthz on [ADDR:]PORT (default off; a port alone is loopback)' },
    },
    run(p) {
      const offload = p.opts.has('offload');
      const given = opt(p, 'mode');
      if (given !== undefined && given !== 'native' && given !== 'generic')
        throw new UsageError(`--mode: '${given}' is not native or generic`);
      const mode = given ?? (offload ? 'auto' : 'native');
      const vips = p.opts.get('vip') ?? [];
      for (const v of vips) checkVip(v);
      if (p.args.length > 0) throw new UsageError(`unexpected argument '${p.args[0]}'`);
      const batch = intOption('batch', opt(p, 'batch', '64'), 1, 1024);
      const metrics = metricsOption(p);
      const idev = deviceArg(p, 'idev');
      const edev = deviceArg(p, 'edev');
      const queue = queueArg(p, idev);
      // The table must be there (and be one) before the lb adds the --vip addresses to it.
      openTable(p, false);
      return runXdpLb({ idev, edev, shm: opt(p, 'shm', DEFAULT_SHM), queue, mode, offload, vips, batch, metrics });
    },
  },
};

export function main(argv: string[]): Promise<number> {
  return dispatch('xdplb', commands, argv);
}
