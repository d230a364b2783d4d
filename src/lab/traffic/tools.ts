// How the lab starts the traffic tools inside namespaces: as node processes (a process can
// only be in one network namespace, so the tools cannot run inside the lab's own process).
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnInNs } from '../netns.js';

export type ToolName = 'server' | 'mconnect' | 'ctraffic';

// The standalone tools and what they import (node: modules aside).
const TOOL_SOURCES = ['common', 'stats', 'server', 'mconnect', 'ctraffic'];

/** `[node, script]` for a tool; append its arguments. */
export function toolArgv(tool: ToolName): string[] {
  const here = fileURLToPath(import.meta.url);
  const dir = here.endsWith('.ts') ? transpiled(dirname(here)) : dirname(here);
  return [process.execPath, join(dir, `${tool}.js`)];
}

/**
 * Running from TypeScript sources (vitest) there is no JS to hand to a child node, and
 * Node 20 cannot strip types: transpile the tools (no type check, milliseconds) into a
 * directory named by their content hash, shared by every test process.
 */
function transpiled(srcDir: string): string {
  const sources = TOOL_SOURCES.map((n) => [n, readFileSync(join(srcDir, `${n}.ts`), 'utf8')] as const);
  const hash = createHash('sha256');
  for (const [, text] of sources) hash.update(text);
  const dir = join(tmpdir(), `tslb-traffic-${hash.digest('hex').slice(0, 16)}`);
  if (existsSync(dir)) return dir;
  const ts = createRequire(import.meta.url)('typescript') as typeof import('typescript');
  const work = `${dir}.${process.pid}`;
  mkdirSync(work, { recursive: true });
  writeFileSync(join(work, 'package.json'), '{ "type": "module" }\n');
  for (const [name, text] of sources) {
    const out = ts.transpileModule(text, {
      fileName: `${name}.ts`,
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    });
    writeFileSync(join(work, `${name}.js`), out.outputText);
  }
  try {
    renameSync(work, dir);
  } catch {
    rmSync(work, { recursive: true, force: true }); // another process won the race
  }
  return dir;
}

/** Starts the traffic server in namespace `ns` as `name`; resolves once it listens. */
export function spawnServer(ns: string, name: string): Promise<ChildProcess> {
  const p = spawnInNs(ns, [...toolArgv('server'), `--name=${name}`]);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (out.includes('listening')) {
        p.stdout?.off('data', onData);
        p.off('exit', onExit);
        resolve(p);
      }
    };
    const onExit = (code: number | null): void => {
      reject(new Error(`traffic server in ${ns} exited (${code}) before listening: ${err.trim()}`));
    };
    p.stdout?.on('data', onData);
    p.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    p.on('exit', onExit);
  });
}
