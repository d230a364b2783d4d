// The CLI's output in unit tests: what main() writes to stdout and stderr, collected instead of
// printed.
import { vi } from 'vitest';

/** What was written since the last reset (the tests set the fields to '' between commands). */
export interface Output {
  out: string;
  err: string;
}

/** Collects process.stdout and process.stderr writes into `into` until vi.restoreAllMocks(). */
export function captureOutput(into: Output): void {
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    into.out += String(s);
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    into.err += String(s);
    return true;
  });
}
