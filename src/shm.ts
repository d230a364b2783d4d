// Shared memory files in /dev/shm, mapped into ArrayBuffers. This module owns the files
// (naming, creation, sizing); the native addon only maps an open fd. The layout inside is
// the caller's business (nfqlb's target table, the fragment-table stats, ...).
import { closeSync, constants, fstatSync, ftruncateSync, openSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { loadAddon } from './native.js';

interface ShmAddon {
  map(fd: number, length: number, writable: boolean): ArrayBuffer;
}

/** The file behind shared memory `name`, as shm_open(3) names it. */
export function shmPath(name: string): string {
  if (name === '' || name.includes('/') || name === '.' || name === '..' || name.includes('\0')) {
    throw new Error(`invalid shm name '${name}': it must be a plain non-empty file name (no '/')`);
  }
  return `/dev/shm/${name}`;
}

/**
 * Creates shared memory `name` of at least `size` bytes and maps its first `size` bytes
 * read-write. Like the reference's `init`, an existing file is reused in place (same
 * inode), so processes that have it mapped see what the caller then writes; it is grown
 * but never shrunk, because a reader mapping the old size would get SIGBUS past the new
 * end. Existing bytes are kept: the caller copies a complete image in.
 */
export function createShm(name: string, size: number): ArrayBuffer {
  const path = shmPath(name);
  if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`shm ${name}: size must be a positive integer, got ${size}`);
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    if (fstatSync(fd).size < size) ftruncateSync(fd, size);
    return addon().map(fd, size, true);
  } finally {
    closeSync(fd);
  }
}

/**
 * Maps all of existing shared memory `name`. A read-only mapping must not be written:
 * JS cannot make an ArrayBuffer read-only, and a write through it is a SIGSEGV.
 */
export function openShm(name: string, writable: boolean): ArrayBuffer {
  return mapShm(name, writable).buffer;
}

/**
 * openShm with the inode of the file mapped, taken from the same descriptor: a follower compares
 * it with shmInode to see whether another file has been renamed over the name since.
 */
export function mapShm(name: string, writable: boolean): { buffer: ArrayBuffer; ino: number } {
  const path = shmPath(name);
  let fd: number;
  try {
    fd = openSync(path, writable ? constants.O_RDWR : constants.O_RDONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`shm ${name} not found (${path})`);
    throw e;
  }
  try {
    const { size, ino } = fstatSync(fd);
    if (size === 0) throw new Error(`shm ${name} is empty (${path})`);
    return { buffer: addon().map(fd, size, writable), ino };
  } finally {
    closeSync(fd);
  }
}

/** The inode the name `name` stands for now. */
export function shmInode(name: string): number {
  return statSync(shmPath(name)).ino;
}

/**
 * Creates shared memory `name` afresh: `build` writes the content of a new, zeroed file of
 * `size` bytes under a temporary name, which is then renamed over `name`. A process mapping the
 * old file keeps it whole (never truncated or half-rewritten under its feet), and one that opens
 * `name` finds either the old file or the complete new one. If `build` throws, `name` is untouched.
 */
export function publishShm<T>(name: string, size: number, build: (buffer: ArrayBuffer) => T): T {
  const path = shmPath(name);
  const tmp = `.${name}.new-${process.pid}`;
  // A leftover of a process that died with our pid would be reused in place by createShm.
  deleteShm(tmp);
  try {
    const built = build(createShm(tmp, size));
    renameSync(shmPath(tmp), path);
    return built;
  } catch (e) {
    deleteShm(tmp);
    throw e;
  }
}

/** Removes shared memory `name`; a missing one is not an error. Mappings stay valid. */
export function deleteShm(name: string): void {
  try {
    unlinkSync(shmPath(name));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

function addon(): ShmAddon {
  return loadAddon<ShmAddon>('shm');
}
