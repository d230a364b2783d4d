// contrib/prometheus/alerts.yml against the code: every nfqlb or xdplb metric an alert reads is
// one that src/ registers, so a renamed metric fails here instead of an alert silently never
// firing; and against docs/metrics.md, whose table gives each alert's time and severity.
// (promtool checks the rules' syntax and runs their unit tests in
// test/integration/prometheus.test.ts, next to the Prometheus it needs.)
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const METRIC = /\b(?:nfqlb|xdplb)_[a-z_]+\b/g;

/** The `expr:` of every alert, folded (`>-`) or on its line. */
function alertExprs(): Map<string, string> {
  const exprs = new Map<string, string>();
  const text = readFileSync(`${ROOT}contrib/prometheus/alerts.yml`, 'utf8');
  for (const m of text.matchAll(/^ *- alert: (\w+)\n *expr: (>-\n(?: {10}.*\n)+|.*\n)/gm)) exprs.set(m[1]!, m[2]!);
  return exprs;
}

/** The metric names src/ spells out as string literals ('nfqlb_packets_total'). */
function registeredNames(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, e.name);
      if (e.isDirectory()) walk(path);
      else if (e.name.endsWith('.ts'))
        for (const m of readFileSync(path, 'utf8').matchAll(/'((?:nfqlb|xdplb)_[a-z_]+)'/g)) names.add(m[1]!);
    }
  };
  walk(`${ROOT}src`);
  return names;
}

describe('contrib/prometheus/alerts.yml', () => {
  it('reads only metrics that src/ registers', () => {
    const exprs = alertExprs();
    expect(exprs.size).toBe([...readFileSync(`${ROOT}contrib/prometheus/alerts.yml`, 'utf8').matchAll(/- alert: /g)].length);
    const registered = registeredNames();
    const unknown = [...exprs].flatMap(([alert, expr]) =>
      (expr.match(METRIC) ?? []).filter((n) => !registered.has(n)).map((n) => `${alert}: ${n}`),
    );
    expect(unknown).toEqual([]);
    // Each alert reads at least one of ours (NfqlbDown reads Prometheus's own `up`).
    expect([...exprs].filter(([, e]) => (e.match(METRIC) ?? []).length === 0 && !e.includes('up{job="nfqlb"}'))).toEqual([]);
  });

  it("is the table of docs/metrics.md: each alert's for and severity", () => {
    const text = readFileSync(`${ROOT}contrib/prometheus/alerts.yml`, 'utf8');
    const rules = [...text.matchAll(/^ *- alert: (\w+)\n(?: {8}.*\n)*? {8}for: (\w+)\n(?: {8}.*\n)*? {10}severity: (\w+)$/gm)];
    const docs = readFileSync(`${ROOT}docs/metrics.md`, 'utf8');
    const table = [...docs.matchAll(/^\| `(Nfqlb\w+)` \| .* \| (\w+) \| (\w+) \|$/gm)];
    expect(rules).toHaveLength(alertExprs().size);
    expect(table.map((m) => [m[1], m[2], m[3]])).toEqual(rules.map((m) => [m[1], m[2], m[3]]));
  });
});
