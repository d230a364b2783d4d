// The xdplb CLI over a real /dev/shm table: output formats, and that bad input prints one
// line, exits non-zero and leaves the table byte-for-byte unchanged.
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { readFileSync } from 'node:fs';
import { main } from '../../src/cli/xdplb.js';
import { deleteShm } from '../../src/shm.js';

const SHM = `tlbx-cli-${process.pid}`;
const file = `/dev/shm/${SHM}`;

let out = '';
let err = '';

async function xdplb(...args: string[]): Promise<number> {
  out = '';
  err = '';
  return main([...args, `--shm=${SHM}`]);
}

describe('xdplb CLI', () => {
  beforeEach(() => {
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
    vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  });
  afterEach(() => vi.restoreAllMocks());
  afterAll(() => deleteShm(SHM));

  it('init, activate, show, deactivate', async () => {
    expect(await xdplb('init')).toBe(0);
    expect(await xdplb('activate', '--mac=0:0:0:1:1:1', '0')).toBe(0);
    expect(await xdplb('activate', '--mac', '0:0:0:1:1:3', '2')).toBe(0);
    expect(await xdplb('show')).toBe(0);
    const lines = out.split('\n');
    expect(lines[0]).toBe('M=997, N=20, lookup;');
    expect(lines[1]).toMatch(/^([02] ){24}\.\.\.$/);
    expect(lines.slice(2)).toEqual(['Active:', '  0 : 00:00:00:01:01:01', '  2 : 00:00:00:01:01:03', '']);
    expect(await xdplb('deactivate', '0')).toBe(0);
    await xdplb('show');
    expect(out).toMatch(/^M=997, N=20, lookup;\n(2 ){24}\.\.\.\nActive:\n {2}2 : 00:00:00:01:01:03\n$/);
  });

  it('manages VIPs', async () => {
    expect(await xdplb('vip-add', '10.0.0.0', '1000::')).toBe(0);
    expect(await xdplb('vip-delete', '10.0.0.0')).toBe(0);
    expect(await xdplb('vip-list')).toBe(0);
    expect(out).toBe('1000::\n');
  });

  it.each([
    [['activate', '--mac=0:0:0:1:1', '1'], /Invalid MAC/],
    [['activate', '--mac=0:0:0:1:1:1', '20'], /Invalid index \[20\]/],
    [['activate', '--mac=0:0:0:1:1:1'], /No index/],
    [['activate', '--mac=0:0:0:1:1:1', 'x'], /not a number/],
    [['activate', '5'], /no MAC address/],
    [['deactivate', '-1'], /out of range|Invalid index/],
    [['vip-add', '10.0.0.1', '10.0.0.300'], /Invalid address \[10\.0\.0\.300\]/],
    [['vip-add'], /no VIP/],
    [['lb', '--idev=eth2'], /missing option --edev/],
    [['lb', '--idev=eth2', '--edev=eth1', '--mode=turbo'], /--mode/],
    [['lb', '--idev=eth2', '--edev=eth1', '--vip=10.0.0'], /Invalid address/],
    [['lb', '--idev=eth2', '--edev=eth1', '--metrics=localhost:9110'], /--metrics: 'localhost:9110' has no valid IPv4/],
    [['show', '--bogus'], /unknown option --bogus/],
  ])('%j: one line on stderr, exit 1, table unchanged', async (args, msg) => {
    const before = readFileSync(file);
    expect(await xdplb(...args)).toBe(1);
    expect(err).toMatch(msg);
    expect(err.trim().split('\n')).toHaveLength(1);
    expect(readFileSync(file).equals(before)).toBe(true);
  });

  it('a missing table is one line too', async () => {
    expect(await main(['show', '--shm=tlbx-cli-missing'])).toBe(1);
    expect(err).toMatch(/not found/);
  });
});
