// The lb's trace server: `nfqlb trace` connects to it and gets the trace events (JSON lines)
// of the kinds selected in the shared mask; when it disconnects the mask is cleared.
// It admits whom the flow server admits (control-auth.ts): root on its unix socket; on tcp,
// a client whose first line is `auth:<control key>`.
import { createServer, type Server, type Socket } from 'node:net';
import { log } from '../log.js';
import { auditChange, auditRefusal } from './audit.js';
import { type ControlAddress, DEFAULT_TRACE_ADDRESS, formatControlAddress, parseControlAddress, socketOptions } from './control-address.js';
import { checkListenAddress, keyMatches, type Peer, peerOf, serverKey, unixRefusal } from './control-auth.js';
import { MASK_WORD } from './tracer.js';

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
      c.end(`${JSON.stringify({ error: `refused: ${reason}` })}\n`);
    };
    const refusal = unixRefusal(peer, this.address);
    if (refusal !== null) {
      refuse(refusal);
      return;
    }
    if (this.key === null) {
      this.admit(c, peer);
      return;
    }
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
      c.end(`${JSON.stringify({ error: 'another trace client is connected' })}\n`);
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
    if (this.client !== null && this.client.writableLength < 1 << 20) this.client.write(`${line}\n`);
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
export async function startTraceServer(
  addressText: string,
  queues: readonly number[],
  config: Int32Array,
  allowRemote = false,
): Promise<TraceServer | null> {
  const address = parseControlAddress(addressText);
  try {
    return await TraceServer.start(address, config, allowRemote);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
    if (addressText !== DEFAULT_TRACE_ADDRESS) {
      throw Object.assign(new Error(`--trace_address=${addressText} is taken (another lb in this network namespace?)`), {
        code: 'EADDRINUSE',
      });
    }
  }
  const own = parseControlAddress(`${DEFAULT_TRACE_ADDRESS}-${queues[0]}`);
  try {
    const ts = await TraceServer.start(own, config);
    log.warn(
      { traceAddress: formatControlAddress(own) },
      `${DEFAULT_TRACE_ADDRESS} is taken by another lb in this network namespace: ` +
        `trace this one with --trace_address=${formatControlAddress(own)}`,
    );
    return ts;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
    log.warn(
      `${DEFAULT_TRACE_ADDRESS} and ${formatControlAddress(own)} are taken: this lb runs without a trace server (give it --trace_address)`,
    );
    return null;
  }
}
