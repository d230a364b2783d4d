import { describe, expect, test } from 'vitest';
import { formatIp, parseCidr, parseDuration, parseHostPort, pickSources } from '../../src/lab/traffic/common.js';
import { analyze, asStats, type CtrafficStats, formatAnalysis } from '../../src/lab/traffic/stats.js';

// Four connection slots: one steady, one moved off vm-002 when it was removed, one lost twice
// (and a failed connect in between), one that never connected.
const stats: CtrafficStats = {
  tool: 'ctraffic',
  started: '2026-01-01T00:00:00.000Z',
  duration: 5000,
  address: '10.0.0.0:5003',
  nconn: 4,
  rate: 40,
  size: 64,
  sent: 180,
  received: 170,
  dropped: 2,
  failedConnects: 3,
  lostEvents: 3,
  connections: [
    { id: 0, src: '50.0.0.1', sent: 50, received: 50, events: [{ t: 3, type: 'connect', host: 'vm-001' }] },
    {
      id: 1,
      src: '50.0.0.2',
      sent: 50,
      received: 48,
      events: [
        { t: 4, type: 'connect', host: 'vm-002' },
        { t: 2100, type: 'lost', host: 'vm-002', reason: 'ECONNRESET' },
        { t: 2210, type: 'reconnect', host: 'vm-003' },
      ],
    },
    {
      id: 2,
      src: '50.0.0.3',
      sent: 80,
      received: 72,
      events: [
        { t: 5, type: 'connect', host: 'vm-002' },
        { t: 2000, type: 'lost', host: 'vm-002', reason: 'timeout' },
        { t: 2100, type: 'connect-failed', reason: 'ECONNREFUSED' },
        { t: 2300, type: 'reconnect', host: 'vm-001' },
        { t: 4000, type: 'lost', host: 'vm-001', reason: 'ECONNRESET' },
      ],
    },
    {
      id: 3,
      src: '50.0.0.4',
      sent: 0,
      received: 0,
      events: [
        { t: 2000, type: 'connect-failed', reason: 'connect timeout' },
        { t: 4100, type: 'connect-failed', reason: 'connect timeout' },
      ],
    },
  ],
  samples: [{ t: 250, active: 3, connecting: 1, lost: 0, failedConnects: 0, sent: 10, received: 10 }],
};

describe('ctraffic analyze', () => {
  test('per-host counts, lost connections and failed connects', () => {
    expect(analyze(stats)).toEqual({
      connections: 4,
      hosts: { 'vm-001': 1, 'vm-002': 2 },
      finalHosts: { 'vm-001': 1, 'vm-003': 1 },
      lostConnections: 2,
      lostEvents: 3,
      lostByHost: { 'vm-002': 2, 'vm-001': 1 },
      failedConnects: 3,
      neverConnected: 1,
      sent: 180,
      received: 170,
      dropped: 2,
    });
  });

  test('text form names the hosts and the losses', () => {
    const text = formatAnalysis(analyze(stats));
    expect(text).toContain('Hosts: vm-001=1 vm-002=2');
    expect(text).toContain('Lost connections: 2 (events: 3; by host: vm-001=1 vm-002=2)');
    expect(text).toContain('Failed connects: 3');
  });

  test('a run without trouble has no losses', () => {
    const calm = { ...stats, connections: [stats.connections[0]!] };
    const a = analyze(calm);
    expect([a.lostConnections, a.failedConnects, a.neverConnected]).toEqual([0, 0, 0]);
    expect(a.hosts).toEqual({ 'vm-001': 1 });
  });

  test('asStats refuses what is not a stats file', () => {
    expect(() => asStats({ connections: [] })).toThrow(/not a ctraffic stats file/);
    expect(asStats(JSON.parse(JSON.stringify(stats)))).toEqual(stats);
  });
});

describe('traffic tool address helpers', () => {
  test('host:port for both families', () => {
    expect(parseHostPort('10.0.0.0:5001')).toEqual({ host: '10.0.0.0', port: 5001, family: 4 });
    expect(parseHostPort('[1000::]:5003')).toEqual({ host: '1000::', port: 5003, family: 6 });
    expect(() => parseHostPort('1000:::5003')).toThrow(RangeError);
    expect(() => parseHostPort('10.0.0.0:0')).toThrow(RangeError);
  });

  test('cidr ranges and RFC 5952 formatting', () => {
    const v6 = parseCidr('2000::/112');
    expect(v6.size).toBe(65536n);
    expect(formatIp(v6.base + 0x1234n, 6)).toBe('2000::1234');
    expect(formatIp(parseCidr('1000::1:192.168.1.5/128').base, 6)).toBe('1000::1:c0a8:105');
    expect(formatIp(parseCidr('1:0:0:2:0:0:0:3/128').base, 6)).toBe('1:0:0:2::3');
    expect(formatIp(parseCidr('1:2:3:4:5:6:7:8/128').base, 6)).toBe('1:2:3:4:5:6:7:8');
    expect(formatIp(parseCidr('50.0.7.9/16').base + 258n, 4)).toBe('50.0.1.2');
    expect(() => parseCidr('50.0.0.0')).toThrow(RangeError);
  });

  test('pickSources gives distinct addresses inside the range, never the first', () => {
    const cidr = parseCidr('50.0.0.0/16');
    const picked = pickSources(cidr, 1000);
    expect(new Set(picked).size).toBe(1000);
    for (const a of picked) expect(a).toMatch(/^50\.0\.\d+\.\d+$/);
    expect(picked).not.toContain('50.0.0.0');
    // Dense: every usable address of a /29 exactly once.
    expect(pickSources(parseCidr('50.0.0.0/29'), 7).sort()).toEqual([
      '50.0.0.1',
      '50.0.0.2',
      '50.0.0.3',
      '50.0.0.4',
      '50.0.0.5',
      '50.0.0.6',
      '50.0.0.7',
    ]);
    expect(() => pickSources(parseCidr('50.0.0.0/29'), 8)).toThrow(RangeError);
  });

  test('durations', () => {
    expect(parseDuration('10s')).toBe(10_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1m')).toBe(60_000);
    expect(parseDuration('2')).toBe(2000);
    expect(() => parseDuration('ten')).toThrow(RangeError);
  });
});
