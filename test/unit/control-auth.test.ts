// The control channels' admission rules and audit rate limit, as pure functions over a
// temporary key file.

import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TokenBucket } from '../../src/nfqlb/audit.js';
import { parseControlAddress } from '../../src/nfqlb/control-address.js';
import { checkListenAddress, clientKey, isLoopback, keyMatches, serverKey } from '../../src/nfqlb/control-auth.js';

const dir = mkdtempSync(join(tmpdir(), 'tsc-key-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('control key', () => {
  it('is created 0600 in a 0700 directory, then read back unchanged', () => {
    const path = join(dir, 'sub', 'control.key');
    const key = serverKey(path);
    expect(key.toString()).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'sub')).mode & 0o777).toBe(0o700);
    expect(serverKey(path).equals(key)).toBe(true);
    expect(clientKey(path)).toEqual({ key: key.toString() });
  });

  it('refuses a key file others can read, and a short key', () => {
    const loose = join(dir, 'loose.key');
    writeFileSync(loose, `${'a'.repeat(64)}\n`, { mode: 0o644 });
    chmodSync(loose, 0o644);
    expect(() => serverKey(loose)).toThrow(/accessible by others \(mode 644\): chmod 600/);
    const short = join(dir, 'short.key');
    writeFileSync(short, 'abc\n', { mode: 0o600 });
    expect(() => serverKey(short)).toThrow(/shorter than 16/);
  });

  it('a client without the file says which file it could not read', () => {
    expect(clientKey(join(dir, 'missing.key'))).toEqual({ missing: expect.stringMatching(/missing\.key \(ENOENT\)/) });
  });

  it('compares keys whatever their length', () => {
    const key = Buffer.from('0123456789abcdef0123');
    expect(keyMatches(key, '0123456789abcdef0123')).toBe(true);
    expect(keyMatches(key, '0123456789abcdef0123\n')).toBe(true);
    expect(keyMatches(key, '0123456789abcdef012')).toBe(false);
    expect(keyMatches(key, '')).toBe(false);
    expect(keyMatches(key, undefined)).toBe(false);
  });
});

describe('listen addresses', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['0.0.0.0', false],
    ['::', false],
    ['10.0.0.1', false],
    ['1000::1', false],
    ['::2', false],
  ])('%s loopback: %s', (host, loopback) => expect(isLoopback(host)).toBe(loopback));

  it('refuses a tcp address other hosts can reach unless allowed; unix is always fine', () => {
    expect(() => checkListenAddress(parseControlAddress('tcp:0.0.0.0:10033'), false, 'flow address')).toThrow(
      'flow address tcp:0.0.0.0:10033 is not a loopback address: other hosts could reach it; pass --allow_remote to accept that',
    );
    expect(() => checkListenAddress(parseControlAddress('tcp:[1000::1]:10033'), false, 'x')).toThrow(/tcp:\[1000::1\]:10033/);
    expect(() => checkListenAddress(parseControlAddress('tcp:0.0.0.0:10033'), true, 'x')).not.toThrow();
    expect(() => checkListenAddress(parseControlAddress('tcp:[::1]:10033'), false, 'x')).not.toThrow();
    expect(() => checkListenAddress(parseControlAddress('unix:nfqlb'), false, 'x')).not.toThrow();
  });
});

describe('TokenBucket', () => {
  it('lets a burst through, then the rate, and counts what it held back', () => {
    let t = 0;
    const b = new TokenBucket(2, 5, () => t);
    expect(Array.from({ length: 8 }, () => b.take())).toEqual([true, true, true, true, true, false, false, false]);
    expect(b.drain()).toBe(3);
    expect(b.drain()).toBe(0);
    t = 500; // half a second: one token
    expect(b.take()).toBe(true);
    expect(b.take()).toBe(false);
    t = 60_000; // refills to the burst, not beyond
    expect(Array.from({ length: 6 }, () => b.take()).filter(Boolean)).toHaveLength(5);
  });
});
