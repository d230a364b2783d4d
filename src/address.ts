// IP addresses, endpoints and CIDRs as bytes. Strict numeric forms only (no host names):
// the CLI must reject what inet_pton would reject, with one clear line.

export type IpFamily = 4 | 6;

export interface IpAddress {
  family: IpFamily;
  /** 4 bytes for IPv4, 16 for IPv6 (network order). */
  bytes: Uint8Array;
}

export interface Endpoint {
  address: IpAddress;
  /** The port, or null when the text had none. */
  port: number | null;
}

export interface Cidr {
  family: IpFamily;
  /** The network address with the host bits cleared. */
  bytes: Uint8Array;
  prefixLen: number;
}

const DECIMAL_OCTET = /^(0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Dotted quad to 4 bytes, or null. Leading zeros are refused (they mean octal to some parsers). */
export function parseIPv4(text: string): Uint8Array | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    if (!DECIMAL_OCTET.test(part)) return null;
    const v = Number(part);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

/** RFC 4291 text (with `::` and an optional dotted-quad tail) to 16 bytes, or null. */
export function parseIPv6(text: string): Uint8Array | null {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const tail = halves.length === 2 ? (halves[1] === '' ? [] : halves[1]!.split(':')) : [];
  const words: number[] = [];
  const tailWords: number[] = [];
  if (!pushGroups(head, words, halves.length === 1)) return null;
  if (!pushGroups(tail, tailWords, true)) return null;
  // An embedded IPv4 address may only end the text.
  if (halves.length === 2 && head.some((g) => g.includes('.'))) return null;
  const total = words.length + tailWords.length;
  if (halves.length === 1 ? total !== 8 : total > 7) return null;
  const out = new Uint8Array(16);
  for (const [i, w] of words.entries()) writeWord(out, i, w);
  for (const [i, w] of tailWords.entries()) writeWord(out, 8 - tailWords.length + i, w);
  return out;
}

function pushGroups(groups: string[], words: number[], mayEndWithIPv4: boolean): boolean {
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i]!;
    if (HEX_GROUP.test(g)) {
      words.push(parseInt(g, 16));
      continue;
    }
    if (!mayEndWithIPv4 || i !== groups.length - 1) return false;
    const v4 = parseIPv4(g);
    if (v4 === null) return false;
    words.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
  }
  return true;
}

function writeWord(out: Uint8Array, index: number, word: number): void {
  out[index * 2] = word >> 8;
  out[index * 2 + 1] = word & 0xff;
}

/** An IPv4 or IPv6 address; throws `Invalid address [text]`. */
export function parseAddress(text: string): IpAddress {
  const v4 = parseIPv4(text);
  if (v4 !== null) return { family: 4, bytes: v4 };
  const v6 = parseIPv6(text);
  if (v6 !== null) return { family: 6, bytes: v6 };
  throw new Error(`Invalid address [${text}]`);
}

/** A decimal port 0..65535; throws `Invalid port [text]`. */
export function parsePort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535) throw new Error(`Invalid port [${text}]`);
  return Number(text);
}

/**
 * 'a.b.c.d:port' or '[v6]:port' (nfqlb's --src/--dst form); with `portRequired` false also a
 * bare 'a.b.c.d', 'v6' or '[v6]'. Throws one line naming the bad text.
 */
export function parseEndpoint(text: string, portRequired = true): Endpoint {
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) throw new Error(`Invalid address [${text}]: missing ']'`);
    const v6 = parseIPv6(text.slice(1, close));
    if (v6 === null) throw new Error(`Invalid address [${text}]`);
    const rest = text.slice(close + 1);
    if (rest === '' && !portRequired) return { address: { family: 6, bytes: v6 }, port: null };
    if (!rest.startsWith(':')) throw new Error(`No port in [${text}]`);
    return { address: { family: 6, bytes: v6 }, port: parsePort(rest.slice(1)) };
  }
  const colons = text.split(':').length - 1;
  if (colons === 1) {
    const at = text.indexOf(':');
    const v4 = parseIPv4(text.slice(0, at));
    if (v4 === null) throw new Error(`Invalid address [${text}]`);
    return { address: { family: 4, bytes: v4 }, port: parsePort(text.slice(at + 1)) };
  }
  if (portRequired) {
    throw new Error(colons === 0 ? `No port in [${text}]` : `Invalid address [${text}]: write IPv6 as [addr]:port`);
  }
  return { address: parseAddress(text), port: null };
}

/** 'a.b.c.d/n' or 'v6/n'; a bare address is a host route (/32, /128). Host bits are cleared. */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const address = parseAddress(slash < 0 ? text : text.slice(0, slash));
  const maxLen = address.family === 4 ? 32 : 128;
  let prefixLen = maxLen;
  if (slash >= 0) {
    const lenText = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(lenText) || Number(lenText) > maxLen) throw new Error(`Invalid prefix length [${text}]`);
    prefixLen = Number(lenText);
  }
  const bytes = address.bytes;
  for (let bit = prefixLen; bit < maxLen; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family: address.family, bytes, prefixLen };
}

/** True if `len` (4 or 16) address bytes at buf[off] lie in the CIDR (families must match). */
export function cidrContains(cidr: Cidr, buf: Uint8Array, off: number, len: number): boolean {
  if ((len === 4 ? 4 : 6) !== cidr.family) return false;
  const full = cidr.prefixLen >> 3;
  for (let i = 0; i < full; i++) if (buf[off + i] !== cidr.bytes[i]) return false;
  const rest = cidr.prefixLen & 7;
  if (rest === 0) return true;
  const mask = (0xff00 >> rest) & 0xff;
  return ((buf[off + full]! ^ cidr.bytes[full]!) & mask) === 0;
}

/** The 16-byte form used in hash keys: IPv6 as is, IPv4 as ::ffff:a.b.c.d. */
export function toKeyAddress(address: IpAddress): Uint8Array {
  if (address.family === 6) return address.bytes;
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(address.bytes, 12);
  return out;
}

/** Text form of `len` (4 or 16) address bytes at buf[off]; IPv6 compressed per RFC 5952. */
export function formatAddress(buf: Uint8Array, off: number, len: number): string {
  if (len === 4) return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((buf[off + 2 * i]! << 8) | buf[off + 2 * i + 1]!);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${formatAddress(buf, off + 12, 4)}`;
  }
  // The longest run of two or more zero words becomes '::' (the first one on a tie).
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestAt < 0) return hex.join(':');
  return `${hex.slice(0, bestAt).join(':')}::${hex.slice(bestAt + bestLen).join(':')}`;
}
