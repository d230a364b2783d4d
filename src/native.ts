// Loads the C++ addons built by node-gyp (binding.gyp). Each addon wraps one kernel
// facility; a missing one is reported with the Debian package that provides its library.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

/** The checkout root: src/ and dist/src/ both sit below it. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`tslb: cannot find package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
}

const aptPackage: Record<string, string> = {
  shm: 'build-essential',
  nfqueue: 'libnetfilter-queue-dev libmnl-dev',
  xsk: 'libxdp-dev libbpf-dev clang',
  tc_offload: 'libbpf-dev clang',
};

const loaded = new Map<string, unknown>();

/** Returns the named addon (`build/Release/<name>.node`), or throws one line saying what to do. */
export function loadAddon<T>(name: string): T {
  const cached = loaded.get(name);
  if (cached) return cached as T;
  const file = join(packageRoot(), 'build', 'Release', `${name}.node`);
  if (!existsSync(file)) {
    throw new Error(
      `native addon ${name} is not built (${file}): run 'make build' (needs apt packages: ${aptPackage[name] ?? 'build-essential'})`,
    );
  }
  let addon: T;
  try {
    addon = require(file) as T;
  } catch (e) {
    throw new Error(`native addon ${name} failed to load: ${(e as Error).message} (install: apt-get install ${aptPackage[name] ?? ''})`);
  }
  loaded.set(name, addon);
  return addon;
}
