// `xdplb`: the original xcluster xdplb's commands (init, activate, deactivate, show, lb)
// plus VIP management, so no bpftool is needed. Every command validates all of its input
// before it touches shared memory, so a bad call changes nothing.
import { renameSync } from 'node:fs';
import { dispatch, opt, type CommandTable } from './command.js';
import { intOption, metricsOption, UsageError, type Parsed } from './options.js';
import { createShm, openShm, shmPath } from '../shm.js';
import { XdpTable, parseMac, vipKey } from '../xdp/table.js';
import { runXdpLb } from '../xdp/lb.js';

const DEFAULT_SHM = 'xdplb';
const shmOption = { shm: { arg: true, help: `Shared memory (default ${DEFAULT_SHM})` } };

function openTable(p: Parsed, writable: boolean): XdpTable {
  return new XdpTable(openShm(opt(p, 'shm', DEFAULT_SHM), writable));
}

/** The single <index> argument, checked against N. */
function indexArg(p: Parsed, t: XdpTable): number {
  if (p.args.length !== 1) throw new UsageError(p.args.length === 0 ? 'No index' : `one index expected, got ${p.args.length}`);
  const i = intOption('index', p.args[0]!, 0, 0x7fffffff);
  if (i >= t.N) throw new UsageError(`Invalid index [${i}]: must be 0..${t.N - 1}`);
  return i;
}

/** <addr...>, all parsed before anything changes. */
function vipArgs(p: Parsed): string[] {
  if (p.args.length === 0) throw new UsageError('no VIP address given');
  for (const a of p.args) vipKey(a);
  return p.args;
}

const commands: CommandTable = {
  init: {
    synopsis: `init [--shm=${DEFAULT_SHM}]\n  Create the table (M=997, N=20) in /dev/shm`,
    options: shmOption,
    run(p) {
      const name = opt(p, 'shm', DEFAULT_SHM);
      // Built under a temporary name and renamed over an old one: a running lb keeps its
      // mapping instead of seeing the file truncated under its feet.
      const tmp = `.${name}.init-${process.pid}`;
      XdpTable.initialize(createShm(tmp, XdpTable.byteLength()));
      renameSync(shmPath(tmp), shmPath(name));
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
    synopsis: 'activate [--shm=] [--mac=0:0:0:1:1:1] <index>\n  Set a target\'s MAC address and make it active',
    options: { ...shmOption, mac: { arg: true, help: 'MAC address of the target' } },
    run(p) {
      const text = opt(p, 'mac');
      const mac = text === undefined ? undefined : parseMac(text);
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
      for (const v of openTable(p, false).vips()) process.stdout.write(v + '\n');
      return 0;
    },
  },
  lb: {
    synopsis:
      'lb --idev=eth2 --edev=eth1 [--shm=] [--queue=0] [--mode=native|generic] [--vip=addr]... [--metrics=[ADDR:]PORT]\n' +
      '  Load-balance VIP traffic arriving on idev to the active targets, out on edev (L2 DSR)',
    options: {
      ...shmOption,
      idev: { arg: true, required: true, help: 'Ingress device (the XDP program goes here)' },
      edev: { arg: true, required: true, help: 'Egress device, on the targets\' network' },
      queue: { arg: true, help: 'The ingress rx queue to serve (default 0)' },
      mode: { arg: true, help: 'XDP attach mode: native (default) or generic' },
      vip: { arg: true, multiple: true, help: 'A VIP to add to the table at start (repeatable)' },
      batch: { arg: true, help: 'Frames per batch (default 64)' },
      metrics: { arg: true, help: 'Serve Prometheus /metrics and /healthz on [ADDR:]PORT (default off; a port alone is loopback)' },
    },
    run(p) {
      const mode = opt(p, 'mode', 'native');
      if (mode !== 'native' && mode !== 'generic') throw new UsageError(`--mode: '${mode}' is not native or generic`);
      const vips = p.opts.get('vip') ?? [];
      for (const v of vips) vipKey(v);
      if (p.args.length > 0) throw new UsageError(`unexpected argument '${p.args[0]}'`);
      return runXdpLb({
        idev: opt(p, 'idev', ''),
        edev: opt(p, 'edev', ''),
        shm: opt(p, 'shm', DEFAULT_SHM),
        queue: intOption('queue', opt(p, 'queue', '0'), 0, 65535),
        mode,
        vips,
        batch: intOption('batch', opt(p, 'batch', '64'), 1, 1024),
        metrics: metricsOption(p),
      });
    },
  },
};

export function main(argv: string[]): Promise<number> {
  return dispatch('xdplb', commands, argv);
}
