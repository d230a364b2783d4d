// The shape shared by the nfqlb and xdplb command tables: each command declares its options,
// and the dispatcher turns every error into one line on stderr and a non-zero exit.

import { UsageError } from '../usage-error.js';
import { type OptionSpecs, type Parsed, parseOptions, usage } from './options.js';

export interface Command {
  synopsis: string;
  options: OptionSpecs;
  /** Returns the exit code; long-running commands resolve when they stop. */
  run(p: Parsed): number | Promise<number>;
}

export type CommandTable = Record<string, Command>;

/** Reads an option's last value, or the default. */
export function opt(p: Parsed, name: string, dflt: string): string;
export function opt(p: Parsed, name: string): string | undefined;
export function opt(p: Parsed, name: string, dflt?: string): string | undefined {
  return p.opts.get(name)?.at(-1) ?? dflt;
}

export async function dispatch(prog: string, table: CommandTable, argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(
      `Usage: ${prog} <command> [opt...]\nCommands:\n${Object.keys(table)
        .map((c) => `  ${c}\n`)
        .join('')}`,
    );
    return 0;
  }
  const cmd = table[name];
  if (!cmd) {
    process.stderr.write(`${prog}: unknown command '${name}' (try '${prog} -h')\n`);
    return 1;
  }
  if (rest.includes('-h') || rest.includes('--help')) {
    process.stdout.write(`${usage(cmd.synopsis, cmd.options)}\n`);
    return 0;
  }
  try {
    return await cmd.run(parseOptions(rest, cmd.options));
  } catch (e) {
    const err = e as Error;
    // Expected failures (bad input, missing shm, kernel refusal) are one line; a bug keeps its stack.
    const known =
      err instanceof UsageError || err instanceof RangeError || (err as NodeJS.ErrnoException).code !== undefined || err.name === 'Error';
    process.stderr.write(`${prog} ${name}: ${known ? err.message : err.stack}\n`);
    return 1;
  }
}
