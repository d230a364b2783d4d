// Shared bits of the traffic tools: address and CIDR parsing, durations, CLI plumbing.
// The tools import only node: modules and each other, so they run standalone (and are
// cheap to transpile for a test run from source, see tools.ts).

import { realpathSync } from 'node:fs';
import { isIP } from 'node:net';
import { fileURLToPath } from 'node:url';

export interface HostPort {
  host: string;
  port: number;
  family: 4 | 6;
}

/** Parses `10.0.0.0:5001` or `[1000::]:5001`. */
export function parseHostPort(s: string): HostPort {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:[\]]+):(\d+)$/.exec(s);
  const host = m?.[1] ?? '';
  const port = Number(m?.[2]);
  const family = isIP(host);
  if (!m || family === 0 || !(port > 0 && port < 65536)) {
    throw new RangeError(`address '${s}': expected a.b.c.d:port or [ipv6]:port`);
  }
  return { host, port, family: family as 4 | 6 };
}

export interface Cidr {
  family: 4 | 6;
  base: bigint;
  /** Number of addresses in the range. */
  size: bigint;
}

export function parseCidr(s: string): Cidr {
  const [addr = '', len = ''] = s.split('/');
  const family = isIP(addr);
  const bits = family === 4 ? 32 : 128;
  const plen = Number(len);
  if (family === 0 || !/^\d+$/.test(len) || plen > bits) {
    throw new RangeError(`cidr '${s}': expected address/prefix-length`);
  }
  const host = BigInt(bits - plen);
  const base = (ipToBigInt(addr, family as 4 | 6) >> host) << host;
  return { family: family as 4 | 6, base, size: 1n << host };
}

function ipToBigInt(addr: string, family: 4 | 6): bigint {
  if (family === 4) return addr.split('.').reduce((v, b) => (v << 8n) | BigInt(Number(b)), 0n);
  // Expand "::" and an embedded dotted quad (1000::1:192.168.1.1) into 8 groups.
  let s = addr;
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (quad?.[1]) {
    const v = ipToBigInt(quad[1], 4);
    s = `${s.slice(0, -quad[1].length)}${(v >> 16n).toString(16)}:${(v & 0xffffn).toString(16)}`;
  }
  const [head = '', tail] = s.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((v, g) => (v << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function formatIp(v: bigint, family: 4 | 6): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((sh) => String((v >> sh) & 0xffn)).join('.');
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((sh) => Number((v >> sh) & 0xffffn));
  // RFC 5952: compress the longest run (of two or more) of zero groups.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/**
 * `n` distinct addresses from the range, randomly chosen (as mconnect does, so repeated runs
 * hash differently), never the range's first address (50.0.0.0 would look like a network).
 */
export function pickSources(cidr: Cidr, n: number, random: () => number = Math.random): string[] {
  const usable = cidr.size - 1n;
  if (BigInt(n) > usable) throw new RangeError(`cannot pick ${n} distinct sources from a range of ${cidr.size}`);
  const offsets = new Set<bigint>();
  if (BigInt(n) * 2n <= usable) {
    while (offsets.size < n) offsets.add(1n + (BigInt(Math.floor(random() * 2 ** 32)) % usable));
  } else {
    // Dense request: consecutive offsets from a random start, wrapping past the first address.
    const start = BigInt(Math.floor(random() * Number(usable)));
    for (let k = 0n; offsets.size < n; k++) offsets.add(1n + ((start + k) % usable));
  }
  return [...offsets].map((o) => formatIp(cidr.base + o, cidr.family));
}

/** `5s`, `500ms`, `1m`, or a plain number of seconds, in milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s);
  if (!m) throw new RangeError(`duration '${s}': expected e.g. 10s, 500ms, 1m`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] ?? 1000;
  return Number(m[1]) * unit;
}

/** Parses a positive integer option; `what` names it in the error. */
export function parseCount(s: string | undefined, what: string, dflt: number): number {
  if (s === undefined) return dflt;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${what} '${s}': expected a positive integer`);
  return n;
}

/** True when the module with this import.meta.url is the script node was started with. */
export function isMain(metaUrl: string): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(metaUrl));
  } catch {
    return false;
  }
}

/** Runs a CLI main; bad input or a failure is one line on stderr and exit code 2. */
export function runCli(main: (argv: string[]) => Promise<number>): void {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 2;
    },
  );
}
