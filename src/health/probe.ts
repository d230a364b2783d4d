// One health probe: a TCP connect (tcp:PORT), or a GET whose status must be 2xx or 3xx
// (http:PORT/PATH), from a socket with SO_MARK set to the target's fwmark, so that the probe
// takes the target's fwmark route like the balanced packets do. The probe runs in the addon
// (native/health_probe.cc) on Node's event loop.
import { isIPv4, isIPv6 } from 'node:net';
import { loadAddon } from '../native.js';
import { UsageError } from '../usage-error.js';

interface HealthProbeAddon {
  startProbe(
    address: string,
    port: number,
    mark: number,
    request: string,
    timeoutMs: number,
    done: (why: string | null) => void,
  ): string | undefined;
  checkMark(): void;
}

const addon = (): HealthProbeAddon => loadAddon<HealthProbeAddon>('health_probe');

/** Throws (one line) when this process may not mark its probes: SO_MARK needs CAP_NET_ADMIN. */
export function checkProbePermission(): void {
  addon().checkMark();
}

export type ProbeSpec = { kind: 'tcp'; port: number } | { kind: 'http'; port: number; path: string };

/** `tcp:PORT` or `http:PORT/PATH` (the path is sent as written, so it must be plain URL characters). */
export function parseProbeSpec(text: string): ProbeSpec {
  const m = /^(tcp|http):(\d{1,5})(\/[\x21-\x7e]{0,200})?$/.exec(text);
  const port = Number(m?.[2]);
  if (!m || port < 1 || port > 65535 || (m[1] === 'tcp') !== (m[3] === undefined)) {
    throw new UsageError(`--health: '${text}' is not tcp:PORT or http:PORT/PATH`);
  }
  return m[1] === 'tcp' ? { kind: 'tcp', port } : { kind: 'http', port, path: m[3]! };
}

/** The family of an address, or 0 when it is none. */
export function family(address: string): 0 | 4 | 6 {
  return isIPv4(address) ? 4 : isIPv6(address) ? 6 : 0;
}

/**
 * What the probe sends once connected: nothing for tcp; for http an HTTP/1.0 GET with
 * Connection: close, so the answer is read no further than its status line.
 */
export function probeRequest(spec: ProbeSpec, address: string): string {
  if (spec.kind === 'tcp') return '';
  const host = family(address) === 6 ? `[${address}]` : address;
  return `GET ${spec.path} HTTP/1.0\r\nHost: ${host}\r\nUser-Agent: nfqlb-health\r\nConnection: close\r\n\r\n`;
}

/**
 * Probes `address` (sending `request`, see probeRequest) with fwmark `mark`; resolves with null
 * when the target passed, else with why not (an errno name, "timeout", "HTTP 503", ...). Never rejects.
 */
export function probe(address: string, port: number, mark: number, request: string, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    try {
      const failed = addon().startProbe(address, port, mark, request, timeoutMs, resolve);
      if (failed !== undefined) resolve(failed);
    } catch (e) {
      resolve((e as Error).message);
    }
  });
}
