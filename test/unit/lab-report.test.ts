import { describe, expect, test } from 'vitest';
import { formatHosts, formatLossReport, hostsAt, lossReport, type ScaleEvent } from '../../src/lab/report.js';
import type { ConnEvent, CtrafficStats } from '../../src/lab/traffic/stats.js';

function run(conns: ConnEvent[][], duration = 10_000): CtrafficStats {
  return {
    tool: 'ctraffic',
    started: '2026-01-01T00:00:00.000Z',
    duration,
    address: '10.0.0.0:5003',
    nconn: conns.length,
    rate: 10,
    size: 64,
    sent: 0,
    received: 0,
    dropped: 0,
    failedConnects: 0,
    lostEvents: 0,
    connections: conns.map((events, id) => ({ id, src: null, sent: 0, received: 0, events })),
    samples: [],
  };
}
const connect = (t: number, host: string): ConnEvent => ({ t, type: 'connect', host });
const reconnect = (t: number, host: string): ConnEvent => ({ t, type: 'reconnect', host });
const lost = (t: number, host: string): ConnEvent => ({ t, type: 'lost', host, reason: 'ECONNRESET' });

// Five connections; vm-001 and vm-002 leave at 2 s and return at 6 s.
const stats = run([
  [connect(10, 'vm-001'), lost(2300, 'vm-001'), reconnect(2400, 'vm-003')],
  [connect(10, 'vm-002'), lost(2500, 'vm-002'), reconnect(2600, 'vm-004'), lost(6200, 'vm-004'), reconnect(6300, 'vm-002')],
  [connect(10, 'vm-003')],
  // Disturbed although its server stayed: a stateless hash moved it.
  [connect(10, 'vm-004'), lost(2700, 'vm-004'), { t: 2800, type: 'connect-failed', reason: 'connect timeout' }, reconnect(5000, 'vm-003')],
  [connect(10, 'vm-003')],
]);
const events: ScaleEvent[] = [
  { t: 6000, kind: 'scale-out', targets: ['vm-001', 'vm-002'] },
  { t: 2000, kind: 'scale-in', targets: ['vm-001', 'vm-002'] },
];

describe('lossReport', () => {
  test('hostsAt follows connects and losses', () => {
    expect(hostsAt(stats, 0)).toEqual({});
    expect(hostsAt(stats, 2000)).toEqual({ 'vm-001': 1, 'vm-002': 1, 'vm-003': 2, 'vm-004': 1 });
    expect(hostsAt(stats, 2750)).toEqual({ 'vm-003': 3, 'vm-004': 1 });
    expect(hostsAt(stats, 10_000)).toEqual({ 'vm-002': 1, 'vm-003': 4 });
  });

  test('losses go to the event whose phase they fall in; ideal = connections on the removed targets', () => {
    const r = lossReport(stats, events);
    expect(r.phases.map((p) => [p.event.kind, p.lost, p.ideal])).toEqual([
      ['scale-in', 3, 2],
      ['scale-out', 1, 0],
    ]);
    expect(r.phases[0]!.lostByHost).toEqual({ 'vm-001': 1, 'vm-002': 1, 'vm-004': 1 });
    expect(r.before).toEqual({ 'vm-001': 1, 'vm-002': 1, 'vm-003': 2, 'vm-004': 1 });
    expect(r.after).toEqual({ 'vm-002': 1, 'vm-003': 4 });
    expect(r).toMatchObject({ nconn: 5, lostBefore: 0, failedConnects: 1, neverConnected: 0 });
  });

  test('a loss before any scaling is reported apart; an LB tier has ideal 0', () => {
    const r = lossReport(stats, [{ t: 2400, kind: 'scale-in', targets: ['vm-201'] }], false);
    expect(r.lostBefore).toBe(1);
    expect(r.phases[0]).toMatchObject({ lost: 3, ideal: 0 });
  });

  test('a fault (an etcd member killed, an LB restarted) has ideal 0 and owns the losses of its phase', () => {
    const r = lossReport(stats, [...events, { t: 2600, kind: 'fault', targets: ['etcd-all-killed'] }]);
    expect(r.phases.map((p) => [p.event.kind, p.lost, p.ideal])).toEqual([
      ['scale-in', 2, 2],
      ['fault', 1, 0],
      ['scale-out', 1, 0],
    ]);
  });

  test('without events everything is "before" and the distribution is taken at the end', () => {
    const r = lossReport(run([[connect(5, 'vm-001')], []]), []);
    expect(r).toMatchObject({ phases: [], before: { 'vm-001': 1 }, neverConnected: 1, lostBefore: 0 });
  });

  test('the text report has the table and the original verdict line', () => {
    const text = formatLossReport(lossReport(stats, events), 10);
    expect(text).toMatch(/scale-in\s+2\.0s\s+vm-001 vm-002\s+3\s+2/);
    expect(text).toMatch(/scale-out\s+6\.0s\s+vm-001 vm-002\s+1\s+0/);
    expect(text).toContain('The ideal loss when 2 of 10 backends are scaled in is 40% (2 of 5), we lost 60% (3).');
    expect(text).toContain('Failed connects: 1');
    expect(formatHosts({ b: 2, a: 1 })).toBe('a=1 b=2');
    expect(formatHosts({})).toBe('-');
  });
});
