import { describe, expect, test } from 'vitest';
import { connectionsSvg, escapeXml, niceStep, SERIES } from '../../src/lab/plot.js';
import type { ScaleEvent } from '../../src/lab/report.js';
import type { CtrafficStats, Sample } from '../../src/lab/traffic/stats.js';

const samples: Sample[] = Array.from({ length: 41 }, (_, k) => ({
  t: k * 250,
  active: k === 21 ? 80 : 100,
  connecting: k === 21 ? 20 : 0,
  lost: k < 21 ? 0 : 20,
  failedConnects: 0,
  sent: k * 25,
  received: k * 25,
}));
const stats: CtrafficStats = {
  tool: 'ctraffic',
  started: '2026-01-01T00:00:00.000Z',
  duration: 10_000,
  address: '10.0.0.0:5003',
  nconn: 100,
  rate: 100,
  size: 64,
  sent: 1000,
  received: 1000,
  dropped: 0,
  failedConnects: 0,
  lostEvents: 2,
  connections: [
    {
      id: 0,
      src: null,
      sent: 1,
      received: 1,
      events: [
        { t: 0, type: 'connect', host: 'vm-001' },
        { t: 5200, type: 'lost', host: 'vm-001', reason: 'x' },
      ],
    },
    {
      id: 1,
      src: null,
      sent: 1,
      received: 1,
      events: [
        { t: 0, type: 'connect', host: 'vm-002' },
        { t: 5300, type: 'lost', host: 'vm-002', reason: 'x' },
      ],
    },
  ],
  samples,
};
const events: ScaleEvent[] = [{ t: 5000, kind: 'scale-in', targets: ['vm-001', 'vm-<2>'] }];

/** Attributes of every element with this class, as numbers where they are. */
function elements(svg: string, cls: string): Record<string, string>[] {
  return [...svg.matchAll(new RegExp(`<\\w+ class="${cls}"([^>]*)/>`, 'g'))].map((m) =>
    Object.fromEntries([...m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!])),
  );
}

describe('connectionsSvg', () => {
  const svg = connectionsSvg(stats, events, { title: 'nfqueue_scale & <IPv4>', width: 860, height: 420 });

  test('is one svg element with escaped text', () => {
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg.match(/<svg/g)).toHaveLength(1);
    expect(svg).toContain('nfqueue_scale &amp; &lt;IPv4&gt;');
    expect(svg).toContain('scale-in vm-001 vm-&lt;2&gt;');
    expect(svg).not.toMatch(/<[^/!a-z]/); // no raw '<' from the data
  });

  test('one polyline per series with a point per sample, inside the plot area', () => {
    for (const s of SERIES) {
      const [line] = elements(svg, `series-${s.key}`);
      const points = line!.points!.split(' ').map((p) => p.split(',').map(Number));
      expect(points).toHaveLength(samples.length);
      for (const [x, y] of points) {
        expect(x).toBeGreaterThanOrEqual(56);
        expect(x).toBeLessThanOrEqual(860 - 175);
        expect(y).toBeGreaterThanOrEqual(36);
        expect(y).toBeLessThanOrEqual(420 - 44);
      }
    }
    // active: 100 at the top of the y range (100), the dip to 80 in the middle.
    const active = elements(svg, 'series-active')[0]!.points!.split(' ');
    expect(active[0]).toBe('56,36');
    expect(active[21]).toBe(`${Math.round((56 + (629 * 5.25) / 10) * 10) / 10},${Math.round((36 + 340 - 340 * 0.8) * 10) / 10}`);
  });

  test('a dashed line at each scale event and a tick per lost connection, at their times', () => {
    const [ev] = elements(svg, 'scale-event');
    expect(Number(ev!.x1)).toBeCloseTo(56 + 629 / 2, 1);
    expect(ev!['stroke-dasharray']).toBeDefined();
    const ticks = elements(svg, 'lost').map((l) => Number(l.x1));
    expect(ticks).toEqual([56 + 629 * 0.52, 56 + 629 * 0.53].map((v) => Math.round(v * 10) / 10));
  });

  test('axes get round steps', () => {
    expect([niceStep(10, 10), niceStep(20, 10), niceStep(100, 5), niceStep(7, 5), niceStep(0, 5)]).toEqual([1, 2, 20, 2, 1]);
    expect(escapeXml(`a<b>&"'`)).toBe('a&lt;b&gt;&amp;&quot;&apos;');
  });
});
