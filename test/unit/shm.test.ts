import { existsSync, statSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { createShm, deleteShm, openShm, shmPath } from '../../src/shm.js';

const name = `tlbq-shm-test-${process.pid}`;

afterEach(() => deleteShm(name));

describe('shm', () => {
  it('names files in /dev/shm and rejects names that are not plain file names', () => {
    expect(shmPath('nfqlb')).toBe('/dev/shm/nfqlb');
    expect(() => shmPath('')).toThrow(/invalid shm name/);
    expect(() => shmPath('a/b')).toThrow(/invalid shm name/);
    expect(() => shmPath('..')).toThrow(/invalid shm name/);
  });

  it('creates a 0600 file, shares writes between mappings, and deletes it', () => {
    const w = new Int32Array(createShm(name, 4096));
    expect(statSync(shmPath(name)).mode & 0o777).toBe(0o600);
    expect(statSync(shmPath(name)).size).toBe(4096);
    w[0] = -1;
    w[1023] = 997;

    const r = new Int32Array(openShm(name, false));
    expect(r.length).toBe(1024);
    expect([r[0], r[1023]]).toEqual([-1, 997]);
    // MAP_SHARED: a later write through one mapping is seen through the other.
    w[5] = 101;
    expect(r[5]).toBe(101);
    const rw = new Int32Array(openShm(name, true));
    rw[6] = 102;
    expect(w[6]).toBe(102);

    deleteShm(name);
    expect(existsSync(shmPath(name))).toBe(false);
    // The mappings outlive the file.
    expect(r[5]).toBe(101);
    expect(() => deleteShm(name)).not.toThrow();
  });

  it('reuses an existing file in place: grows it, keeps its bytes, never shrinks it', () => {
    const a = new Uint8Array(createShm(name, 100));
    a[99] = 7;
    const b = new Uint8Array(createShm(name, 200));
    expect(b[99]).toBe(7);
    b[0] = 9;
    expect(a[0]).toBe(9); // same inode
    expect(statSync(shmPath(name)).size).toBe(200);
    const c = createShm(name, 50);
    expect(c.byteLength).toBe(50);
    expect(statSync(shmPath(name)).size).toBe(200);
  });

  it('reports a missing or empty shm and a bad size clearly', () => {
    expect(() => openShm(name, false)).toThrow(`shm ${name} not found`);
    writeFileSync(shmPath(name), '');
    expect(() => openShm(name, false)).toThrow(`shm ${name} is empty`);
    expect(() => createShm(name, 0)).toThrow(RangeError);
  });
});
