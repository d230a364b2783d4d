// The walls of src/, read from the import statements: the import graph has no circle; nothing
// below the CLI imports src/cli; the shared core (src/*.ts) imports no wing; and the per-packet
// path of nfqlb reaches none of the control plane, not even through another module.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** src-relative path -> the src-relative paths it imports (type-only imports count: they are arrows too). */
const graph = new Map<string, string[]>();
for (const file of sourceFiles(SRC)) {
  const text = readFileSync(file, 'utf8');
  const targets = [...text.matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)].map((m) =>
    relative(SRC, resolve(dirname(file), m[1]!)).replace(/\.js$/, '.ts'),
  );
  graph.set(relative(SRC, file), targets);
}

/** Every module `from` reaches through imports, itself excluded. */
function reach(from: string): Set<string> {
  const seen = new Set<string>();
  const todo = [...(graph.get(from) ?? [])];
  while (todo.length > 0) {
    const m = todo.pop()!;
    if (seen.has(m)) continue;
    seen.add(m);
    todo.push(...(graph.get(m) ?? []));
  }
  return seen;
}

/** The nfqlb modules a packet's verdict runs through. */
const PER_PACKET = [
  'nfqlb/balancer.ts',
  'nfqlb/flow-table.ts',
  'nfqlb/frag-table.ts',
  'nfqlb/conntrack.ts',
  'nfqlb/counters.ts',
  'nfqlb/tun.ts',
  'nfqlb/compat.ts',
  'nfqlb/tracer.ts',
];
/** What starts, serves or steers an lb: never on a packet's path. */
const CONTROL_PLANE = [
  'nfqlb/run.ts',
  'nfqlb/queue-worker.ts',
  'nfqlb/flow-server.ts',
  'nfqlb/flow-client.ts',
  'nfqlb/control-auth.ts',
  'nfqlb/control-address.ts',
  'nfqlb/audit.ts',
  'nfqlb/trace-server.ts',
  'nfqlb/log-level.ts',
  'nfqlb/metrics.ts',
  'nfqlb/announce.ts',
  'nfqlb/offload.ts',
  'metrics.ts',
  'health/address.ts',
  'health/checker.ts',
  'health/metrics.ts',
  'health/probe.ts',
  'health/standalone.ts',
  'health/state.ts',
  'health/tier.ts',
];

describe('architecture', () => {
  it('reads every module it names', () => {
    for (const m of [...PER_PACKET, ...CONTROL_PLANE]) expect(graph.has(m), m).toBe(true);
    for (const [m, targets] of graph) for (const t of targets) expect(graph.has(t), `${m} imports ${t}`).toBe(true);
  });

  it('has no import circle', () => {
    const circles = [...graph.keys()].filter((m) => reach(m).has(m));
    expect(circles).toEqual([]);
  });

  it('has no arrow from below into src/cli', () => {
    const up = [...graph].flatMap(([m, ts]) =>
      m.startsWith('cli/') ? [] : ts.filter((t) => t.startsWith('cli/')).map((t) => `${m} -> ${t}`),
    );
    expect(up).toEqual([]);
  });

  it('keeps the shared core free of the wings (index.ts, the package entry, excepted)', () => {
    const core = [...graph.keys()].filter((m) => !m.includes('/') && m !== 'index.ts');
    const out = core.flatMap((m) =>
      graph
        .get(m)!
        .filter((t) => t.includes('/'))
        .map((t) => `${m} -> ${t}`),
    );
    expect(out).toEqual([]);
  });

  it('keeps the per-packet path apart from the control plane', () => {
    const crossings = PER_PACKET.flatMap((m) => [...reach(m)].filter((t) => CONTROL_PLANE.includes(t)).map((t) => `${m} reaches ${t}`));
    expect(crossings).toEqual([]);
  });
});
