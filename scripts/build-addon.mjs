#!/usr/bin/env node
// The package's `install` script: builds the C++ addons (binding.gyp) against the headers of
// the Node that runs it, so no header download is needed (an offline machine, or one that can
// reach only npm and Debian). What is missing is said in one line naming the Debian package.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, join, resolve } from 'node:path';

const require = createRequire(import.meta.url);

function fail(line) {
  process.stderr.write(`tslb: ${line}\n`);
  process.exit(1);
}

const onPath = (cmd) => (process.env.PATH ?? '').split(delimiter).some((d) => d !== '' && existsSync(join(d, cmd)));

// The BPF programs (clang -target bpf) include the kernel's uapi headers, whose asm/ headers
// live in the host's multiarch directory (binding.gyp asks gcc for its name too).
const multiarch = onPath('gcc') ? spawnSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).stdout.trim() : '';

// What the build needs, and the Debian package that provides it.
const needs = [
  ['/usr/include/libnetfilter_queue/libnetfilter_queue.h', 'libnetfilter-queue-dev'],
  ['/usr/include/libmnl/libmnl.h', 'libmnl-dev'],
  ['/usr/include/xdp/xsk.h', 'libxdp-dev'],
  ['/usr/include/bpf/libbpf.h', 'libbpf-dev'],
  ['/usr/include/bpf/bpf_helpers.h', 'libbpf-dev'],
  ['/usr/include/linux/bpf.h', 'linux-libc-dev'],
  ...(multiarch ? [[`/usr/include/${multiarch}/asm/types.h`, 'linux-libc-dev']] : []),
];
const tools = [
  ['gcc', 'build-essential'],
  ['g++', 'build-essential'],
  ['make', 'build-essential'],
  ['python3', 'python3'],
  ['clang', 'clang'],
];
const missing = [...tools.filter(([cmd]) => !onPath(cmd)), ...needs.filter(([file]) => !existsSync(file))].map(([, pkg]) => pkg);
if (missing.length > 0) fail(`cannot build the native addons: apt-get install ${[...new Set(missing)].join(' ')}`);

// npm passes --nodedir on as npm_config_nodedir; otherwise the running Node's own prefix
// (/usr/bin/node -> /usr/include/node), where Debian and the official tarballs put the headers.
const given = process.env.npm_config_nodedir;
const nodedir = given && given !== 'undefined' ? given : resolve(process.execPath, '..', '..');
if (!existsSync(join(nodedir, 'include', 'node', 'node.h'))) {
  fail(`no Node headers in ${nodedir}/include/node: install them with Node (apt-get install libnode-dev) or set npm_config_nodedir`);
}

const gyp = spawnSync(process.execPath, [require.resolve('node-gyp/bin/node-gyp.js'), 'rebuild', `--nodedir=${nodedir}`], {
  stdio: 'inherit',
});
process.exit(gyp.status ?? 1);
