// The nfqlb data path: every packet from the queue gets the fwmark of the target that owns its
// flow. Stateless for whole packets — the choice depends only on the packet and the shared
// target table, so every load-balancer with the same table sends a flow to the same target.
// Fragments need the one piece of state: the fragment table remembers the first fragment's
// verdict for the later ones (which carry no ports). With --conntrack (conntrack.ts) a flow
// keeps the target it was first given, at the price of per-LB state.

import { formatAddress } from '../address.js';
import { packetAddressHash, packetHash } from '../hash.js';
import { DESC, NF_ACCEPT, NF_DROP, type NfQueue } from '../nfqueue.js';
import { IPPROTO_SCTP, PARSE_CORRECT, PARSE_NFQLB, PacketInfo, parsePacket } from '../packet.js';
import type { TargetTable } from '../target-table.js';
import type { Compat } from './compat.js';
import type { ConnTrack } from './conntrack.js';
import { QUEUE_COUNTER as QC, QueueCounters } from './counters.js';
import { FRAG_STORED, type FragTable } from './frag-table.js';
import { TRACE, type Tracer } from './tracer.js';
import type { Tun } from './tun.js';

/** Returns the fwmark for the IP packet in buf[off, off+len), or a negative number to drop it. */
export type FwmarkFn = (buf: Uint8Array, off: number, len: number) => number;

/**
 * Hands every batch from the queue to `fwmarkOf` and returns the verdicts: accept with the
 * fwmark, or drop. One JS call per batch; the addon sends all verdicts in one sendmsg.
 * With `counters`, also counts packets, batches, and packets and bytes (the length the kernel
 * reported, not the copied part) per fwmark.
 */
export function serveQueue(queue: NfQueue, fwmarkOf: FwmarkFn, counters: QueueCounters | null = null): void {
  const { desc, data, verdicts } = queue;
  queue.start((count) => {
    try {
      for (let i = 0; i < count; i++) {
        const d = i * DESC.WORDS;
        const fw = fwmarkOf(data, desc[d + DESC.OFFSET]!, desc[d + DESC.CAPLEN]!);
        verdicts[2 * i] = fw < 0 ? NF_DROP : NF_ACCEPT;
        verdicts[2 * i + 1] = fw;
        if (fw >= 0 && counters !== null) counters.countTarget(fw, desc[d + DESC.LEN]!);
      }
    } catch (e) {
      // The addon gives the whole batch the error verdict.
      if (counters !== null) counters.counters[QC.handlerErrors]! += count;
      throw e;
    } finally {
      if (counters !== null) {
        counters.counters[QC.packets]! += count;
        counters.counters[QC.batches]!++;
      }
    }
  });
}

/**
 * Chooses the target table for a whole packet or first fragment: one fixed table for
 * `nfqlb lb`, the matching flow's for `nfqlb flowlb`. It may re-parse `p` (a flow with UDP
 * encapsulated SCTP keys the packet on the inner SCTP ports).
 */
export interface TargetSelector {
  /** The table, or null when no flow matches. */
  select(buf: Uint8Array, off: number, len: number, p: PacketInfo): TargetTable | null;
  /** Whether the last selected table is hashed on the addresses only (a flow without protocols). */
  readonly addressOnly: boolean;
  /** A name for the last selected table (lb: the shm, flowlb: the flow), for traces. */
  readonly selectedName: string;
  /** flowlb: the trace flow (trace-flow-set) taking the packet, for the `flows` trace. */
  traceFlowName?(buf: Uint8Array, p: PacketInfo): string | null;
}

/** `nfqlb lb`: every packet goes to the one table. */
export class SingleTable implements TargetSelector {
  readonly addressOnly = false;
  constructor(
    /** Replaced when `nfqlb init` re-creates the file (see TableFollower in target-store.ts). */
    public table: TargetTable,
    readonly selectedName: string,
  ) {}

  select(): TargetTable {
    return this.table;
  }
}

export interface BalancerOptions {
  /** 0: 5-tuple hash; 1: SCTP hashed on ports only (multihoming). */
  hashMode: number;
  /** fwmark for packets when no target is active; negative drops them. */
  notargetsFwmark: number;
  /** fwmark when no flow matches (flowlb's --nolb_fwmark); negative drops them. */
  nolbFwmark?: number;
  /** UDP port carrying SCTP (--sctp_encap; 0 = none). */
  sctpEncap?: number;
  /** The LB-tier table (--lbshm): fragments are hashed on addresses and sent to the LB that owns them. */
  lbTable?: TargetTable | null;
  /** The fragment table; without one, fragments are hashed on their addresses like before. */
  frags?: FragTable | null;
  /** Where stored fragments are re-injected (--tun); without it they are not stored. */
  tun?: Tun | null;
  tracer?: Tracer | null;
  /** Connection tracking (--conntrack): flows keep their recorded target; null is stateless. */
  conntrack?: ConnTrack | null;
  /** Milliseconds clock for fragment timeouts (tests pass their own). */
  now?: () => number;
  /** QUEUE_COUNTER words (a queue's shared block) for drops and fragments; default private. */
  counters?: Float64Array;
  /**
   * 'nfqlb' (`--compat=nfqlb`): every packet the reference nfqlb 1.2.0 forwards gets its fwmark,
   * its bugs included, for a tier that still has reference LBs (docs/compatibility.md).
   */
  compat?: Compat | null;
}

/** Maglev over the flow hash, as the reference `nfqlb lb` (and `flowlb` with a flow selector). */
export class Balancer {
  private readonly pkt = new PacketInfo();
  private readonly hashMode: number;
  private readonly notargetsFwmark: number;
  private readonly nolbFwmark: number;
  private readonly sctpEncap: number;
  private readonly parseMode: number;
  /** Replaced when `nfqlb init` re-creates the file (see TableFollower in target-store.ts). */
  lbTable: TargetTable | null;
  private readonly frags: FragTable | null;
  private readonly tun: Tun | null;
  private readonly tracer: Tracer | null;
  private readonly traceMask: Int32Array;
  private readonly now: () => number;
  /** What the balancer did that the kernel cannot tell: drops by reason, fragments (QUEUE_COUNTER words). */
  readonly counters: Float64Array;
  readonly conntrack: ConnTrack | null;

  constructor(
    readonly selector: TargetSelector,
    opts: BalancerOptions,
  ) {
    this.hashMode = opts.hashMode;
    this.notargetsFwmark = opts.notargetsFwmark;
    this.nolbFwmark = opts.nolbFwmark ?? -1;
    this.sctpEncap = opts.sctpEncap ?? 0;
    this.parseMode = opts.compat === 'nfqlb' ? PARSE_NFQLB : PARSE_CORRECT;
    this.lbTable = opts.lbTable ?? null;
    this.frags = opts.frags ?? null;
    this.tun = opts.tun ?? null;
    this.tracer = opts.tracer ?? null;
    // Without a tracer the mask is a constant 0 and the check below never passes.
    this.traceMask = this.tracer?.config ?? new Int32Array(2);
    this.now = opts.now ?? (() => performance.now());
    this.counters = opts.counters ?? new QueueCounters().counters;
    this.conntrack = opts.conntrack ?? null;
  }

  /** The target table of `nfqlb lb` (a Balancer over a SingleTable). */
  get targets(): TargetTable | null {
    return this.selector instanceof SingleTable ? this.selector.table : null;
  }

  readonly fwmarkOf: FwmarkFn = (buf, off, len) => {
    const p = this.pkt;
    parsePacket(buf, off, len, p, this.sctpEncap, this.parseMode);
    // Not IP, or too short to find the addresses: nothing to balance on.
    if (p.family === 0) {
      this.counters[QC.parseErrors]!++;
      return -1;
    }
    const fw = p.isFragment ? this.fragment(buf, off, len, p) : this.whole(buf, off, len, p);
    if (this.traceMask[1] !== 0) this.tracePacket(buf, len, p, fw);
    return fw;
  };

  private whole(buf: Uint8Array, off: number, len: number, p: PacketInfo): number {
    const table = this.selector.select(buf, off, len, p);
    if (table === null) {
      if (this.nolbFwmark < 0) this.counters[QC.noFlowMatch]!++;
      return this.nolbFwmark;
    }
    const addressOnly = this.selector.addressOnly;
    const hash = addressOnly ? packetAddressHash(buf, p) : packetHash(buf, p, this.hashMode);
    const ct = this.conntrack;
    const fw = ct === null ? table.fwmarkOf(hash) : ct.fwmarkOf(buf, p, hash, table, addressOnly, this.hashMode);
    if (fw >= 0) return fw;
    if (this.notargetsFwmark < 0) this.counters[QC.noTarget]!++;
    return this.notargetsFwmark;
  }

  private fragment(buf: Uint8Array, off: number, len: number, p: PacketInfo): number {
    // In an LB tier every LB sends all fragments of a datagram to the same LB (by addresses,
    // the only fields every fragment has); that one LB has the first fragment's verdict.
    const lbTable = this.lbTable;
    if (lbTable !== null) {
      const lbFw = lbTable.fwmarkOf(packetAddressHash(buf, p));
      if (lbFw >= 0 && lbFw !== lbTable.ownFwmark) {
        this.counters[QC.fragsToLbTier]!++;
        return lbFw;
      }
    }
    if (p.fragmentedIcmpError) {
      // Dropped; with a fragment table, its later fragments too (they find the "drop" verdict).
      this.counters[QC.fragsDropped]!++;
      this.frags?.insertFirst(buf, p, -1, this.now(), this.inject);
      return -1;
    }
    const frags = this.frags;
    if (frags === null) return this.whole(buf, off, len, p);
    if (p.firstFragment) {
      const fw = this.whole(buf, off, len, p);
      const injected = frags.insertFirst(buf, p, fw, this.now(), this.inject);
      if (injected < 0) {
        // A first fragment without a target was counted as such in whole().
        if (fw >= 0) this.counters[QC.fragsDropped]!++;
        return -1;
      }
      return fw;
    }
    const fw = frags.lookupOrStore(buf, off, len, p, this.now());
    if (fw === FRAG_STORED) this.counters[QC.fragsStored]!++;
    else if (fw < 0) this.counters[QC.fragsDropped]!++;
    return fw < 0 ? -1 : fw;
  }

  private readonly inject = (pool: Uint8Array, off: number, len: number): void => {
    const tun = this.tun;
    if (tun !== null && tun.write(pool, off, len) === len) this.counters[QC.fragsInjected]!++;
    else this.counters[QC.fragsInjectFailed]!++;
  };

  // Only reached while some trace is selected: allocation is fine here.
  private tracePacket(buf: Uint8Array, len: number, p: PacketInfo, fw: number): void {
    const t = this.tracer!;
    const kind = p.isFragment ? 'FRAG' : p.proto === IPPROTO_SCTP ? 'SCTP' : 'PACKET';
    const traceFlow = t.on(TRACE.FLOWS) && this.selector.traceFlowName !== undefined ? this.selector.traceFlowName(buf, p) : null;
    if (!t.on(TRACE[kind]) && !t.on(TRACE.PACKET) && traceFlow === null) return;
    const fields: Record<string, unknown> = {
      len,
      proto: p.proto,
      src: formatAddress(buf, p.srcOff, p.addrLen),
      dst: formatAddress(buf, p.dstOff, p.addrLen),
      fwmark: fw,
    };
    if (p.hasPorts) {
      fields.sport = p.sport;
      fields.dport = p.dport;
    }
    if (p.icmpType >= 0) fields.icmp = { type: p.icmpType, code: p.icmpCode, inner: p.icmpError };
    if (p.isFragment) fields.frag = { id: p.fragId, offset: p.fragOffset, more: p.moreFragments };
    if (p.sctpEncap) fields.sctpEncap = true;
    if (!p.isFragment || p.firstFragment) fields.target = this.selector.selectedName || null;
    if (traceFlow !== null) t.emit('FLOWS', { traceFlow, ...fields });
    if (t.on(TRACE[kind]) || t.on(TRACE.PACKET)) t.emit(kind, fields);
  }
}
