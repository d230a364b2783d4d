// The per-frame decision of xdplb, on Ethernet frames in the UMEM: parse, hash the flow
// as nfqlb does, pick the target by Maglev lookup and rewrite the MAC addresses in place
// (layer-2 direct server return). Allocation-free; never throws on frame bytes.
import { HASH_MODE_SCTP_PORTS, packetAddressHash, packetHash } from '../hash.js';
import { PacketInfo, parsePacket } from '../packet.js';
import type { TargetTable } from '../target-table.js';
import { completePartialChecksum } from './checksum.js';
import type { XdpTable } from './table.js';
import { VERDICT_DROP, VERDICT_TX } from './xsk.js';

const ETH_HLEN = 14;
const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const MAC_STRIDE = 8;

export interface ForwarderCounters {
  /** Frames sent to a target. */
  forwarded: number;
  /** Frames dropped because no target is active. */
  noTarget: number;
  /** Frames dropped because they are not IP we can read. */
  malformed: number;
  /** Partial TCP/UDP checksums completed. */
  checksums: number;
}

export class FrameForwarder {
  readonly counters: ForwarderCounters = { forwarded: 0, noTarget: 0, malformed: 0, checksums: 0 };
  /** Frames sent to each target, by table index (read by the metrics collector). */
  targetFrames = new Float64Array(0);
  private readonly p = new PacketInfo();
  // Set by useTable, from the constructor on.
  private targets!: TargetTable;
  private lookup!: Int32Array;
  private macs!: Uint8Array;
  private M!: number;

  /**
   * `frames` views the UMEM; `srcMac` is the egress device's address. `hashMode` as
   * nfqlb's --hash_mode (1: SCTP hashes its ports only).
   */
  constructor(
    private readonly frames: Uint8Array,
    table: XdpTable,
    private readonly srcMac: Uint8Array,
    private readonly hashMode = HASH_MODE_SCTP_PORTS,
  ) {
    this.useTable(table);
  }

  /** Forwards by `table` from now on (`xdplb init` re-created it); the frame counts go on. */
  useTable(table: XdpTable): void {
    this.targets = table.targets;
    this.lookup = table.targets.lookup;
    this.macs = table.macs;
    this.M = table.M;
    if (table.N > this.targetFrames.length) {
      const grown = new Float64Array(table.N);
      grown.set(this.targetFrames);
      this.targetFrames = grown;
    }
  }

  /** The handler for a batch of n frames (XskSocket.start's onBatch). */
  batch(n: number, addr: Uint32Array, len: Uint32Array, verdict: Uint8Array): void {
    for (let i = 0; i < n; i++) verdict[i] = this.forward(addr[i]!, len[i]!);
  }

  /** Decides the frame at frames[off, off + len): VERDICT_TX after rewriting it, or VERDICT_DROP. */
  forward(off: number, len: number): number {
    const f = this.frames;
    const p = this.p;
    const c = this.counters;
    if (len <= ETH_HLEN) {
      c.malformed++;
      return VERDICT_DROP;
    }
    const type = (f[off + 12]! << 8) | f[off + 13]!;
    if (type !== ETH_P_IP && type !== ETH_P_IPV6) {
      c.malformed++;
      return VERDICT_DROP;
    }
    parsePacket(f, off + ETH_HLEN, len - ETH_HLEN, p);
    if (p.family === 0) {
      c.malformed++;
      return VERDICT_DROP;
    }
    // Every fragment of a datagram must reach the same target, and only the first one has
    // ports: without nfqlb's fragment table, fragments are hashed on addresses alone.
    const hash = p.isFragment ? packetAddressHash(f, p) : packetHash(f, p, this.hashMode);
    const slot = this.lookup[hash % this.M]!;
    if (this.targets.slotFwmark(slot) < 0) {
      c.noTarget++;
      return VERDICT_DROP;
    }
    const mac = slot * MAC_STRIDE;
    const m = this.macs;
    const s = this.srcMac;
    f[off] = m[mac]!;
    f[off + 1] = m[mac + 1]!;
    f[off + 2] = m[mac + 2]!;
    f[off + 3] = m[mac + 3]!;
    f[off + 4] = m[mac + 4]!;
    f[off + 5] = m[mac + 5]!;
    f[off + 6] = s[0]!;
    f[off + 7] = s[1]!;
    f[off + 8] = s[2]!;
    f[off + 9] = s[3]!;
    f[off + 10] = s[4]!;
    f[off + 11] = s[5]!;
    if (completePartialChecksum(f, p)) c.checksums++;
    c.forwarded++;
    this.targetFrames[slot]!++;
    return VERDICT_TX;
  }
}
