// Global set-up of the kernel tests: what they create in /dev/shm they also remove. The lbs
// under test create the global `nfqlb-trace` (the reference's log level and trace mask, shared
// by every lb on the host and never removed by them), so the suite removes it when it was not
// there before. Any other new shm object is a test's leftover: it is written to LEFTOVERS, which
// scripts/test-summary.mjs reports as a failure (vitest ignores an error thrown here).
import { readdirSync, rmSync, writeFileSync } from 'node:fs';

const SHM = '/dev/shm';
const TRACE_SHM = 'nfqlb-trace';
export const LEFTOVERS = 'build/shm-leftovers.txt';

export default function setup(): () => void {
  const before = new Set(readdirSync(SHM));
  rmSync(LEFTOVERS, { force: true });
  return () => {
    if (!before.has(TRACE_SHM)) rmSync(`${SHM}/${TRACE_SHM}`, { force: true });
    const left = readdirSync(SHM).filter((name) => !before.has(name));
    if (left.length > 0) writeFileSync(LEFTOVERS, `${left.join(' ')}\n`);
  };
}
