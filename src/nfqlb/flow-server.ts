// The flow channel of `nfqlb flowlb`, in the reference's one-shot text protocol so that its
// client and ours are interchangeable:
//   request:  action:<set|delete|list|list-names|trace-set|...>\n  <param>:<value>\n ...  eoc:\n
//   response: text (set/delete: "OK" or "FAIL: <reason>", NUL-terminated), then close.
// Who may talk to us is control-auth.ts's business (root on the unix socket, the control key
// on tcp); every change and every refusal goes to the audit log.
import { createServer, type Server, type Socket } from 'node:net';
import { NFQLB_TABLE, TargetStore } from '../target-store.js';
import { auditChange, auditRefusal } from './audit.js';
import { type ControlAddress, flowAddress, formatControlAddress, socketOptions } from './control-address.js';
import { checkListenAddress, keyMatches, type Peer, peerOf, REFUSED, serverKey, unixRefusal } from './control-auth.js';
import { FlowError, FlowSet, type FlowSpec, MAX_FLOW_SLOTS } from './flow-table.js';
import { TRACE, type Tracer } from './tracer.js';

/** Longest request we read (the reference's lines are at most 1024 bytes). */
const MAX_REQUEST = 64 * 1024;

export type ApplyFlows = (flows: FlowSpec[], traceFlows: FlowSpec[]) => void;

/** A request's parameters, first occurrence of each winning (as the reference reads them). */
export type FlowRequest = Map<string, string>;

export function parseRequest(text: string): FlowRequest | null {
  const req: FlowRequest = new Map();
  for (const line of text.split('\n')) {
    if (line.startsWith('eoc:')) return req;
    const colon = line.indexOf(':');
    if (colon < 0) return null;
    const key = line.slice(0, colon);
    if (!req.has(key)) req.set(key, line.slice(colon + 1));
  }
  return null;
}

/** The flow a set request describes (lists split on commas, and spaces as the reference does). */
export function specOfRequest(req: FlowRequest, withTarget: boolean): FlowSpec {
  const list = (k: string, sep: RegExp) => {
    const v = req.get(k);
    return v === undefined ? undefined : v.split(sep).filter((s) => s !== '');
  };
  const num = (k: string) => {
    const v = req.get(k);
    if (v === undefined) return undefined;
    if (!/^ *-?[0-9]+ *$/.test(v)) throw new FlowError(`invalid ${k} [${v}]`);
    return Number(v);
  };
  const spec: FlowSpec = {
    name: req.get('name') ?? '',
    target: withTarget ? (req.get('target') ?? null) : null,
    priority: num('priority') ?? 0,
  };
  const protocols = list('protocols', /[, ]/);
  const dsts = list('dsts', /[, ]/);
  const srcs = list('srcs', /[, ]/);
  const match = list('match', /,/);
  const udpencap = num('udpencap');
  if (protocols) spec.protocols = protocols;
  if (dsts) spec.dsts = dsts;
  if (srcs) spec.srcs = srcs;
  if (req.has('dports')) spec.dports = req.get('dports')!;
  if (req.has('sports')) spec.sports = req.get('sports')!;
  if (match) spec.match = match;
  if (udpencap !== undefined && udpencap !== 0) spec.udpencap = udpencap;
  return spec;
}

export class FlowServer {
  readonly flows = new FlowSet();
  readonly traceFlows = new FlowSet();
  private readonly open = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    private readonly address: ControlAddress,
    private readonly apply: ApplyFlows,
    private readonly tracer: Tracer | null,
    /** Per-queue match counters, MAX_FLOW_SLOTS per queue. */
    private readonly counters: Float64Array,
    /** The control key a tcp client must present (null on a unix socket). */
    private readonly key: Buffer | null,
  ) {}

  /** Listens on `address` (default $NFQLB_FLOW_ADDRESS); a tcp one must be loopback unless `allowRemote`. */
  static start(
    apply: ApplyFlows,
    tracer: Tracer | null,
    counters: Float64Array,
    o: { address?: ControlAddress; allowRemote?: boolean } = {},
  ): Promise<FlowServer> {
    const address = o.address ?? flowAddress();
    checkListenAddress(address, o.allowRemote ?? false, 'flow address');
    const key = address.kind === 'tcp' ? serverKey() : null;
    return new Promise((resolve, reject) => {
      const server = createServer({ allowHalfOpen: true });
      const fs = new FlowServer(server, address, apply, tracer, counters, key);
      server.on('connection', (c) => fs.accept(c));
      const failed = (e: NodeJS.ErrnoException) => {
        const taken =
          `flow address ${formatControlAddress(address)} is taken (another flowlb in this network namespace?): ` +
          'give each flowlb its own NFQLB_FLOW_ADDRESS, e.g. unix:nfqlb-2';
        reject(e.code === 'EADDRINUSE' ? Object.assign(new Error(taken), { code: e.code }) : e);
      };
      server.once('error', failed);
      server.listen(socketOptions(address), () => {
        server.off('error', failed);
        resolve(fs);
      });
    });
  }

  /** Stops listening and drops connections still open (a client must not keep us alive). */
  close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.open) c.destroy();
    return closed;
  }

  /** matches_count of a flow: the sum over the queues. */
  count(slot: number): number {
    let n = 0;
    for (let q = slot; q < this.counters.length; q += MAX_FLOW_SLOTS) n += this.counters[q]!;
    return n;
  }

  private accept(c: Socket): void {
    this.open.add(c);
    c.on('close', () => this.open.delete(c));
    c.on('error', () => c.destroy());
    const peer = peerOf(c, this.address);
    const refuse = (reason: string, fields: Record<string, unknown> = {}) => {
      auditRefusal(peer, { channel: 'flow', ...fields }, `flow channel: refused: ${reason}`);
      // Read (and ignore) the rest so the connection can finish closing.
      c.resume();
      c.end(`${REFUSED}${reason}\0`);
    };
    const refusal = unixRefusal(peer, this.address);
    if (refusal !== null) {
      refuse(refusal);
      return;
    }
    let text = '';
    c.setEncoding('utf8');
    c.setTimeout(5000, () => {
      auditRefusal(peer, { channel: 'flow', received: text.length }, 'flow channel: incomplete request (no eoc: within 5 s)');
      c.destroy();
    });
    c.on('data', (d: string) => {
      text += d;
      if (text.length > MAX_REQUEST) {
        c.removeAllListeners('data');
        return refuse('request too long', { received: text.length });
      }
      const req = parseRequest(text);
      if (req === null) return;
      c.removeAllListeners('data');
      c.setTimeout(0);
      const auth = req.get('auth');
      // The key never reaches a trace or a log line.
      req.delete('auth');
      if (this.key !== null && !keyMatches(this.key, auth)) {
        const why = auth === undefined ? 'no control key (send auth:<key>; see NFQLB_CONTROL_KEY)' : 'wrong control key';
        return refuse(why, { action: req.get('action') });
      }
      c.resume();
      c.end(this.handle(req, peer));
    });
  }

  /** Executes one request from `peer`, logs what it changed or why it failed, and returns the response text. */
  handle(req: FlowRequest, peer: Peer = {}): string {
    const reply = this.execute(req);
    const action = req.get('action');
    const fields = { channel: 'flow', action, flow: req.get('name') };
    if (reply.startsWith('FAIL')) {
      auditRefusal(peer, { ...fields, reason: reply.slice(6).replace(/\0$/, '') }, 'flow channel: request failed');
    } else if (CHANGES.has(action ?? '')) {
      auditChange(peer, { ...fields, request: changeOf(req) }, `flow channel: ${action} ${req.get('name')}`);
    }
    return reply;
  }

  private execute(req: FlowRequest): string {
    const action = req.get('action');
    if (this.tracer?.on(TRACE.FLOW_CONF)) this.tracer.emit('FLOW_CONF', { request: Object.fromEntries(req) });
    try {
      switch (action) {
        case undefined:
          return 'FAIL: no action\0';
        case 'set':
          return this.set(this.flows, specOfRequest(req, true));
        case 'trace-set':
          return this.set(this.traceFlows, specOfRequest(req, false));
        case 'delete':
        case 'trace-delete': {
          const name = req.get('name');
          if (name === undefined) return 'FAIL: no name\0';
          (action === 'delete' ? this.flows : this.traceFlows).delete(name);
          this.publish();
          return 'OK\0';
        }
        case 'list':
        case 'trace-list':
          return this.list(action === 'list' ? this.flows : this.traceFlows, req.get('name'));
        case 'list-names':
        case 'trace-list-names':
          return `${JSON.stringify(
            (action === 'list-names' ? this.flows : this.traceFlows).all().map((f) => f.name),
            null,
            2,
          )}\n`;
        default:
          return 'FAIL: action unknown\0';
      }
    } catch (e) {
      if (e instanceof FlowError) return `FAIL: ${e.message}\0`;
      throw e;
    }
  }

  private set(set: FlowSet, spec: FlowSpec): string {
    if (set === this.flows) {
      if (spec.target === null || spec.target === '') return 'FAIL: no target\0';
      try {
        TargetStore.open(NFQLB_TABLE, spec.target);
      } catch {
        return "FAIL: Couldn't create load-balancer\0";
      }
    }
    const slots = set.set(spec);
    if (set === this.flows) {
      for (const slot of slots) for (let q = slot; q < this.counters.length; q += MAX_FLOW_SLOTS) this.counters[q] = 0;
    }
    this.publish();
    return 'OK\0';
  }

  private list(set: FlowSet, name: string | undefined): string {
    const json = (f: ReturnType<FlowSet['all']>[number]) => f.toJSON(set === this.flows ? this.count(f.slot) : 0);
    if (name !== undefined) {
      const f = set.find(name);
      return f === undefined ? '' : `${JSON.stringify(json(f), null, 2)}\n`;
    }
    return `${JSON.stringify(set.all().map(json), null, 2)}\n`;
  }

  private publish(): void {
    this.apply(this.flows.specs(), this.traceFlows.specs());
  }
}

/** Actions that change state: the ones the audit log records. */
const CHANGES = new Set(['set', 'delete', 'trace-set', 'trace-delete']);

/** What a change request asked for, without the protocol's own keys. */
function changeOf(req: FlowRequest): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of req) if (k !== 'action' && k !== 'name') out[k] = v;
  return out;
}
