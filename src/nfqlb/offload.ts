// `nfqlb lb --offload=DEV`: the in-kernel fast path. A tc ingress program (native/bpf/
// tc_offload.bpf.c) marks whole TCP/UDP/SCTP packets to the VIPs with the fwmark this lb
// would give them; the iptables rule queues only unmarked packets (`-m mark --mark 0`), so
// NFQUEUE sees only what the program declines (fragments, ICMP, other protocols, cut or
// unusual headers, no active target).
//
// The program reads a mirror of the Maglev lookup (TableMirror): fwmark per lookup entry
// (hash % M), kept in step with the shared-memory table.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAddress, toKeyAddress } from '../address.js';
import { log } from '../log.js';
import { loadAddon, packageRoot } from '../native.js';
import { MIRROR_FOLLOW_MS, TableMirror } from '../table-mirror.js';
import { NFQLB_TABLE, TableFollower } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import { UsageError } from '../usage-error.js';
import type { Compat } from './compat.js';

/** The program's name in the kernel (`bpftool prog`, leftover checks). */
export const OFFLOAD_PROGRAM = 'tslb_offload';
const ARPHRD_ETHER = 1;

export interface OffloadOptions {
  /** Devices whose tc ingress gets the program (the lb's ingress, e.g. eth2). */
  devs: string[];
  /** VIP addresses, IPv4 or IPv6; packets to other addresses are not touched. */
  vips: string[];
}

export interface OffloadCounters {
  /** Packets the program marked (they never reach the queue). */
  marked: number;
  /** VIP packets it left unmarked for the queue. */
  declined: number;
}

export interface TcOffloadNative {
  attach(ifname: string): void;
  detach(ifname: string): void;
  addVip(key: Uint8Array): void;
  publish(fwmarks: Int32Array): void;
  counters(): OffloadCounters;
  testRun(frame: Uint8Array): { retval: number; mark: number };
  close(): void;
}

export interface TcOffloadAddon {
  TcOffload: new (objectFile: string, hashMode: number, sctpEncap: number) => TcOffloadNative;
  /** Programs attached at tcx ingress of a device. */
  tcxIngress(ifname: string): { id: number; name?: string }[];
}

/** The addon, once the compiled program it loads is known to be there. */
export function offloadAddon(): TcOffloadAddon {
  const addon = loadAddon<TcOffloadAddon>('tc_offload');
  const file = offloadObjectFile();
  if (!existsSync(file)) throw new Error(`the offload program is not built (${file}): run 'make build' (needs apt package clang)`);
  return addon;
}

/** The compiled program, built by `make build` next to the addons. */
export function offloadObjectFile(): string {
  return join(packageRoot(), 'build', 'Release', 'tc_offload.bpf.o');
}

/** Parses `--offload=DEV[,DEV...]` and `--vip=ADDR[,ADDR...]` (repeatable); one line on bad input. */
export function parseOffloadOptions(devs: string | undefined, vips: readonly string[]): OffloadOptions | undefined {
  const vipList = vips.flatMap((v) => v.split(','));
  if (devs === undefined) {
    if (vipList.length > 0) throw new UsageError('--vip is for --offload');
    return undefined;
  }
  const devList = devs.split(',');
  if (devList.some((d) => !/^[^\s/]{1,15}$/.test(d))) throw new UsageError(`--offload: '${devs}' is not a list of device names`);
  if (vipList.length === 0) throw new UsageError('--offload needs the VIPs: --vip=ADDR[,ADDR...]');
  for (const v of vipList) {
    try {
      parseAddress(v);
    } catch {
      throw new UsageError(`--vip: '${v}' is not an IPv4 or IPv6 address`);
    }
  }
  return { devs: devList, vips: vipList };
}

/** What the program reads: the fwmark of each lookup entry, -1 where none is active. */
export function lookupFwmarks(t: TargetTable, out: Int32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = t.slotFwmark(t.lookup[i]!);
}

function deviceType(dev: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/${dev}/type`, 'utf8'));
  } catch {
    throw new UsageError(`--offload: Unknown interface [${dev}]`);
  }
}

export class Offload {
  private readonly mirror: TableMirror<TargetTable>;
  private readonly follower: TableFollower<TargetTable>;
  private readonly timer: NodeJS.Timeout;

  /**
   * Loads, fills and attaches the program; on failure nothing stays attached. `addon` is
   * replaceable so the table-following logic can be tested without the kernel.
   */
  static start(
    o: OffloadOptions,
    targetTable: string,
    hashMode: number,
    sctpEncapPort: number,
    addon: TcOffloadAddon = offloadAddon(),
  ): Offload {
    for (const dev of o.devs) {
      if (deviceType(dev) !== ARPHRD_ETHER) throw new UsageError(`--offload: ${dev} is not an Ethernet device`);
    }
    for (const dev of o.devs) {
      const ours = addon.tcxIngress(dev).find((p) => p.name === OFFLOAD_PROGRAM);
      // tcx links end with their process, so this is a live lb (or a link someone pinned).
      if (ours !== undefined) {
        throw new Error(
          `--offload: ${dev} already has an offload program at tc ingress (BPF prog id ${ours.id}): ` +
            "another 'nfqlb lb --offload' runs there, or its link was pinned in /sys/fs/bpf",
        );
      }
    }
    const program = new addon.TcOffload(offloadObjectFile(), hashMode, sctpEncapPort);
    try {
      return new Offload(program, o, targetTable);
    } catch (e) {
      program.close();
      throw e;
    }
  }

  private constructor(
    private readonly program: TcOffloadNative,
    readonly o: OffloadOptions,
    targetTable: string,
  ) {
    for (const v of o.vips) program.addVip(toKeyAddress(parseAddress(v)));
    this.follower = new TableFollower(NFQLB_TABLE, targetTable);
    this.mirror = new TableMirror(
      'offload',
      (t) => t.M,
      lookupFwmarks,
      (fw) => program.publish(fw),
    );
    this.sync();
    for (const dev of o.devs) program.attach(dev);
    this.timer = setInterval(() => {
      this.follower.check();
      this.mirror.follow(this.follower.table);
    }, MIRROR_FOLLOW_MS);
    this.timer.unref();
    log.info({ devs: o.devs, vips: o.vips, program: OFFLOAD_PROGRAM }, 'offload attached at tc ingress');
  }

  /** Publishes the table when its lookup differs from what the program has. */
  sync(): void {
    this.mirror.sync(this.follower.table);
  }

  counters(): OffloadCounters {
    return this.program.counters();
  }

  /** Detaches from every device (the kernel does the same if the process dies). */
  close(): void {
    clearInterval(this.timer);
    const counters = this.program.counters();
    this.program.close();
    log.info({ devs: this.o.devs, ...counters }, 'offload detached');
  }
}

/**
 * The offload program walks IPv6 extension headers correctly, and the reference does not: with
 * --compat=nfqlb it gets only the IPv4 VIPs (where both key every packet the same), so IPv6 VIP
 * packets all go to the queue. Undefined when nothing is left to offload.
 */
export function compatOffload(o: OffloadOptions | undefined, compat: Compat | null | undefined): OffloadOptions | undefined {
  if (o === undefined || compat !== 'nfqlb') return o;
  const vips = o.vips.filter((v) => parseAddress(v).family === 4);
  if (vips.length < o.vips.length) {
    const ipv6Vips = o.vips.filter((v) => !vips.includes(v));
    log.info({ ipv6Vips }, '--compat=nfqlb: IPv6 VIP packets are not offloaded: the queue keys them as the reference does');
  }
  return vips.length === 0 ? undefined : { ...o, vips };
}
