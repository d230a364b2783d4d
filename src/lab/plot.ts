// A small SVG writer for the "connections over time" plot of a scale test (what ctraffic's
// plot.sh drew with gnuplot in the original lab): active and connecting connections, the
// cumulative lost connections and failed connects, a tick per lost connection, and a dashed
// line at each scale event. Pure and dependency-free; any browser shows the file.

import type { ScaleEvent } from './report.js';
import type { CtrafficStats } from './traffic/stats.js';

export interface PlotOptions {
  title: string;
  width?: number;
  height?: number;
}

const MARGIN = { left: 56, right: 175, top: 36, bottom: 44 };

export const SERIES = [
  { key: 'active', label: 'active', color: '#1f77b4' },
  { key: 'connecting', label: 'connecting', color: '#ff7f0e' },
  { key: 'lost', label: 'lost (total)', color: '#d62728' },
  { key: 'failedConnects', label: 'failed connects (total)', color: '#9467bd' },
] as const;

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);
}

/** A round step (1, 2 or 5 times a power of ten) giving about `count` intervals over `span`. */
export function niceStep(span: number, count: number): number {
  if (!(span > 0)) return 1;
  const raw = span / count;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const m = raw / pow;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * pow;
}

const num = (v: number): string => String(Math.round(v * 10) / 10);

export function connectionsSvg(stats: CtrafficStats, events: readonly ScaleEvent[], o: PlotOptions): string {
  const width = o.width ?? 860;
  const height = o.height ?? 420;
  const pw = width - MARGIN.left - MARGIN.right;
  const ph = height - MARGIN.top - MARGIN.bottom;
  const tMax = Math.max(stats.duration, ...stats.samples.map((s) => s.t), 1) / 1000;
  const vMax = Math.max(stats.nconn, ...stats.samples.flatMap((s) => [s.active, s.connecting, s.lost, s.failedConnects]), 1);
  const yStep = niceStep(vMax, 5);
  const yMax = Math.ceil(vMax / yStep) * yStep;
  const xStep = niceStep(tMax, 10);
  const x = (sec: number): number => MARGIN.left + (pw * sec) / tMax;
  const y = (v: number): number => MARGIN.top + ph - (ph * v) / yMax;

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"` +
      ' font-family="sans-serif" font-size="12">',
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="15">${escapeXml(o.title)}</text>`,
  ];
  // Grid and axes.
  for (let v = 0; v <= yMax + 1e-9; v += yStep) {
    out.push(`<line x1="${MARGIN.left}" y1="${num(y(v))}" x2="${MARGIN.left + pw}" y2="${num(y(v))}" stroke="#ddd"/>`);
    out.push(`<text x="${MARGIN.left - 6}" y="${num(y(v) + 4)}" text-anchor="end">${num(v)}</text>`);
  }
  for (let s = 0; s <= tMax + 1e-9; s += xStep) {
    out.push(`<line x1="${num(x(s))}" y1="${MARGIN.top + ph}" x2="${num(x(s))}" y2="${MARGIN.top + ph + 4}" stroke="#000"/>`);
    out.push(`<text x="${num(x(s))}" y="${MARGIN.top + ph + 18}" text-anchor="middle">${num(s)}</text>`);
  }
  out.push(`<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${pw}" height="${ph}" fill="none" stroke="#000"/>`);
  out.push(`<text x="${MARGIN.left + pw / 2}" y="${height - 8}" text-anchor="middle">time (s)</text>`);
  out.push(`<text transform="translate(16 ${MARGIN.top + ph / 2}) rotate(-90)" text-anchor="middle">connections</text>`);

  // Scale events: a dashed line and what was scaled.
  for (const e of events) {
    const ex = num(x(e.t / 1000));
    out.push(
      `<line class="scale-event" x1="${ex}" y1="${MARGIN.top}" x2="${ex}" y2="${MARGIN.top + ph}" stroke="#555" stroke-dasharray="5,4"/>`,
    );
    out.push(`<text x="${num(x(e.t / 1000) + 4)}" y="${MARGIN.top + 14}">${escapeXml(`${e.kind} ${e.targets.join(' ')}`)}</text>`);
  }

  for (const s of SERIES) {
    const points = stats.samples.map((p) => `${num(x(p.t / 1000))},${num(y(p[s.key]))}`).join(' ');
    out.push(`<polyline class="series-${s.key}" fill="none" stroke="${s.color}" stroke-width="2" points="${points}"/>`);
  }

  // One tick above the time axis per lost connection.
  const lostColor = SERIES[2].color;
  for (const c of stats.connections) {
    for (const e of c.events) {
      if (e.type !== 'lost') continue;
      const lx = num(x(e.t / 1000));
      out.push(`<line class="lost" x1="${lx}" y1="${MARGIN.top + ph}" x2="${lx}" y2="${MARGIN.top + ph - 8}" stroke="${lostColor}"/>`);
    }
  }

  // Legend, right of the plot.
  const lx = MARGIN.left + pw + 12;
  SERIES.forEach((s, i) => {
    const ly = MARGIN.top + 10 + i * 20;
    out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 18}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`);
    out.push(`<text x="${lx + 24}" y="${ly + 4}">${escapeXml(s.label)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
