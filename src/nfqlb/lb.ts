// The nfqlb data path: every packet from the queue gets the fwmark of the target that owns its
// flow. Stateless — the choice depends only on the packet and the shared target table, so every
// load-balancer with the same table sends a flow to the same target.
import { NfQueue, DESC, NF_ACCEPT, NF_DROP } from '../nfqueue.js';
import { PacketInfo, parsePacket, packetHash } from '../packet.js';
import type { TargetTable } from '../target-table.js';

/** Returns the fwmark for the IP packet in buf[off, off+len), or a negative number to drop it. */
export type FwmarkFn = (buf: Uint8Array, off: number, len: number) => number;

/**
 * Hands every batch from the queue to `fwmarkOf` and returns the verdicts: accept with the
 * fwmark, or drop. One JS call per batch; the addon sends all verdicts in one sendmsg.
 */
export function serveQueue(queue: NfQueue, fwmarkOf: FwmarkFn): void {
  const { desc, data, verdicts } = queue;
  queue.start((count) => {
    for (let i = 0; i < count; i++) {
      const d = i * DESC.WORDS;
      const fw = fwmarkOf(data, desc[d + DESC.OFFSET]!, desc[d + DESC.CAPLEN]!);
      verdicts[2 * i] = fw < 0 ? NF_DROP : NF_ACCEPT;
      verdicts[2 * i + 1] = fw;
    }
  });
}

export interface BalancerOptions {
  /** 0: 5-tuple hash; 1: SCTP hashed on ports only (multihoming). */
  hashMode: number;
  /** fwmark for packets when no target is active; negative drops them. */
  notargetsFwmark: number;
}

/** Maglev over the flow hash, as the reference `nfqlb lb`. */
export class Balancer {
  private readonly pkt = new PacketInfo();

  constructor(
    readonly targets: TargetTable,
    readonly opts: BalancerOptions,
  ) {}

  readonly fwmarkOf: FwmarkFn = (buf, off, len) => {
    const pkt = this.pkt;
    parsePacket(buf, off, len, pkt);
    // Not IP, or too short to find the addresses: nothing to balance on.
    if (pkt.family === 0) return -1;
    const fw = this.targets.fwmarkOf(packetHash(buf, pkt, this.opts.hashMode));
    return fw >= 0 ? fw : this.opts.notargetsFwmark;
  };
}
