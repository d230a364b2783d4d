// The traffic server run on every lab server:
//   port 5001 (mconnect): writes its name and closes;
//   port 5003 (ctraffic): writes "<name>\n" as a greeting, then echoes everything back.
// The greeting is how ctraffic learns which server a connection reached (the VIP hides it).
// Listening on the wildcard address makes direct server return work for TCP: the kernel
// answers from the connection's local address, i.e. the VIP held on lo.

import { execFileSync } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { isMain, runCli } from './common.js';

export const HOST_PORT = 5001;
export const ECHO_PORT = 5003;

export interface ServerOptions {
  /** Name sent to clients (default: the network namespace's name, else the host name). */
  name?: string;
  /** Listen address (default `::`, which takes IPv4 too). */
  host?: string;
  hostPort?: number;
  echoPort?: number;
}

export interface TrafficServer {
  readonly name: string;
  close(): Promise<void>;
}

/** The namespace we run in, as `ip netns exec` named it; the host name outside one. */
export function defaultName(): string {
  try {
    const ns = execFileSync('ip', ['netns', 'identify', String(process.pid)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    if (ns !== '') return ns;
  } catch {
    /* no iproute2 or no permission: fall back */
  }
  return hostname();
}

// A peer resetting a connection is normal traffic here, not a server failure.
function quiet(s: Socket): Socket {
  s.on('error', () => s.destroy());
  return s;
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, ipv6Only: false }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export async function startServer(o: ServerOptions = {}): Promise<TrafficServer> {
  const name = o.name ?? defaultName();
  const host = o.host ?? '::';
  const hostServer = createServer((s) => quiet(s).end(name));
  const echoServer = createServer((s) => {
    quiet(s).setNoDelay(true);
    s.write(`${name}\n`);
    s.pipe(s);
  });
  await listen(hostServer, host, o.hostPort ?? HOST_PORT);
  try {
    await listen(echoServer, host, o.echoPort ?? ECHO_PORT);
  } catch (e) {
    hostServer.close();
    throw e;
  }
  const sockets = new Set<Socket>();
  for (const srv of [hostServer, echoServer]) {
    srv.on('connection', (s: Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
  }
  return {
    name,
    close: async () => {
      const closed = [hostServer, echoServer].map((srv) => new Promise<void>((r) => srv.close(() => r())));
      for (const s of sockets) s.destroy();
      await Promise.all(closed);
    },
  };
}

const USAGE = 'usage: server [--name=NAME] [--address=::] [--port=5001] [--echo-port=5003]';

/** CLI: runs until SIGTERM/SIGINT; prints "listening <name>" once both ports are open. */
export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      address: { type: 'string' },
      port: { type: 'string' },
      'echo-port': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const port = (v: string | undefined, dflt: number): number => {
    const n = v === undefined ? dflt : Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new RangeError(`port '${v}': expected 1..65535`);
    return n;
  };
  const srv = await startServer({
    name: values.name,
    host: values.address,
    hostPort: port(values.port, HOST_PORT),
    echoPort: port(values['echo-port'], ECHO_PORT),
  });
  process.stdout.write(`listening ${srv.name}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await srv.close();
  return 0;
}

if (isMain(import.meta.url)) runCli(main);
