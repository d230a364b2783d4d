// Addresses of nfqlb's control sockets, in the reference's notation:
//   unix:<name>          an abstract unix socket (per network namespace, no file)
//   tcp:<ipv4>:<port>    tcp:[<ipv6>]:<port>
// The flow channel defaults to unix:nfqlb (or $NFQLB_FLOW_ADDRESS), the trace channel to
// unix:nfqlb-trace (or --trace_address).
import { parseIPv4, parseIPv6, parsePort } from '../address.js';
import { UsageError } from '../usage-error.js';

export type ControlAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export const DEFAULT_FLOW_ADDRESS = 'unix:nfqlb';
export const DEFAULT_TRACE_ADDRESS = 'unix:nfqlb-trace';

export function parseControlAddress(text: string): ControlAddress {
  if (text.startsWith('unix:')) {
    const name = text.slice(5);
    if (name === '' || name.length > 100 || name.includes('\0')) throw new UsageError(`Failed to parse address [${text}]`);
    return { kind: 'unix', path: `\0${name}` };
  }
  if (text.startsWith('tcp:')) {
    const rest = text.slice(4);
    let host: string;
    let port: string;
    if (rest.startsWith('[')) {
      const close = rest.indexOf(']');
      host = rest.slice(1, close);
      port = rest.slice(close + 1);
      if (close < 0 || !port.startsWith(':') || parseIPv6(host) === null) throw new UsageError(`Failed to parse address [${text}]`);
    } else {
      const colon = rest.lastIndexOf(':');
      host = rest.slice(0, colon);
      port = rest.slice(colon);
      if (colon < 0 || parseIPv4(host) === null) throw new UsageError(`Failed to parse address [${text}]`);
    }
    try {
      return { kind: 'tcp', host, port: parsePort(port.slice(1)) };
    } catch {
      throw new UsageError(`Failed to parse address [${text}]`);
    }
  }
  throw new UsageError(`Failed to parse address [${text}]: use unix:<name> or tcp:<addr>:<port>`);
}

/** The flow channel's address: $NFQLB_FLOW_ADDRESS or unix:nfqlb. */
export function flowAddress(): ControlAddress {
  return parseControlAddress(process.env.NFQLB_FLOW_ADDRESS ?? DEFAULT_FLOW_ADDRESS);
}

/** The address in the notation it was given in. */
export function formatControlAddress(a: ControlAddress): string {
  return a.kind === 'unix' ? `unix:${a.path.slice(1)}` : a.host.includes(':') ? `tcp:[${a.host}]:${a.port}` : `tcp:${a.host}:${a.port}`;
}

/** Options for net.createServer().listen() / net.connect(). */
export function socketOptions(a: ControlAddress): { path: string } | { host: string; port: number } {
  return a.kind === 'unix' ? { path: a.path } : { host: a.host, port: a.port };
}
