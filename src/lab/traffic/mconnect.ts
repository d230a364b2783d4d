// mconnect-like client: many short connections to a VIP, each from its own source address,
// counting which server answered (the server writes its name on port 5001). A load-balancer
// test reads the per-server counts and the failures.
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { isMain, parseCidr, parseCount, parseDuration, parseHostPort, pickSources, runCli } from './common.js';

export interface MconnectOptions {
  /** `10.0.0.0:5001` or `[1000::]:5001`. */
  address: string;
  nconn: number;
  /** Source range; each connection binds a different address from it (default: kernel's choice). */
  srccidr?: string;
  /** Deadline for the whole run (default, as mconnect: 1 ms per connection + 2 s). */
  timeoutMs?: number;
  /** Connections in progress at once (default 64, below a server's listen backlog). */
  maxConcurrent?: number;
  /** New connections per second, started at a steady pace (default: as fast as maxConcurrent allows). */
  rate?: number;
}

/** Field names follow mconnect's JSON output. */
export interface MconnectResult {
  connections: number;
  failed_connects: number;
  failed_reads: number;
  hosts: Record<string, number>;
  /** With a rate: when the run started (ms since the epoch), and when each failed connection was started (ms into the run). */
  started?: number;
  failed_at?: number[];
}

type Outcome = { host: string } | 'failed_connect' | 'failed_read';

function once(host: string, port: number, localAddress: string | undefined, deadline: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = connect({ host, port, localAddress });
    let connected = false;
    let data = '';
    const finish = (o: Outcome): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish(connected ? 'failed_read' : 'failed_connect'), Math.max(0, deadline - Date.now()));
    s.setEncoding('utf8');
    s.on('connect', () => {
      connected = true;
    });
    s.on('data', (d: string) => {
      data += d;
    });
    s.on('end', () => finish(data === '' ? 'failed_read' : { host: data.trim() }));
    s.on('error', () => finish(connected ? 'failed_read' : 'failed_connect'));
  });
}

export async function mconnect(o: MconnectOptions): Promise<MconnectResult> {
  const { host, port, family } = parseHostPort(o.address);
  const cidr = o.srccidr === undefined ? undefined : parseCidr(o.srccidr);
  if (cidr && cidr.family !== family) throw new RangeError(`srccidr '${o.srccidr}' is not of the address's family`);
  const sources = cidr ? pickSources(cidr, o.nconn) : [];
  const started = Date.now();
  const paced = o.rate === undefined ? 0 : (1000 * o.nconn) / o.rate;
  const deadline = started + (o.timeoutMs ?? paced + o.nconn + 2000);
  const result: MconnectResult = { connections: o.nconn, failed_connects: 0, failed_reads: 0, hosts: {} };
  const failedAt: number[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < o.nconn; i = next++) {
      if (o.rate !== undefined) await sleep(Math.max(0, started + (1000 * i) / o.rate - Date.now()));
      const at = Date.now() - started;
      const r = await once(host, port, sources[i], deadline);
      if (r === 'failed_connect') result.failed_connects++;
      else if (r === 'failed_read') result.failed_reads++;
      else result.hosts[r.host] = (result.hosts[r.host] ?? 0) + 1;
      if (typeof r === 'string') failedAt.push(at);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.maxConcurrent ?? 64, o.nconn) }, worker));
  return o.rate === undefined ? result : { ...result, started, failed_at: failedAt.sort((a, b) => a - b) };
}

/** mconnect's text form: failures first, then "<host> <count>" lines. */
export function formatResult(r: MconnectResult): string {
  const lines = [`Failed connects; ${r.failed_connects}`, `Failed reads; ${r.failed_reads}`];
  for (const [h, n] of Object.entries(r.hosts).sort()) lines.push(`${h} ${n}`);
  return lines.join('\n');
}

const USAGE =
  'usage: mconnect --address=HOST:PORT [--nconn=1] [--srccidr=CIDR] [--timeout=DURATION] [--maxconcurrent=64] [--rate=PER_S]\n' +
  '       [--output=json|text]';

/** CLI: exit code 1 when any connect or read failed (as mconnect). */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string' },
      nconn: { type: 'string' },
      srccidr: { type: 'string' },
      timeout: { type: 'string' },
      maxconcurrent: { type: 'string' },
      rate: { type: 'string' },
      output: { type: 'string', default: 'text' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.address === undefined) throw new RangeError('--address is required (see --help)');
  if (values.output !== 'json' && values.output !== 'text') throw new RangeError(`--output '${values.output}': json or text`);
  const r = await mconnect({
    address: values.address,
    nconn: parseCount(values.nconn, '--nconn', 1),
    srccidr: values.srccidr,
    timeoutMs: values.timeout === undefined ? undefined : parseDuration(values.timeout),
    maxConcurrent: parseCount(values.maxconcurrent, '--maxconcurrent', 64),
    rate: values.rate === undefined ? undefined : parseCount(values.rate, '--rate', 1),
  });
  process.stdout.write(`${values.output === 'json' ? JSON.stringify(r) : formatResult(r)}\n`);
  return r.failed_connects + r.failed_reads > 0 ? 1 : 0;
}

if (isMain(import.meta.url)) runCli(main);
