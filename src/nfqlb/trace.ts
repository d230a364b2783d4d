// Run-time trace and log level of a running nfqlb, as the reference controls them: a small
// shared memory `nfqlb-trace` holds { int32 level; uint32 traceMask } (the reference's
// LogConfig layout), `nfqlb loglevel` and `nfqlb trace` write it, and the lb reads it.
// `nfqlb trace` also connects to the lb's trace server, which streams trace events (JSON
// lines) to it; when it disconnects the mask is cleared. With the mask 0 the data path pays
// one typed-array read per packet and nothing else.
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { createShm, openShm, shmPath } from '../shm.js';
import { log } from '../log.js';
import { UsageError } from '../cli/options.js';
import { socketOptions, type ControlAddress } from './control-address.js';

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

/** The reference's levels (4 warning, 5 notice, 6 info, 7 debug) as pino levels. */
export function pinoLevel(level: number): string {
  if (level >= 7) return 'debug';
  if (level >= 5) return 'info';
  if (level >= 4) return 'warn';
  return 'error';
}

/** Follows `nfqlb loglevel` changes; returns a stop function. */
export function followLogLevel(config: Int32Array): () => void {
  const apply = () => {
    const level = pinoLevel(config[LEVEL_WORD]!);
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
  ) {}

  static start(address: ControlAddress, config: Int32Array): Promise<TraceServer> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      const ts = new TraceServer(server, config);
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
    if (this.client !== null) {
      c.end(JSON.stringify({ error: 'another trace client is connected' }) + '\n');
      return;
    }
    this.client = c;
    const mask = this.config[MASK_WORD]! >>> 0;
    log.warn({ mask: `0x${mask.toString(16).padStart(8, '0')}` }, 'trace active');
    c.write(`Trace active, mask=0x${mask.toString(16).padStart(8, '0')}\n`);
    // Any input, or the end, stops the trace.
    const stop = () => {
      if (this.client !== c) return;
      this.client = null;
      this.config[MASK_WORD] = 0;
      c.destroy();
      log.warn('trace closed');
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
