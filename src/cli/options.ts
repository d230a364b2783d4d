// Command-line options the way the reference parses them (getopt_long_only): `--name=value`,
// `--name value`, a single dash, and any unique prefix of a long name. Errors are thrown as
// UsageError so the CLI prints exactly one line and exits non-zero.
import { isIPv4, isIPv6 } from 'node:net';
import type { MetricsAddress } from '../metrics.js';
import { UsageError } from '../usage-error.js';

export interface OptionSpec {
  /** Takes a value (`--shm=x`); otherwise a flag. */
  arg?: boolean;
  required?: boolean;
  /** Several occurrences collect into a list (xdplb `--vip`). */
  multiple?: boolean;
  help: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

export interface Parsed {
  opts: Map<string, string[]>;
  args: string[];
}

function resolve(specs: OptionSpecs, given: string): string {
  if (given in specs) return given;
  const candidates = Object.keys(specs).filter((n) => n.startsWith(given));
  if (candidates.length === 1) return candidates[0]!;
  if (candidates.length > 1) throw new UsageError(`option --${given} is ambiguous (${candidates.map((c) => `--${c}`).join(', ')})`);
  throw new UsageError(`unknown option --${given}`);
}

export function parseOptions(argv: readonly string[], specs: OptionSpecs): Parsed {
  const opts = new Map<string, string[]>();
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    // A lone '-' or a negative number is an argument, not an option.
    if (!word.startsWith('-') || word === '-' || /^-\d/.test(word)) {
      args.push(word);
      continue;
    }
    const body = word.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = resolve(specs, eq < 0 ? body : body.slice(0, eq));
    const spec = specs[name]!;
    let value: string;
    if (spec.arg) {
      if (eq >= 0) value = body.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i]!;
      else throw new UsageError(`option --${name} needs a value`);
    } else {
      if (eq >= 0) throw new UsageError(`option --${name} takes no value`);
      value = '';
    }
    const list = opts.get(name);
    if (list && spec.multiple) list.push(value);
    else opts.set(name, [value]);
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.required && !opts.has(name)) throw new UsageError(`missing option --${name}`);
  }
  return { opts, args };
}

/** Usage text: the command's synopsis, then one line per option. */
export function usage(synopsis: string, specs: OptionSpecs): string {
  const lines = [synopsis];
  for (const [name, spec] of Object.entries(specs)) {
    lines.push(`  --${name}${spec.arg ? '=' : ''}  ${spec.help}${spec.required ? ' (required)' : ''}`);
  }
  return lines.join('\n');
}

/** A whole decimal number within [min, max]; anything else is a UsageError naming the option. */
export function intOption(name: string, text: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(text.trim())) throw new UsageError(`--${name}: '${text}' is not a number`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`--${name}: ${n} is out of range ${min}..${max}`);
  return n;
}

/** `PORT` (loopback), `ADDR:PORT` or `[IPv6]:PORT`; ADDR is an IP address, not a name. */
export function parseMetricsAddress(text: string): MetricsAddress {
  const m = /^(?:(\[[^\]]*\]|[^:[\]]*):)?(\d{1,5})$/.exec(text);
  const bad = (why: string) => new UsageError(`--metrics: '${text}' ${why}`);
  if (!m) throw bad('is not [ADDR:]PORT (e.g. 9110, 0.0.0.0:9110, [::]:9110)');
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad('has a port out of range 1..65535');
  const addr = m[1];
  if (addr === undefined) return { host: '127.0.0.1', port };
  const host = addr.startsWith('[') ? addr.slice(1, -1) : addr;
  if (addr.startsWith('[') ? !isIPv6(host) : !isIPv4(host)) throw bad('has no valid IPv4 address or [IPv6] address');
  return { host, port };
}

/** `--metrics=[ADDR:]PORT` of the lb commands, or null when not given. */
export function metricsOption(p: Parsed): MetricsAddress | null {
  const text = p.opts.get('metrics')?.at(-1);
  return text === undefined ? null : parseMetricsAddress(text);
}
