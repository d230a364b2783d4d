// xdplb's shared memory (/dev/shm/<name>, default `xdplb`): what `xdplb activate` and
// `xdplb vip-add` in one process change for a running `xdplb lb` in another.
//
// Layout (little-endian):
//   0     uint32 magic 'XDLB', uint32 version (1), uint32 vipGeneration, uint32 vipCount
//   16    uint8 vip[64][16]         VIP keys, IPv4 as ::ffff:a.b.c.d
//   1040  nfqlb target table        (see ../target-table.ts) with M=997, N=20;
//                                   slot i holds i while target i is active
//   ...   uint8 mac[N][8]           target i's MAC in bytes 0..5, 8-aligned
// The Maglev part reuses nfqlb's table, so lookups are bit-identical to nfqlb's for the
// same active slots, and a change never exposes a half-built lookup to the lb.

import { formatAddress, parseAddress, toKeyAddress } from '../address.js';
import type { TableKind } from '../target-store.js';
import { TargetTable } from '../target-table.js';

export const XDPLB_M = 997;
export const XDPLB_N = 20;
export const MAX_VIPS = 64;

const MAGIC = 0x424c4458; // 'XDLB'
const VERSION = 1;
const OFF_MAGIC = 0;
const OFF_VERSION = 4;
const OFF_VIP_GEN = 8;
const OFF_VIP_COUNT = 12;
const OFF_VIPS = 16;
const VIP_BYTES = 16;
const OFF_TABLE = OFF_VIPS + MAX_VIPS * VIP_BYTES;
const MAC_STRIDE = 8;
const SHOWN_LOOKUP_ENTRIES = 24;

function macOffset(M: number, N: number): number {
  return (OFF_TABLE + TargetTable.byteLength(M, N) + 7) & ~7;
}

export class XdpTable {
  readonly targets: TargetTable;
  /** N entries of 8 bytes; target i's MAC is macs[8i .. 8i+5]. */
  readonly macs: Uint8Array;
  private readonly header: DataView;
  private readonly vipBytes: Uint8Array;

  static byteLength(M = XDPLB_M, N = XDPLB_N): number {
    return macOffset(M, N) + N * MAC_STRIDE;
  }

  /** Writes a fresh table (no targets, no VIPs) into `buffer` and returns it. */
  static initialize(buffer: ArrayBufferLike, M = XDPLB_M, N = XDPLB_N): XdpTable {
    const size = XdpTable.byteLength(M, N);
    if (buffer.byteLength < size) throw new RangeError(`xdplb table needs ${size} bytes, got ${buffer.byteLength}`);
    new Uint8Array(buffer, 0, size).fill(0);
    TargetTable.initialize(buffer, M, N, 0, OFF_TABLE);
    const h = new DataView(buffer, 0, OFF_VIPS);
    h.setUint32(OFF_VERSION, VERSION, true);
    h.setUint32(OFF_MAGIC, MAGIC, true); // last: a reader checks it first
    return new XdpTable(buffer);
  }

  /** Views over an existing table; throws RangeError when `buffer` does not hold one. */
  constructor(buffer: ArrayBufferLike) {
    if (buffer.byteLength < OFF_TABLE + 16) throw new RangeError('not an xdplb table: too small');
    this.header = new DataView(buffer, 0, OFF_VIPS);
    if (this.header.getUint32(OFF_MAGIC, true) !== MAGIC) throw new RangeError('not an xdplb table (bad magic)');
    const version = this.header.getUint32(OFF_VERSION, true);
    if (version !== VERSION) throw new RangeError(`xdplb table version ${version}, expected ${VERSION}`);
    this.targets = new TargetTable(buffer, OFF_TABLE);
    const { M, N } = this.targets;
    if (buffer.byteLength < XdpTable.byteLength(M, N)) throw new RangeError('xdplb table truncated');
    this.macs = new Uint8Array(buffer, macOffset(M, N), N * MAC_STRIDE);
    this.vipBytes = new Uint8Array(buffer, OFF_VIPS, MAX_VIPS * VIP_BYTES);
  }

  get M(): number {
    return this.targets.M;
  }

  get N(): number {
    return this.targets.N;
  }

  /**
   * Marks target `index` active, first setting its MAC when given. Throws RangeError,
   * changing nothing, for a bad index or an active target without a MAC.
   */
  activate(index: number, mac?: Uint8Array): void {
    this.checkIndex(index);
    const at = index * MAC_STRIDE;
    if (mac === undefined && this.macs.subarray(at, at + 6).every((b) => b === 0)) {
      throw new RangeError(`target ${index} has no MAC address: give --mac`);
    }
    // The MAC goes in before the slot is used, so the lb never sends to a stale one.
    if (mac !== undefined) this.macs.set(mac.subarray(0, 6), at);
    this.targets.setIndex(index, index);
  }

  deactivate(index: number): void {
    this.checkIndex(index);
    this.targets.clearIndex(index);
  }

  isActive(index: number): boolean {
    return (this.targets.active[index] ?? -1) >= 0;
  }

  /** The text of `xdplb show`, newline-terminated (the original's layout). */
  show(): string {
    let lookup = '';
    for (let i = 0; i < Math.min(SHOWN_LOOKUP_ENTRIES, this.M); i++) lookup += `${this.targets.lookup[i]} `;
    let out = `M=${this.M}, N=${this.N}, lookup;\n${lookup}...\nActive:\n`;
    for (let i = 0; i < this.N; i++) {
      if (this.isActive(i)) out += `  ${String(i).padEnd(2)}: ${formatMac(this.macs, i * MAC_STRIDE)}\n`;
    }
    return out;
  }

  // ---- VIPs: a small set; vipGeneration changes whenever it does.

  get vipGeneration(): number {
    return this.header.getUint32(OFF_VIP_GEN, true);
  }

  /**
   * The VIP keys with their generation, or null while a writer is mid-change (the
   * generation is odd then, or moves while we read): a reader just tries again later.
   */
  vipSnapshot(): { generation: number; keys: Uint8Array[] } | null {
    const generation = this.vipGeneration;
    if (generation % 2 === 1) return null;
    const keys = this.vipKeys();
    return this.vipGeneration === generation ? { generation, keys } : null;
  }

  /** The VIP keys (16 bytes each), copied. */
  vipKeys(): Uint8Array[] {
    const n = Math.min(this.header.getUint32(OFF_VIP_COUNT, true), MAX_VIPS);
    const out: Uint8Array[] = [];
    for (let i = 0; i < n; i++) out.push(this.vipBytes.slice(i * VIP_BYTES, (i + 1) * VIP_BYTES));
    return out;
  }

  /** The VIPs as text, in the order they were added. */
  vips(): string[] {
    return this.vipKeys().map(vipText);
  }

  /** Adds VIPs (text addresses) not yet present. Throws, changing nothing, on bad input or overflow. */
  addVips(texts: readonly string[]): boolean {
    const keys = this.vipKeys();
    const hex = new Set(keys.map(keyHex));
    for (const text of texts) {
      const key = vipKey(text);
      if (hex.has(keyHex(key))) continue;
      hex.add(keyHex(key));
      keys.push(key);
    }
    if (keys.length > MAX_VIPS) throw new RangeError(`too many VIPs: at most ${MAX_VIPS}`);
    return this.writeVips(keys);
  }

  /** Removes VIPs; absent ones are ignored. Throws, changing nothing, on bad input. */
  removeVips(texts: readonly string[]): boolean {
    const gone = new Set(texts.map((t) => keyHex(vipKey(t))));
    return this.writeVips(this.vipKeys().filter((k) => !gone.has(keyHex(k))));
  }

  private writeVips(keys: Uint8Array[]): boolean {
    const before = this.vipKeys();
    if (before.length === keys.length && before.every((k, i) => keyHex(k) === keyHex(keys[i]!))) return false;
    // A reader takes the list only when the generation is the same before and after reading.
    this.header.setUint32(OFF_VIP_GEN, (this.vipGeneration + 1) >>> 0, true);
    for (const [i, k] of keys.entries()) this.vipBytes.set(k, i * VIP_BYTES);
    this.vipBytes.fill(0, keys.length * VIP_BYTES);
    this.header.setUint32(OFF_VIP_COUNT, keys.length, true);
    this.header.setUint32(OFF_VIP_GEN, (this.vipGeneration + 1) >>> 0, true);
    return true;
  }

  private checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.N) {
      throw new RangeError(`Invalid index [${index}]: must be 0..${this.N - 1}`);
    }
  }
}

/** The 16-byte VIP key of an address text; throws `Invalid address [text]`. */
export function vipKey(text: string): Uint8Array {
  return toKeyAddress(parseAddress(text));
}

/** The text of a VIP key (IPv4 for ::ffff:a.b.c.d). */
export function vipText(key: Uint8Array): string {
  const v4 = key.subarray(0, 10).every((b) => b === 0) && key[10] === 0xff && key[11] === 0xff;
  return v4 ? formatAddress(key, 12, 4) : formatAddress(key, 0, 16);
}

function keyHex(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('hex');
}

/** xdplb's table, for TargetStore and TableFollower. */
export const XDPLB_TABLE: TableKind<XdpTable, { M: number; N: number }> = {
  view: (buffer) => new XdpTable(buffer),
  targets: (table) => table.targets,
  byteLength: ({ M, N }) => XdpTable.byteLength(M, N),
  initialize: (buffer, { M, N }) => XdpTable.initialize(buffer, M, N),
  // No flow state: a deactivated target gets no more frames at once.
  drains: false,
};

/** '0:0:0:1:1:1' or '00:00:00:01:01:01' to 6 bytes; throws `Invalid MAC [text]`. */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(':');
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{1,2}$/.test(p))) throw new Error(`Invalid MAC [${text}]`);
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function formatMac(buf: Uint8Array, off = 0): string {
  let s = '';
  for (let i = 0; i < 6; i++) s += (i ? ':' : '') + buf[off + i]!.toString(16).padStart(2, '0');
  return s;
}
