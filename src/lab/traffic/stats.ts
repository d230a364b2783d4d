// ctraffic's stats file and its analysis. Pure: no I/O, so it is unit-tested with
// synthetic data. Times are milliseconds since the run started.

/** What happened to one connection slot (a slot reconnects from the same source address). */
export type ConnEvent =
  | { t: number; type: 'connect' | 'reconnect'; host: string }
  | { t: number; type: 'lost'; host: string; reason: string }
  | { t: number; type: 'connect-failed'; reason: string };

export interface ConnectionRecord {
  id: number;
  /** Source address the slot binds (null: the kernel's choice). */
  src: string | null;
  sent: number;
  received: number;
  events: ConnEvent[];
}

/** Periodic sample, for plotting connections over time. Counters are cumulative. */
export interface Sample {
  t: number;
  active: number;
  connecting: number;
  lost: number;
  failedConnects: number;
  sent: number;
  received: number;
}

export interface CtrafficStats {
  tool: 'ctraffic';
  /** ISO time the run started. */
  started: string;
  /** Length of the run in ms. */
  duration: number;
  address: string;
  nconn: number;
  /** Messages per second over all connections. */
  rate: number;
  /** Message size in bytes. */
  size: number;
  sent: number;
  received: number;
  /** Messages not sent because the connection was not keeping up (unanswered backlog). */
  dropped: number;
  failedConnects: number;
  /** Lost-connection events (a slot can lose several connections). */
  lostEvents: number;
  /** Longest wait (ms) for an echo that came: the outage a client saw (absent in old files). */
  maxDelay?: number;
  connections: ConnectionRecord[];
  samples: Sample[];
}

export interface Analysis {
  connections: number;
  /** Connections per server, by the server each slot reached first. */
  hosts: Record<string, number>;
  /** Connections per server at the end of the run (slots connected at the end). */
  finalHosts: Record<string, number>;
  /** Slots that lost a connection, i.e. had to reconnect at least once. */
  lostConnections: number;
  lostEvents: number;
  /** Lost connections per server they were on. */
  lostByHost: Record<string, number>;
  failedConnects: number;
  /** Slots that never connected at all. */
  neverConnected: number;
  sent: number;
  received: number;
  dropped: number;
}

function bump(m: Record<string, number>, k: string): void {
  m[k] = (m[k] ?? 0) + 1;
}

export function analyze(s: CtrafficStats): Analysis {
  const a: Analysis = {
    connections: s.connections.length,
    hosts: {},
    finalHosts: {},
    lostConnections: 0,
    lostEvents: 0,
    lostByHost: {},
    failedConnects: 0,
    neverConnected: 0,
    sent: s.sent,
    received: s.received,
    dropped: s.dropped,
  };
  for (const c of s.connections) {
    let first: string | undefined;
    let current: string | undefined;
    let lost = 0;
    for (const e of c.events) {
      if (e.type === 'connect' || e.type === 'reconnect') {
        first ??= e.host;
        current = e.host;
      } else if (e.type === 'lost') {
        lost++;
        bump(a.lostByHost, e.host);
        current = undefined;
      } else {
        a.failedConnects++;
      }
    }
    if (first === undefined) a.neverConnected++;
    else bump(a.hosts, first);
    if (current !== undefined) bump(a.finalHosts, current);
    a.lostEvents += lost;
    if (lost > 0) a.lostConnections++;
  }
  return a;
}

const hostList = (m: Record<string, number>): string =>
  Object.entries(m)
    .sort()
    .map(([h, n]) => `${h}=${n}`)
    .join(' ') || '-';

export function formatAnalysis(a: Analysis): string {
  return [
    `Connections: ${a.connections} (never connected: ${a.neverConnected})`,
    `Hosts: ${hostList(a.hosts)}`,
    `Hosts at end: ${hostList(a.finalHosts)}`,
    `Lost connections: ${a.lostConnections} (events: ${a.lostEvents}; by host: ${hostList(a.lostByHost)})`,
    `Failed connects: ${a.failedConnects}`,
    `Messages sent/received/dropped: ${a.sent}/${a.received}/${a.dropped}`,
  ].join('\n');
}

/** Checks that parsed JSON has the shape of a stats file (enough for `analyze`). */
export function asStats(v: unknown): CtrafficStats {
  const s = v as Partial<CtrafficStats> | null;
  if (s?.tool !== 'ctraffic' || !Array.isArray(s.connections) || !Array.isArray(s.samples)) {
    throw new TypeError('not a ctraffic stats file');
  }
  return s as CtrafficStats;
}
