// Thin, synchronous wrappers over iproute2 for the lab and the integration tests.
// Every namespace we create carries a caller-chosen prefix so cleanup can find it
// again, even after a crash; the root namespace is never modified.
import { type ChildProcess, execFileSync, type SpawnOptions, spawn } from 'node:child_process';

/** Runs a command, returns its stdout; throws with the command line and its stderr. */
export function run(argv: readonly string[], input?: string): string {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('run: empty command');
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; status?: number };
    throw new Error(`'${argv.join(' ')}' failed (${err.status ?? '?'}): ${(err.stderr ?? String(e)).trim()}`);
  }
}

/** Runs a command inside network namespace `ns`. */
export function inNs(ns: string, argv: readonly string[], input?: string): string {
  return run(['ip', 'netns', 'exec', ns, ...argv], input);
}

/** Starts a long-running command inside `ns`; the caller ends it by PID. */
export function spawnInNs(ns: string, argv: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

export function listNs(prefix = ''): string[] {
  return run(['ip', 'netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n !== '' && n.startsWith(prefix));
}

export function addNs(name: string): void {
  run(['ip', 'netns', 'add', name]);
  inNs(name, ['ip', 'link', 'set', 'lo', 'up']);
}

/** Deletes every namespace whose name starts with `prefix`; processes left in them are killed first. */
export function removeNs(prefix: string): void {
  if (prefix.length < 3) throw new Error(`removeNs: prefix '${prefix}' is too short to be safe`);
  for (const ns of listNs(prefix)) {
    try {
      const pids = run(['ip', 'netns', 'pids', ns]).split('\n').filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      run(['ip', 'netns', 'del', ns]);
    } catch {
      /* raced with another cleanup */
    }
  }
}

/**
 * Runs many iproute2 commands with one exec (`ip [-n ns] -batch -`): building a lab
 * with hundreds of `ip` calls would take seconds, a batch per namespace takes milliseconds.
 * `ns` null means the caller's namespace; only use that for `netns add`/`netns del` lines.
 */
export function ipBatch(ns: string | null, lines: readonly string[]): void {
  if (lines.length === 0) return;
  run(ns === null ? ['ip', '-batch', '-'] : ['ip', '-n', ns, '-batch', '-'], `${lines.join('\n')}\n`);
}

/** Sets sysctls (`key=value`) inside `ns` with one exec. */
export function sysctlInNs(ns: string, settings: readonly string[]): void {
  if (settings.length === 0) return;
  inNs(ns, ['sysctl', '-qw', ...settings]);
}
