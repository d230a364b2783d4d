// ctraffic-like client: nconn long-lived connections to the echo port (5003), each sending
// small messages at its share of the rate and counting the echoes. A connection that breaks
// (reset, closed, or unanswered for lostTimeoutMs) is recorded as lost and replaced by a new
// one from the same source address, so a load-balancer test sees which connections a change
// disturbed. The server's greeting line tells which server each connection reached.

import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { isMain, parseCidr, parseCount, parseDuration, parseHostPort, pickSources, runCli } from './common.js';
import { analyze, asStats, type ConnectionRecord, type CtrafficStats, formatAnalysis, type Sample } from './stats.js';

export { type Analysis, analyze, type CtrafficStats, formatAnalysis } from './stats.js';

export interface CtrafficOptions {
  /** `10.0.0.0:5003` or `[1000::]:5003`. */
  address: string;
  nconn: number;
  /** Messages per second over all connections. */
  rate: number;
  /** Length of the run. */
  timeoutMs: number;
  /** Source range; connection slot i always binds the same address from it. */
  srccidr?: string;
  /** Message size in bytes (default 64). */
  size?: number;
  /** Called with a status line every monitorIntervalMs (the CLI's --monitor prints it to stderr). */
  monitor?: (line: string) => void;
  monitorIntervalMs?: number;
  /** Period of the samples in the stats (default 250 ms). */
  sampleIntervalMs?: number;
  /** Where to write the stats as JSON (also returned). */
  statsFile?: string;
  /** A connect not greeted within this is a failed connect (default 2000 ms). */
  connectTimeoutMs?: number;
  /** A connection with messages unanswered for this long is lost (default 2000 ms). */
  lostTimeoutMs?: number;
  /** Pause before reconnecting (default 100 ms). */
  reconnectDelayMs?: number;
  /** Ends the run early (stats are still produced). */
  signal?: AbortSignal;
}

// Unanswered messages allowed on a connection before sends are dropped: keeps a stalled
// connection from queueing an unbounded backlog that would later arrive as a burst.
const MAX_OUTSTANDING = 16;
const MAX_GREETING = 256;

interface Slot {
  record: ConnectionRecord;
  socket: Socket | null;
  state: 'idle' | 'connecting' | 'active';
  host: string;
  greeting: string;
  /** Echoed bytes and sent messages on the current connection. */
  echoBytes: number;
  sentOnConn: number;
  /** Last time the echo made progress, or the first unanswered send. */
  progressAt: number;
  /** Why the current connection is being closed by us (timeouts). */
  reason: string;
  connected: boolean;
  timer: NodeJS.Timeout | undefined;
}

export async function ctraffic(o: CtrafficOptions): Promise<CtrafficStats> {
  const { host, port, family } = parseHostPort(o.address);
  const cidr = o.srccidr === undefined ? undefined : parseCidr(o.srccidr);
  if (cidr && cidr.family !== family) throw new RangeError(`srccidr '${o.srccidr}' is not of the address's family`);
  if (!(o.rate > 0)) throw new RangeError(`rate ${o.rate}: must be > 0`);
  const size = o.size ?? 64;
  const sources = cidr ? pickSources(cidr, o.nconn) : [];
  const interval = (o.nconn * 1000) / o.rate;
  const connectTimeout = o.connectTimeoutMs ?? 2000;
  const lostTimeout = o.lostTimeoutMs ?? 2000;
  const reconnectDelay = o.reconnectDelayMs ?? 100;
  const message = Buffer.alloc(size, 'x');

  const started = new Date();
  const t0 = performance.now();
  const now = (): number => Math.round(performance.now() - t0);
  // maxDelay: the longest a connection waited for an echo it then got (the outage a client saw).
  const totals = { sent: 0, received: 0, dropped: 0, failedConnects: 0, lostEvents: 0, maxDelay: 0 };
  const samples: Sample[] = [];
  let stopping = false;

  const slots: Slot[] = Array.from({ length: o.nconn }, (_, id) => ({
    record: { id, src: sources[id] ?? null, sent: 0, received: 0, events: [] },
    socket: null,
    state: 'idle',
    host: '',
    greeting: '',
    echoBytes: 0,
    sentOnConn: 0,
    progressAt: 0,
    reason: '',
    connected: false,
    timer: undefined,
  }));

  const outstanding = (s: Slot): number => s.sentOnConn - Math.floor(s.echoBytes / size);

  const send = (s: Slot): void => {
    const out = outstanding(s);
    if (out >= MAX_OUTSTANDING || !s.socket || s.socket.writableNeedDrain) {
      totals.dropped++;
      return;
    }
    if (out === 0) s.progressAt = now();
    s.socket.write(message);
    s.sentOnConn++;
    s.record.sent++;
    totals.sent++;
  };

  const onGreeted = (s: Slot): void => {
    clearTimeout(s.timer);
    s.state = 'active';
    s.host = s.greeting;
    s.progressAt = now();
    s.record.events.push({ t: now(), type: s.connected ? 'reconnect' : 'connect', host: s.host });
    s.connected = true;
    s.timer = setInterval(() => send(s), interval);
  };

  const onData = (s: Slot, d: Buffer): void => {
    if (s.state === 'connecting') {
      const nl = d.indexOf(10);
      s.greeting += d.subarray(0, nl < 0 ? d.length : nl).toString();
      if (nl < 0) {
        if (s.greeting.length > MAX_GREETING) drop(s, 'no greeting');
        return;
      }
      onGreeted(s);
      d = d.subarray(nl + 1);
    }
    const before = Math.floor(s.echoBytes / size);
    s.echoBytes += d.length;
    const echoed = Math.floor(s.echoBytes / size) - before;
    if (echoed > 0) {
      s.record.received += echoed;
      totals.received += echoed;
      totals.maxDelay = Math.max(totals.maxDelay, now() - s.progressAt);
      s.progressAt = now();
    }
  };

  /** Closes the slot's connection for a reason of ours; 'close' does the bookkeeping. */
  const drop = (s: Slot, reason: string): void => {
    s.reason = reason;
    s.socket?.destroy();
  };

  const onClose = (s: Slot, sock: Socket, error: string): void => {
    if (s.socket !== sock) return;
    clearTimeout(s.timer);
    clearInterval(s.timer);
    s.socket = null;
    if (stopping) return;
    const reason = s.reason || error || 'closed';
    if (s.state === 'active') {
      s.record.events.push({ t: now(), type: 'lost', host: s.host, reason });
      totals.lostEvents++;
    } else {
      s.record.events.push({ t: now(), type: 'connect-failed', reason });
      totals.failedConnects++;
    }
    s.state = 'idle';
    s.timer = setTimeout(() => open(s), reconnectDelay);
  };

  const open = (s: Slot): void => {
    if (stopping) return;
    const sock = connect({ host, port, localAddress: s.record.src ?? undefined });
    s.socket = sock;
    s.state = 'connecting';
    s.greeting = '';
    s.echoBytes = 0;
    s.sentOnConn = 0;
    s.reason = '';
    sock.setNoDelay(true);
    let error = '';
    sock.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    sock.on('data', (d: Buffer) => onData(s, d));
    sock.on('close', () => onClose(s, sock, error));
    s.timer = setTimeout(() => drop(s, 'connect timeout'), connectTimeout);
  };

  const sample = (): void => {
    const t = now();
    let active = 0;
    let connecting = 0;
    for (const s of slots) {
      if (s.state === 'active') {
        active++;
        if (outstanding(s) > 0 && t - s.progressAt > lostTimeout) drop(s, 'timeout');
      } else {
        connecting++;
      }
    }
    samples.push({
      t,
      active,
      connecting,
      lost: totals.lostEvents,
      failedConnects: totals.failedConnects,
      sent: totals.sent,
      received: totals.received,
    });
  };

  const monitorLine = (): string => {
    const last = samples[samples.length - 1];
    return (
      `t=${(now() / 1000).toFixed(1)}s conn act/connecting ${last?.active ?? 0}/${last?.connecting ?? 0}` +
      ` lost ${totals.lostEvents} failed-connects ${totals.failedConnects}` +
      ` msg sent/rec/dropped ${totals.sent}/${totals.received}/${totals.dropped}`
    );
  };

  for (const s of slots) open(s);
  const sampler = setInterval(sample, o.sampleIntervalMs ?? 250);
  const monitor = o.monitor;
  const monitorTimer = monitor ? setInterval(() => monitor(monitorLine()), o.monitorIntervalMs ?? 1000) : undefined;

  await new Promise<void>((resolve) => {
    const end = setTimeout(resolve, o.timeoutMs);
    o.signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(end);
        resolve();
      },
      { once: true },
    );
  });

  sample();
  stopping = true;
  clearInterval(sampler);
  clearInterval(monitorTimer);
  for (const s of slots) {
    clearTimeout(s.timer);
    clearInterval(s.timer);
    s.socket?.destroy();
  }
  const stats: CtrafficStats = {
    tool: 'ctraffic',
    started: started.toISOString(),
    duration: now(),
    address: o.address,
    nconn: o.nconn,
    rate: o.rate,
    size,
    ...totals,
    connections: slots.map((s) => s.record),
    samples,
  };
  if (o.statsFile !== undefined) writeFileSync(o.statsFile, JSON.stringify(stats));
  return stats;
}

/** The stats without the per-connection records and samples: the end-of-run summary. */
export function summary(s: CtrafficStats): Omit<CtrafficStats, 'connections' | 'samples'> {
  const { connections: _c, samples: _s, ...rest } = s;
  return rest;
}

const USAGE = [
  'usage: ctraffic --address=HOST:PORT [--nconn=1] [--rate=10] [--timeout=10s] [--srccidr=CIDR]',
  '                [--size=64] [--lost-timeout=2s] [--monitor] [--stats-file=FILE]',
  '       ctraffic analyze --stats-file=FILE [--output=text|json]',
].join('\n');

async function analyzeMain(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { 'stats-file': { type: 'string' }, output: { type: 'string', default: 'text' } },
  });
  const file = values['stats-file'];
  if (file === undefined) throw new RangeError('analyze: --stats-file is required');
  if (values.output !== 'json' && values.output !== 'text') throw new RangeError(`--output '${values.output}': json or text`);
  const a = analyze(asStats(JSON.parse(readFileSync(file, 'utf8'))));
  process.stdout.write(`${values.output === 'json' ? JSON.stringify(a) : formatAnalysis(a)}\n`);
  return 0;
}

/** CLI: runs the client and prints the summary as JSON, or `analyze` a stats file. */
export async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'analyze') return analyzeMain(argv.slice(1));
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string' },
      nconn: { type: 'string' },
      rate: { type: 'string' },
      timeout: { type: 'string' },
      srccidr: { type: 'string' },
      size: { type: 'string' },
      'lost-timeout': { type: 'string' },
      monitor: { type: 'boolean' },
      'stats-file': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.address === undefined) throw new RangeError('--address is required (see --help)');
  const rate = Number(values.rate ?? 10);
  if (!(rate > 0)) throw new RangeError(`--rate '${values.rate}': expected messages/s > 0`);
  const ac = new AbortController();
  const stop = (): void => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const stats = await ctraffic({
    address: values.address,
    nconn: parseCount(values.nconn, '--nconn', 1),
    rate,
    timeoutMs: parseDuration(values.timeout ?? '10s'),
    srccidr: values.srccidr,
    size: parseCount(values.size, '--size', 64),
    lostTimeoutMs: parseDuration(values['lost-timeout'] ?? '2s'),
    monitor: values.monitor ? (line) => process.stderr.write(`${line}\n`) : undefined,
    statsFile: values['stats-file'],
    signal: ac.signal,
  });
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
  process.stdout.write(`${JSON.stringify(summary(stats))}\n`);
  return 0;
}

if (isMain(import.meta.url)) runCli(main);
