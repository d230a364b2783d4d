// Run-time trace and log level of a running nfqlb, as the reference controls them: a small
// shared memory `nfqlb-trace` holds { int32 level; uint32 traceMask } (the reference's
// LogConfig layout), `nfqlb loglevel` and `nfqlb trace` write it, and the lb reads it.
// `nfqlb trace` also connects to the lb's trace server, which streams trace events (JSON
// lines) to it; when it disconnects the mask is cleared. With the mask 0 the data path pays
// one typed-array read per packet and nothing else.
// The trace server admits whom the flow server admits (control-auth.ts): root on its unix
// socket; on tcp, a client whose first line is `auth:<control key>`.
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, statSync } from 'node:fs';
import { createShm, deleteShm, openShm, shmPath } from '../shm.js';
import { log } from '../log.js';
import { UsageError } from '../cli/options.js';
import { DEFAULT_TRACE_ADDRESS, formatControlAddress, parseControlAddress, socketOptions, type ControlAddress } from './control-address.js';
import { checkListenAddress, keyMatches, peerOf, serverKey, unixRefusal, type Peer } from './control-auth.js';
import { auditChange, auditRefusal } from './audit.js';

export const TRACE = { LOG: 1, PACKET: 2, FRAG: 4, FLOW_CONF: 8, SCTP: 16, TARGET: 32, FLOWS: 64 } as const;
const SELECTION: Record<string, number> = {
  log: TRACE.LOG,
  packet: TRACE.PACKET,
  frag: TRACE.FRAG,
  'flow-conf': TRACE.FLOW_CONF,
  sctp: TRACE.SCTP,
  target: TRACE.TARGET,
  flows: TRACE.FLOWS,
};

export const TRACE_SHM = 'nfqlb-trace';
export const LEVEL_WORD = 0;
export const MASK_WORD = 1;
const DEFAULT_LEVEL = 5;

/** `--selection=packet,frag,...` as a mask; an unknown name is an error (the reference ignored it). */
export function parseTraceSelection(text: string): number {
  let mask = 0;
  for (const name of text.split(',')) {
    const bit = SELECTION[name];
    if (bit === undefined) throw new UsageError(`--selection: unknown trace '${name}' (${Object.keys(SELECTION).join(',')})`);
    mask |= bit;
  }
  return mask;
}

/** The shared { level, mask } words, created (level 5, mask 0) when missing. */
export function openLogConfig(name = TRACE_SHM): Int32Array {
  if (!existsSync(shmPath(name))) {
    const created = new Int32Array(createShm(name, 8));
    created[LEVEL_WORD] = DEFAULT_LEVEL;
    created[MASK_WORD] = 0;
    return created;
  }
  return new Int32Array(openShm(name, true), 0, 2);
}

/**
 * The lb's { level, mask } words. A file someone else owns (or may write) would let them
 * set our level and trace mask, so it is replaced by one of our own (mode 0600).
 */
export function claimLogConfig(name = TRACE_SHM): Int32Array {
  try {
    const st = statSync(shmPath(name));
    if (st.uid !== (process.geteuid?.() ?? 0) || (st.mode & 0o022) !== 0) {
      log.warn({ shm: name, uid: st.uid, mode: (st.mode & 0o777).toString(8) }, 'log config not ours: replaced');
      deleteShm(name);
    }
  } catch {
    // Missing: openLogConfig creates it.
  }
  return openLogConfig(name);
}

/** The reference's levels (4 warning, 5 notice, 6 info, 7 debug) as pino levels. */
export function pinoLevel(level: number): string {
  if (level >= 7) return 'debug';
  if (level >= 5) return 'info';
  if (level >= 4) return 'warn';
  return 'error';
}

/** Follows `nfqlb loglevel` changes; returns a stop function. */
export function followLogLevel(config: Int32Array): () => void {
  let seen = config[LEVEL_WORD]!;
  const apply = () => {
    const now = config[LEVEL_WORD]!;
    // Only root can write the (0600) file, so the shm is the origin we can name.
    if (now !== seen) auditChange({}, { via: `shm ${TRACE_SHM}`, loglevel: { from: seen, to: now } }, 'log level changed');
    seen = now;
    const level = pinoLevel(now);
    if (log.level !== level) log.level = level;
  };
  apply();
  const timer = setInterval(apply, 500);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Emits trace events of the kinds selected in the shared mask to a sink (the trace server,
 * or a worker's message port). Callers test `on(kind)` first, so nothing is formatted when
 * tracing is off.
 */
export class Tracer {
  constructor(
    readonly config: Int32Array,
    private readonly sink: (line: string) => void,
  ) {}

  /** The current mask (0: tracing off). */
  get mask(): number {
    return this.config[MASK_WORD]!;
  }

  on(kind: number): boolean {
    return (this.config[MASK_WORD]! & kind) !== 0;
  }

  emit(kind: keyof typeof TRACE, fields: Record<string, unknown>): void {
    this.sink(JSON.stringify({ time: Date.now(), trace: kind.toLowerCase().replace('_', '-'), ...fields }));
  }

  /** Logs with pino and, with the `log` trace selected, also to the trace stream. */
  log(level: 'warn' | 'info' | 'debug' | 'error', fields: Record<string, unknown>, msg: string): void {
    log[level](fields, msg);
    if (this.on(TRACE.LOG)) this.emit('LOG', { level, msg, ...fields });
  }
}

/**
 * The lb's trace server: one client at a time (`nfqlb trace`); lines go to it while it is
 * connected, and its leaving clears the mask (as the reference does).
 */
export class TraceServer {
  private client: Socket | null = null;

  private constructor(
    private readonly server: Server,
    private readonly config: Int32Array,
    readonly address: ControlAddress,
    /** The control key a tcp client must send first (null on a unix socket). */
    private readonly key: Buffer | null,
  ) {}

  static start(address: ControlAddress, config: Int32Array, allowRemote = false): Promise<TraceServer> {
    checkListenAddress(address, allowRemote, '--trace_address');
    const key = address.kind === 'tcp' ? serverKey() : null;
    return new Promise((resolve, reject) => {
      const server = createServer();
      const ts = new TraceServer(server, config, address, key);
      server.on('connection', (c) => ts.accept(c));
      server.once('error', reject);
      server.listen(socketOptions(address), () => {
        server.off('error', reject);
        server.on('error', (e) => log.warn({ err: e.message }, 'trace server'));
        resolve(ts);
      });
    });
  }

  private accept(c: Socket): void {
    c.on('error', () => c.destroy());
    const peer = peerOf(c, this.address);
    const refuse = (reason: string) => {
      auditRefusal(peer, { channel: 'trace' }, `trace channel: refused: ${reason}`);
      c.end(JSON.stringify({ error: `refused: ${reason}` }) + '\n');
    };
    const refusal = unixRefusal(peer, this.address);
    if (refusal !== null) return refuse(refusal);
    if (this.key === null) return this.admit(c, peer);
    // tcp: the first line must be the key.
    let first = '';
    c.setTimeout(5000, () => {
      c.off('data', onData);
      refuse('no control key within 5 s');
    });
    const onData = (d: Buffer) => {
      first += d.toString('latin1');
      const nl = first.indexOf('\n');
      if (nl < 0 && first.length < 1024) return;
      c.off('data', onData);
      c.setTimeout(0);
      const line = nl < 0 ? first : first.slice(0, nl);
      if (!line.startsWith('auth:') || !keyMatches(this.key!, line.slice(5))) {
        return refuse(line.startsWith('auth:') ? 'wrong control key' : 'no control key (send auth:<key>; see NFQLB_CONTROL_KEY)');
      }
      this.admit(c, peer);
    };
    c.on('data', onData);
  }

  private admit(c: Socket, peer: Peer): void {
    if (this.client !== null) {
      c.end(JSON.stringify({ error: 'another trace client is connected' }) + '\n');
      return;
    }
    this.client = c;
    const mask = `0x${(this.config[MASK_WORD]! >>> 0).toString(16).padStart(8, '0')}`;
    auditChange(peer, { channel: 'trace', mask }, 'trace active');
    c.write(`Trace active, mask=${mask}\n`);
    // Any input, or the end, stops the trace.
    const stop = () => {
      if (this.client !== c) return;
      this.client = null;
      this.config[MASK_WORD] = 0;
      c.destroy();
      auditChange(peer, { channel: 'trace' }, 'trace closed');
    };
    c.on('data', stop);
    c.on('end', stop);
    c.on('close', stop);
  }

  write(line: string): void {
    // A slow reader loses lines rather than growing our memory without bound.
    if (this.client !== null && this.client.writableLength < 1 << 20) this.client.write(line + '\n');
  }

  close(): Promise<void> {
    this.client?.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * The trace server of an lb serving `queues`. Several lbs may share a network namespace:
 * when the default address is taken, this one listens on unix:nfqlb-trace-<first queue>,
 * and when that is taken too it runs without a trace server; each says so once. An address
 * the operator chose must be free.
 */
export async function startTraceServer(addressText: string, queues: readonly number[], config: Int32Array, allowRemote = false): Promise<TraceServer | null> {
  const address = parseControlAddress(addressText);
  try {
    return await TraceServer.start(address, config, allowRemote);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
    if (addressText !== DEFAULT_TRACE_ADDRESS) {
      throw Object.assign(new Error(`--trace_address=${addressText} is taken (another lb in this network namespace?)`), { code: 'EADDRINUSE' });
    }
  }
  const own = parseControlAddress(`${DEFAULT_TRACE_ADDRESS}-${queues[0]}`);
  try {
    const ts = await TraceServer.start(own, config);
    log.warn({ traceAddress: formatControlAddress(own) }, `${DEFAULT_TRACE_ADDRESS} is taken by another lb in this network namespace: trace this one with --trace_address=${formatControlAddress(own)}`);
    return ts;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
    log.warn(`${DEFAULT_TRACE_ADDRESS} and ${formatControlAddress(own)} are taken: this lb runs without a trace server (give it --trace_address)`);
    return null;
  }
}
