// The closing lines of `make test`: each project's counts, the skipped and failed tests by name,
// then one line 'N passed, N failed, N skipped' over all projects. Exits 1 when a project has no
// report (its run died before writing one), or has a failed test or a file that failed to load,
// or when the kernel tests left shm objects behind.
import { existsSync, readFileSync } from 'node:fs';
import { relative } from 'node:path';

let [passed, failed, skipped, bad] = [0, 0, 0, false];
for (const project of process.argv.slice(2)) {
  const file = `build/vitest-${project}.json`;
  if (!existsSync(file)) {
    console.log(`${project}: no report (${file}): the run died before it finished`);
    failed += 1;
    bad = true;
    continue;
  }
  const report = JSON.parse(readFileSync(file, 'utf8'));
  const tests = report.testResults.flatMap((f) => f.assertionResults.map((t) => ({ ...t, file: relative('.', f.name) })));
  const skips = tests.filter((t) => t.status === 'pending' || t.status === 'skipped' || t.status === 'todo');
  const fails = tests.filter((t) => t.status === 'failed');
  // A file that throws while loading has no failed test, only a failed status and a message.
  const broken = report.testResults.filter((f) => f.status === 'failed' && !f.assertionResults.some((t) => t.status === 'failed'));
  const p = tests.filter((t) => t.status === 'passed').length;
  console.log(`${project}: ${p} passed, ${fails.length + broken.length} failed, ${skips.length} skipped`);
  for (const t of skips) console.log(`  skipped: ${t.file} > ${t.fullName}`);
  for (const t of fails) console.log(`  failed: ${t.file} > ${t.fullName}`);
  for (const f of broken) console.log(`  failed to run: ${relative('.', f.name)}: ${String(f.message).split('\n')[0]}`);
  passed += p;
  failed += fails.length + broken.length;
  skipped += skips.length;
  if (fails.length + broken.length > 0 || !report.success) bad = true;
}
// The kernel tests' global set-up lists the shm objects they created and did not remove.
const LEFTOVERS = 'build/shm-leftovers.txt';
if (existsSync(LEFTOVERS)) {
  console.log(`integration: left in /dev/shm: ${readFileSync(LEFTOVERS, 'utf8').trim()}`);
  bad = true;
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(bad ? 1 : 0);
