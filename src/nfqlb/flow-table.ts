// Flows for `nfqlb flowlb`: a flow selects packets by protocols, destination and source CIDRs,
// destination and source port ranges and byte matches on the transport header, and sends them
// to its own target table (shared memory). Flows are tried in priority order (highest first);
// an absent item matches everything. A flow without protocols hashes packets on their
// addresses only, so every protocol between two hosts reaches the same target.
//
// Two halves: FlowSet is the control plane (validation, order, listing) in the process that
// owns the flow channel; FlowSelector is the data plane of one queue, rebuilt from the specs
// on every change and matching with typed arrays only.
import { formatAddress, parseIPv4, parseIPv6 } from '../address.js';
import { IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PARSE_NFQLB, type PacketInfo, parsePacket } from '../packet.js';
import { NFQLB_TABLE, TargetStore } from '../target-store.js';
import type { TargetTable } from '../target-table.js';
import type { TargetSelector } from './balancer.js';
import type { Tracer } from './tracer.js';

/** A flow as set with `nfqlb flow-set` (the wire form of the flow channel). */
export interface FlowSpec {
  name: string;
  /** Target shared memory; null for the hidden UDP flow of --udpencap and for trace flows. */
  target: string | null;
  priority: number;
  protocols?: string[];
  dsts?: string[];
  srcs?: string[];
  dports?: string;
  sports?: string;
  match?: string[];
  udpencap?: number;
  /** Counter slot, assigned by the FlowSet. */
  slot?: number;
}

export class FlowError extends Error {
  override name = 'FlowError';
}

const MAX_NAME = 1000;
const MAX_CIDRS = 32;
const NAME = /^[A-Za-z0-9+_-]+$/;
/** Counter slots per queue (flows + hidden flows alive at once). */
export const MAX_FLOW_SLOTS = 1024;

const PROTO_BITS: Record<string, number> = { tcp: 1, udp: 2, sctp: 4 };
const PROTO_NAMES = ['tcp', 'udp', 'sctp'] as const;
function protoBit(proto: number): number {
  return proto === IPPROTO_TCP ? 1 : proto === IPPROTO_UDP ? 2 : proto === IPPROTO_SCTP ? 4 : 0;
}
/** The transport header length byte matches may read (the reference's bounds). */
function headerLength(proto: number): number {
  return proto === IPPROTO_TCP ? 20 : proto === IPPROTO_UDP ? 8 : proto === IPPROTO_SCTP ? 12 : 0;
}

/** One byte-match statement: `tcp[2:2] = 5001`, `udp[0:4] & 0x0000ffff = 5001`. */
export interface MatchItem {
  proto: number;
  offset: number;
  bytes: 1 | 2 | 4;
  /** 0 = no mask. */
  mask: number;
  value: number;
}

const MATCH = /^(sctp|tcp|udp)\[([0-9]+) *: *([124])\](?: *& *(0x[0-9a-fA-F]+|[0-9]+))? *= *(0x[0-9a-fA-F]+|[0-9]+)$/;

export function parseMatch(text: string): MatchItem {
  if (text.length > 64) throw new FlowError(`match too long [${text}]`);
  const m = MATCH.exec(text.trim());
  if (!m) throw new FlowError(`invalid match [${text}]: use e.g. tcp[2:2] = 5001 or udp[0:4] & 0xffff = 5001`);
  const proto = m[1] === 'tcp' ? IPPROTO_TCP : m[1] === 'udp' ? IPPROTO_UDP : IPPROTO_SCTP;
  const offset = Number(m[2]);
  const bytes = Number(m[3]) as 1 | 2 | 4;
  if (offset + bytes > headerLength(proto)) {
    throw new FlowError(`match out of bounds [${text}]: the ${m[1]} header has ${headerLength(proto)} bytes`);
  }
  const max = 2 ** (8 * bytes) - 1;
  const mask = m[4] === undefined ? 0 : Number(m[4]);
  const value = Number(m[5]);
  // The reference accepted values wider than the field, which can never match.
  if (mask > max || value > max) throw new FlowError(`match value wider than ${bytes} bytes [${text}]`);
  return { proto, offset, bytes, mask, value };
}

export function formatMatch(i: MatchItem): string {
  const proto = i.proto === IPPROTO_TCP ? 'tcp' : i.proto === IPPROTO_UDP ? 'udp' : 'sctp';
  const mask = i.mask !== 0 ? `&0x${i.mask.toString(16)}` : '';
  return `${proto}[${i.offset}:${i.bytes}]${mask}=0x${i.value.toString(16)}`;
}

/** A CIDR in the 16-byte key space (IPv4 as ::ffff:a.b.c.d/96+n), as the reference matches. */
interface KeyCidr {
  bytes: Uint8Array;
  prefixLen: number;
}

function parseFlowCidr(text: string): KeyCidr {
  const slash = text.indexOf('/');
  if (slash < 0) throw new FlowError(`invalid CIDR [${text}]: no prefix length`);
  const addr = text.slice(0, slash);
  const lenText = text.slice(slash + 1);
  const v4 = parseIPv4(addr);
  const v6 = v4 === null ? parseIPv6(addr) : null;
  const max = v4 !== null ? 32 : 128;
  if ((v4 === null && v6 === null) || !/^[0-9]{1,3}$/.test(lenText) || Number(lenText) > max) {
    throw new FlowError(`invalid CIDR [${text}]`);
  }
  const bytes = new Uint8Array(16);
  let prefixLen = Number(lenText);
  if (v4 !== null) {
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    bytes.set(v4, 12);
    prefixLen += 96;
  } else {
    bytes.set(v6!);
  }
  for (let bit = prefixLen; bit < 128; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { bytes, prefixLen };
}

function formatFlowCidr(c: KeyCidr): string {
  return `${formatAddress(c.bytes, 0, 16)}/${c.prefixLen}`;
}

/** Port ranges `80,1000-2000` as [lo, hi] pairs, sorted and merged. */
function parsePorts(text: string): Int32Array {
  const ranges: [number, number][] = [];
  for (const part of text.split(',')) {
    const m = /^ *([0-9]{1,5}) *(?:- *([0-9]{1,5}))? *$/.exec(part);
    const lo = Number(m?.[1]);
    const hi = m?.[2] === undefined ? lo : Number(m[2]);
    if (!m || lo < 1 || hi > 65535 || lo > hi) throw new FlowError(`invalid port range [${part}]`);
    ranges.push([lo, hi]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const r of ranges) {
    const last = merged.at(-1);
    if (last !== undefined && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  return Int32Array.from(merged.flat());
}

function formatPorts(ranges: Int32Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < ranges.length; i += 2) out.push(ranges[i] === ranges[i + 1] ? `${ranges[i]}` : `${ranges[i]}-${ranges[i + 1]}`);
  return out;
}

/** A validated flow, ready for matching. */
export class Flow {
  readonly name: string;
  readonly target: string | null;
  readonly priority: number;
  /** Protocol bits (tcp 1, udp 2, sctp 4); 0 = any protocol, and then addresses-only hashing. */
  readonly protoBits: number;
  readonly dsts: KeyCidr[] | null;
  readonly srcs: KeyCidr[] | null;
  readonly dports: Int32Array | null;
  readonly sports: Int32Array | null;
  readonly match: MatchItem[];
  readonly udpencap: number;
  readonly slot: number;

  constructor(spec: FlowSpec) {
    if (typeof spec.name !== 'string' || spec.name.length === 0 || spec.name.length > MAX_NAME) throw new FlowError('no name');
    const internal = spec.name.startsWith('#');
    if (!NAME.test(internal ? spec.name.slice(1) : spec.name)) {
      throw new FlowError(`invalid name [${spec.name}]: use letters, digits and -+_`);
    }
    if (!Number.isInteger(spec.priority) || spec.priority < 0 || spec.priority > 0x7fffffff) {
      throw new FlowError(`invalid priority [${spec.priority}]`);
    }
    this.name = spec.name;
    this.target = spec.target;
    this.priority = spec.priority;
    let bits = 0;
    for (const p of spec.protocols ?? []) {
      const bit = PROTO_BITS[p.toLowerCase()];
      if (bit === undefined) throw new FlowError(`invalid protocol [${p}]: tcp, udp or sctp`);
      bits |= bit;
    }
    this.protoBits = bits;
    const cidrs = (list: string[] | undefined, what: string): KeyCidr[] | null => {
      if (list === undefined || list.length === 0) return null;
      if (list.length > MAX_CIDRS) throw new FlowError(`too many ${what} (max ${MAX_CIDRS})`);
      return list.map(parseFlowCidr);
    };
    this.dsts = cidrs(spec.dsts, 'dsts');
    this.srcs = cidrs(spec.srcs, 'srcs');
    this.dports = spec.dports === undefined ? null : parsePorts(spec.dports);
    this.sports = spec.sports === undefined ? null : parsePorts(spec.sports);
    if ((this.dports !== null || this.sports !== null) && bits === 0) throw new FlowError('ports specified without protocols');
    this.match = (spec.match ?? []).map(parseMatch);
    const encap = spec.udpencap ?? 0;
    if (!Number.isInteger(encap) || encap < 0 || encap > 65535) throw new FlowError(`invalid udpencap [${encap}]`);
    if (encap !== 0 && !internal && bits !== PROTO_BITS.sctp) throw new FlowError('only sctp for udpencap');
    this.udpencap = encap;
    this.slot = spec.slot ?? -1;
  }

  /** Whether the flow takes packet p (parsed from buf); `pingOnly`: addresses only (promiscuous ping). */
  matches(buf: Uint8Array, p: PacketInfo, pingOnly: boolean): boolean {
    if (!pingOnly) {
      if (this.dports !== null && !inRanges(this.dports, p.hasPorts ? p.dport : 0)) return false;
    }
    if (this.dsts !== null && !inCidrs(this.dsts, buf, p.dstOff, p.addrLen)) return false;
    if (pingOnly) return this.srcs === null || inCidrs(this.srcs, buf, p.srcOff, p.addrLen);
    if (this.protoBits !== 0 && (this.protoBits & protoBit(p.proto)) === 0) return false;
    if (this.srcs !== null && !inCidrs(this.srcs, buf, p.srcOff, p.addrLen)) return false;
    if (this.sports !== null && !inRanges(this.sports, p.hasPorts ? p.sport : 0)) return false;
    return this.match.length === 0 || this.bytesMatch(buf, p);
  }

  // Byte matches read the packet's own transport header (the inner SCTP header when it is
  // UDP encapsulated); statements for another protocol do not apply.
  private bytesMatch(buf: Uint8Array, p: PacketInfo): boolean {
    // The reference finds no transport header behind an IPv6 fragment header (--compat=nfqlb).
    if (p.l4Off < 0 || (p.mode === PARSE_NFQLB && p.family === 6 && p.isFragment)) return false;
    let proto = p.l4Proto;
    let l4 = p.l4Off;
    if (p.sctpEncap && !p.icmpError) {
      proto = IPPROTO_SCTP;
      l4 += 8;
    }
    for (const item of this.match) {
      if (item.proto !== proto) continue;
      if (l4 + headerLength(proto) > p.end) return false;
      const at = l4 + item.offset;
      let x = buf[at]!;
      if (item.bytes >= 2) x = (x << 8) | buf[at + 1]!;
      if (item.bytes === 4) x = ((x << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
      if (item.mask !== 0) x = (x & item.mask) >>> 0;
      if (x !== item.value) return false;
    }
    return true;
  }

  /** The flow-list JSON object (the reference's field names and forms). */
  toJSON(count: number): Record<string, unknown> {
    const o: Record<string, unknown> = { name: this.name, priority: this.priority };
    if (this.protoBits !== 0) o.protocols = PROTO_NAMES.filter((n) => (this.protoBits & PROTO_BITS[n]!) !== 0);
    if (this.dsts !== null) o.dests = this.dsts.map(formatFlowCidr);
    if (this.dports !== null) o.dports = formatPorts(this.dports);
    if (this.srcs !== null) o.srcs = this.srcs.map(formatFlowCidr);
    if (this.sports !== null) o.sports = formatPorts(this.sports);
    if (this.match.length > 0) o.match = this.match.map(formatMatch);
    if (this.udpencap !== 0) o.udpencap = this.udpencap;
    o.matches_count = count;
    o.user_ref = this.target ?? 'NULL';
    return o;
  }
}

function inRanges(r: Int32Array, port: number): boolean {
  for (let i = 0; i < r.length; i += 2) if (port >= r[i]! && port <= r[i + 1]!) return true;
  return false;
}

function inCidrs(list: KeyCidr[], buf: Uint8Array, off: number, len: number): boolean {
  for (const c of list) if (inCidr(c, buf, off, len)) return true;
  return false;
}

/** Whether the address (4 or 16 bytes at buf[off]) lies in c, comparing in the 16-byte key space. */
function inCidr(c: KeyCidr, buf: Uint8Array, off: number, len: number): boolean {
  const full = c.prefixLen >> 3;
  const rest = c.prefixLen & 7;
  const n = rest === 0 ? full : full + 1;
  for (let i = 0; i < n; i++) {
    const b = len === 16 ? buf[off + i]! : i < 10 ? 0 : i < 12 ? 0xff : buf[off + i - 12]!;
    const mask = i < full ? 0xff : (0xff00 >> rest) & 0xff;
    if (((b ^ c.bytes[i]!) & mask) !== 0) return false;
  }
  return true;
}

function byPriority(a: Flow, b: Flow): number {
  return b.priority - a.priority;
}

/**
 * The control plane's flows (`flow-set`, `flow-delete`, `flow-list`), in priority order, with
 * counter slots. A flow with --udpencap brings a hidden UDP flow `#<name>`: encapsulated SCTP
 * arrives as UDP to that port and must be matched as such before it is re-read as SCTP.
 */
export class FlowSet {
  private flows: Flow[] = [];
  private readonly freeSlots: number[];

  constructor(slots = MAX_FLOW_SLOTS) {
    this.freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }

  /**
   * Adds or replaces a flow; throws FlowError (nothing changed) when the spec is invalid.
   * Returns the counter slots it took (the caller zeroes them: they may have been used before).
   */
  set(spec: FlowSpec): number[] {
    if (spec.name.startsWith('#')) throw new FlowError(`invalid name [${spec.name}]: '#' names are internal`);
    const flow = new Flow({ ...spec, slot: 0 });
    const hidden =
      flow.udpencap !== 0
        ? new Flow({
            name: `#${spec.name}`,
            target: null,
            priority: spec.priority,
            protocols: ['udp'],
            dports: String(flow.udpencap),
            dsts: spec.dsts,
            srcs: spec.srcs,
            udpencap: flow.udpencap,
            slot: 0,
          })
        : null;
    const replaced = [this.find(spec.name), this.find(`#${spec.name}`)].filter((f): f is Flow => f !== undefined);
    const needed = 1 + (hidden ? 1 : 0);
    if (this.freeSlots.length + replaced.length < needed) throw new FlowError('too many flows');
    this.remove(spec.name);
    const slots: number[] = [];
    for (const f of hidden ? [flow, hidden] : [flow]) {
      const slot = this.freeSlots.pop()!;
      slots.push(slot);
      this.flows.push(new Flow({ ...specOf(f), slot }));
    }
    // Stable: among equal priorities the older flow matches first.
    this.flows.sort(byPriority);
    return slots;
  }

  /** Deletes a flow (and its hidden UDP flow); returns whether it existed. */
  delete(name: string): boolean {
    return this.remove(name);
  }

  /** Flows in match order (hidden ones included). */
  all(): readonly Flow[] {
    return this.flows;
  }

  find(name: string): Flow | undefined {
    return this.flows.find((f) => f.name === name);
  }

  /** Specs for the data planes, with slots. */
  specs(): FlowSpec[] {
    return this.flows.map(specOf);
  }

  private remove(name: string): boolean {
    const before = this.flows.length;
    this.flows = this.flows.filter((f) => {
      const gone = f.name === name || f.name === `#${name}`;
      if (gone) this.freeSlots.push(f.slot);
      return !gone;
    });
    return this.flows.length !== before;
  }
}

function specOf(f: Flow): FlowSpec {
  const s: FlowSpec = { name: f.name, target: f.target, priority: f.priority, slot: f.slot };
  if (f.protoBits !== 0) s.protocols = PROTO_NAMES.filter((n) => (f.protoBits & PROTO_BITS[n]!) !== 0);
  if (f.dsts !== null) s.dsts = f.dsts.map(formatFlowCidr);
  if (f.srcs !== null) s.srcs = f.srcs.map(formatFlowCidr);
  if (f.dports !== null) s.dports = formatPorts(f.dports).join(',');
  if (f.sports !== null) s.sports = formatPorts(f.sports).join(',');
  if (f.match.length > 0) s.match = f.match.map(formatMatch);
  if (f.udpencap !== 0) s.udpencap = f.udpencap;
  return s;
}

export interface FlowSelectorOptions {
  /** ICMP echo requests match flows on their addresses only (--promiscuous_ping). */
  promiscuousPing: boolean;
  tracer?: Tracer | null;
  /** This queue's counters, indexed by flow slot (a view of memory shared with the flow server). */
  counters?: Float64Array;
  /** Opens a flow's target table (tests pass their own). */
  openTable?: (name: string) => TargetTable;
}

/** The data plane of flowlb for one queue: the first matching flow's table. */
export class FlowSelector implements TargetSelector {
  addressOnly = false;
  selectedName = '';
  private flows: Flow[] = [];
  private tables: (TargetTable | null)[] = [];
  private traceFlows: Flow[] = [];
  private readonly promiscuousPing: boolean;
  private readonly tracer: Tracer | null;
  private readonly counters: Float64Array;
  private readonly openTable: (name: string) => TargetTable;
  private readonly cache = new Map<string, TargetTable>();

  constructor(o: FlowSelectorOptions) {
    this.promiscuousPing = o.promiscuousPing;
    this.tracer = o.tracer ?? null;
    this.counters = o.counters ?? new Float64Array(MAX_FLOW_SLOTS);
    this.openTable = o.openTable ?? ((name) => TargetStore.open(NFQLB_TABLE, name).table);
  }

  /** Replaces the flows (specs from FlowSet.specs()); a table that cannot be opened disables its flow. */
  setFlows(specs: readonly FlowSpec[], traceSpecs: readonly FlowSpec[] = []): void {
    const flows = specs.map((s) => new Flow(s));
    const tables = flows.map((f) => {
      if (f.target === null) return null;
      let t = this.cache.get(f.target);
      if (t === undefined) {
        try {
          t = this.openTable(f.target);
        } catch (e) {
          this.tracer?.log('warn', { flow: f.name, target: f.target, err: (e as Error).message }, 'flow target not usable');
          return null;
        }
        this.cache.set(f.target, t);
      }
      return t;
    });
    // Tables no flow uses any more are dropped (their mappings go with the garbage collector).
    for (const name of this.cache.keys()) if (!flows.some((f) => f.target === name)) this.cache.delete(name);
    this.flows = flows;
    this.tables = tables;
    this.traceFlows = traceSpecs.map((s) => new Flow(s));
  }

  select(buf: Uint8Array, off: number, len: number, p: PacketInfo): TargetTable | null {
    let i = this.find(buf, p);
    const encap = i < 0 ? 0 : this.flows[i]!.udpencap;
    if (encap !== 0 && !p.sctpEncap && p.proto === IPPROTO_UDP && p.dport === encap) {
      // UDP to an SCTP encapsulation port: re-read it as SCTP and look again.
      parsePacket(buf, off, len, p, encap, p.mode);
      i = (p.proto as number) === IPPROTO_SCTP ? this.find(buf, p) : -1;
    }
    if (i < 0) {
      this.selectedName = '';
      return null;
    }
    const flow = this.flows[i]!;
    this.counters[flow.slot]!++;
    this.addressOnly = flow.protoBits === 0;
    this.selectedName = flow.name;
    return this.tables[i]!;
  }

  /** The first trace flow (trace-flow-set) taking the packet, or null. */
  traceFlowName(buf: Uint8Array, p: PacketInfo): string | null {
    const ping = isEchoRequest(p);
    for (const f of this.traceFlows) if (f.matches(buf, p, ping)) return f.name;
    return null;
  }

  private find(buf: Uint8Array, p: PacketInfo): number {
    const ping = this.promiscuousPing && isEchoRequest(p);
    const flows = this.flows;
    for (let i = 0; i < flows.length; i++) if (flows[i]!.matches(buf, p, ping)) return i;
    return -1;
  }
}

function isEchoRequest(p: PacketInfo): boolean {
  if (p.icmpError) return false;
  return (p.family === 4 && p.l4Proto === 1 && p.icmpType === 8) || (p.family === 6 && p.l4Proto === 58 && p.icmpType === 128);
}
