// Run-time tracing of a running nfqlb, as the reference controls it: a small shared memory
// `nfqlb-trace` holds { int32 level; uint32 traceMask } (the reference's LogConfig layout).
// `nfqlb loglevel` and `nfqlb trace` write it (log-level.ts); the data path reads the mask
// here. With the mask 0 the data path pays one typed-array read per packet and nothing else.
import { log } from '../log.js';
import { UsageError } from '../usage-error.js';

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
