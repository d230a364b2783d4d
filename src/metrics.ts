// The `--metrics=[ADDR:]PORT` endpoint of nfqlb and xdplb: Prometheus text on GET /metrics,
// a health verdict on GET /healthz (200 "ok", or 503 and the reason). The metrics are
// prom-client collectors that read the data path's typed arrays at scrape time, so a scrape
// costs the data path nothing but the few milliseconds of the collection itself; a slow or
// malformed client is cut off by timeouts and never holds anything the data path needs.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { log } from './log.js';

/** Where the endpoint listens. */
export interface MetricsAddress {
  host: string;
  port: number;
}

/** Returns null when healthy, else why not (the 503 body). */
export type HealthCheck = () => string | null;

// A scraper sends one small request and reads the answer (Prometheus gives up after 10 s by
// default); anything slower is cut off.
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 20_000;
const MAX_CONNECTIONS = 32;

/**
 * A registry with prom-client's process metrics (CPU, memory, event loop, GC) in it. The event
 * loop's delay is sampled every `eventLoopPrecisionMs` (prom-client's default 10 ms wakes the
 * process 100 times a second: about 1% of a core, more than a mostly idle daemon spends).
 */
export function newRegistry(eventLoopPrecisionMs = 10): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: eventLoopPrecisionMs });
  return registry;
}

/** Puts one series' value at a scrape: its labels and the number. */
export type Put = (labels: Record<string, string>, v: number) => void;

/** A prom-client metric filled at scrape time: reset, then `fill` puts one value per series. */
export function scrapeMetric(
  type: 'counter' | 'gauge',
  registry: Registry,
  name: string,
  help: string,
  labelNames: string[],
  fill: (put: Put) => void,
): void {
  const config = { name, help, labelNames, registers: [registry] };
  if (type === 'counter') {
    new Counter({
      ...config,
      collect() {
        this.reset();
        fill((labels, v) => this.inc(labels, v));
      },
    });
  } else {
    new Gauge({
      ...config,
      collect() {
        this.reset();
        fill((labels, v) => this.set(labels, v));
      },
    });
  }
}

export class MetricsServer {
  private constructor(
    private readonly server: Server,
    readonly address: MetricsAddress,
    private readonly onClose: () => void,
  ) {}

  /**
   * Listens, or throws one line (address not local, port taken) with nothing left open.
   * `onClose` stops what feeds the registry (timers) when the server closes.
   */
  static async start(
    address: MetricsAddress,
    registry: Registry,
    health: HealthCheck,
    onClose: () => void = () => {},
  ): Promise<MetricsServer> {
    // Node checks the timeouts every connectionsCheckingInterval (30 s by default).
    const server = createServer(
      { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 1000 },
      (req, res) => {
        serve(req, res, registry, health).catch((e: Error) => {
          log.warn({ err: e.message, url: req.url }, 'metrics request failed');
          if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
          res.end();
        });
      },
    );
    server.maxConnections = MAX_CONNECTIONS;
    // An unparsable request, or one too slow (headers not complete in time, also a client that
    // sends nothing): answer if the socket still takes it, then drop the connection even if
    // the client never reads.
    server.on('clientError', (e: NodeJS.ErrnoException, socket) => {
      const status = e.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`, () => socket.destroy());
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        const where = address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
        reject(new Error(`--metrics: cannot listen on ${where}: ${e.code ?? e.message}`));
      });
      server.listen(address.port, address.host, () => resolve());
    });
    // The endpoint serves while the lb runs but never keeps the process alive on its own (if
    // the lb fails to start after this, it still exits).
    server.unref();
    log.info({ metrics: address }, 'serving metrics');
    return new MetricsServer(server, address, onClose);
  }

  /** Stops listening and cuts open connections. */
  close(): Promise<void> {
    this.onClose();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    return closed;
  }
}

async function serve(req: IncomingMessage, res: ServerResponse, registry: Registry, health: HealthCheck): Promise<void> {
  const path = (req.url ?? '').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
  } else if (path === '/metrics') {
    const text = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType }).end(text);
  } else if (path === '/healthz') {
    const problem = health();
    res.writeHead(problem === null ? 200 : 503, { 'content-type': 'text/plain' }).end(problem === null ? 'ok\n' : `${problem}\n`);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
  }
}
