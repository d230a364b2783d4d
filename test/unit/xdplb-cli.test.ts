// The xdplb CLI over a real /dev/shm table: output formats, and that bad input prints one
// line, exits non-zero and leaves the table byte-for-byte unchanged.

import { existsSync, readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/xdplb.js';
import { deleteShm } from '../../src/shm.js';
import { captureOutput } from './capture-output.js';

const SHM = `tlbx-cli-${process.pid}`;
const file = `/dev/shm/${SHM}`;

const io = { out: '', err: '' };

async function xdplb(...args: string[]): Promise<number> {
  io.out = '';
  io.err = '';
  return main([...args, `--shm=${SHM}`]);
}

describe('xdplb CLI', () => {
  beforeEach(() => {
    captureOutput(io);
  });
  afterEach(() => vi.restoreAllMocks());
  afterAll(() => deleteShm(SHM));

  it('init, activate, show, deactivate', async () => {
    expect(await xdplb('init')).toBe(0);
    expect(await xdplb('activate', '--mac=0:0:0:1:1:1', '0')).toBe(0);
    expect(await xdplb('activate', '--mac', '0:0:0:1:1:3', '2')).toBe(0);
    expect(await xdplb('show')).toBe(0);
    const lines = io.out.split('\n');
    expect(lines[0]).toBe('M=997, N=20, lookup;');
    expect(lines[1]).toMatch(/^([02] ){24}\.\.\.$/);
    expect(lines.slice(2)).toEqual(['Active:', '  0 : 00:00:00:01:01:01', '  2 : 00:00:00:01:01:03', '']);
    expect(await xdplb('deactivate', '0')).toBe(0);
    await xdplb('show');
    expect(io.out).toMatch(/^M=997, N=20, lookup;\n(2 ){24}\.\.\.\nActive:\n {2}2 : 00:00:00:01:01:03\n$/);
  });

  it('manages VIPs', async () => {
    expect(await xdplb('vip-add', '10.0.0.0', '1000::')).toBe(0);
    expect(await xdplb('vip-delete', '10.0.0.0')).toBe(0);
    expect(await xdplb('vip-list')).toBe(0);
    expect(io.out).toBe('1000::\n');
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
    // auto is what --offload means without --mode, not a value to give.
    [['lb', '--idev=eth2', '--edev=eth1', '--offload', '--mode=auto'], /--mode: 'auto' is not native or generic/],
    [['lb', '--idev=eth2', '--edev=eth1', '--offload=yes'], /option --offload takes no value/],
    [['lb', '--idev=eth2', '--edev=eth1', '--vip=10.0.0'], /Invalid address/],
    [['lb', '--idev=eth2', '--edev=eth1', '--metrics=localhost:9110'], /--metrics: 'localhost:9110' has no valid IPv4/],
    [['show', '--bogus'], /unknown option --bogus/],
    // init: M and N out of range replace nothing.
    [['init', '--M=1'], /--M: 1 is out of range/],
    [['init', '--M=x'], /--M: 'x' is not a number/],
    [['init', '--N=0'], /--N: 0 is out of range/],
    [['init', '--M=11', '--N=12'], /N can't be larger than M \(12 > 11\)/],
    [['init', '--M=99999999'], /--M: 99999999 is out of range/],
    // activate / deactivate: MACs and indexes.
    [['activate', '--mac=ff:ff:ff:ff:ff:ff', '1'], /Invalid MAC \[ff:ff:ff:ff:ff:ff\]: not a unicast/],
    [['activate', '--mac=01:00:5e:00:00:01', '1'], /not a unicast/],
    [['activate', '--mac=0:0:0:0:0:0', '1'], /not a unicast/],
    [['activate', '--mac=0:0:0:1:1:1:1', '1'], /Invalid MAC/],
    [['activate', '--mac=0:0:0:1:1:g', '1'], /Invalid MAC/],
    [['activate', '--mac=0:0:0:1:1:1', '1', '2'], /one index expected, got 2/],
    [['activate', '--mac=0:0:0:1:1:1', '99999999999'], /out of range/],
    [['deactivate', '20'], /Invalid index \[20\]/],
    [['deactivate'], /No index/],
    // VIPs: one unicast address each, all checked before any is added.
    [['vip-add', '10.0.0.0/24'], /Invalid address \[10\.0\.0\.0\/24\]/],
    [['vip-add', '10.0.0.1:80'], /Invalid address/],
    [['vip-add', '[1000::1]'], /Invalid address/],
    [['vip-add', '10.0.0.2', '224.0.0.1'], /Invalid VIP \[224\.0\.0\.1\]: a multicast/],
    [['vip-add', '255.255.255.255'], /broadcast/],
    [['vip-add', 'ff02::1'], /Invalid VIP \[ff02::1\]: a multicast/],
    [['vip-add', '0.0.0.0'], /unspecified/],
    [['vip-add', '::'], /unspecified/],
    [['vip-add', '127.0.0.1'], /loopback/],
    [['vip-delete', '1000::', 'nonsense'], /Invalid address \[nonsense\]/],
    // lb: devices, queue, VIPs and numbers before anything is attached or added.
    [['lb', '--idev=tsc-nodev', '--edev=lo', '--vip=10.0.0.9'], /--idev: unknown device \[tsc-nodev\]/],
    [['lb', '--idev=lo', '--edev=tsc-nodev', '--vip=10.0.0.9'], /--edev: unknown device \[tsc-nodev\]/],
    [['lb', '--idev=../lo', '--edev=lo'], /--idev: '\.\.\/lo' is not a device name/],
    [['lb', '--idev=lo', '--edev=lo', '--queue=7', '--vip=10.0.0.9'], /--queue=7: lo has 1 rx queue/],
    [['lb', '--idev=lo', '--edev=lo', '--queue=70000'], /--queue: 70000 is out of range/],
    [['lb', '--idev=lo', '--edev=lo', '--vip=224.0.0.1'], /Invalid VIP/],
    [['lb', '--idev=lo', '--edev=lo', '--batch=0'], /--batch: 0 is out of range/],
    [['lb', '--idev=lo', '--edev=lo', 'extra'], /unexpected argument 'extra'/],
  ])('%j: one line on stderr, exit 1, table unchanged', async (args, msg) => {
    const before = readFileSync(file);
    expect(await xdplb(...args)).toBe(1);
    expect(io.err).toMatch(msg);
    expect(io.err.trim().split('\n')).toHaveLength(1);
    expect(readFileSync(file).equals(before)).toBe(true);
  });

  it('a missing table is one line too, also for lb --vip (nothing is created)', async () => {
    expect(await main(['show', '--shm=tlbx-cli-missing'])).toBe(1);
    expect(io.err).toMatch(/not found/);
    io.err = '';
    expect(await main(['lb', '--idev=lo', '--edev=lo', '--vip=10.0.0.9', '--shm=tlbx-cli-missing'])).toBe(1);
    expect(io.err.trim().split('\n')).toHaveLength(1);
    expect(io.err).toMatch(/shm tlbx-cli-missing not found/);
    expect(existsSync('/dev/shm/tlbx-cli-missing')).toBe(false);
  });

  it('init takes M (rounded down to a prime) and N', async () => {
    expect(await main(['init', '--M=100', '--N=5', `--shm=${SHM}-mn`])).toBe(0);
    expect(io.out).toBe('M adjusted; 100 -> 97\n');
    io.out = '';
    expect(await main(['activate', '--mac=0:0:0:1:1:5', '4', `--shm=${SHM}-mn`])).toBe(0);
    expect(await main(['activate', '--mac=0:0:0:1:1:6', '5', `--shm=${SHM}-mn`])).toBe(1);
    expect(io.err).toMatch(/Invalid index \[5\]: must be 0\.\.4/);
    expect(await main(['show', `--shm=${SHM}-mn`])).toBe(0);
    expect(io.out).toMatch(/^M=97, N=5, lookup;\n(4 ){24}\.\.\.\nActive:\n {2}4 : 00:00:00:01:01:05\n$/);
    deleteShm(`${SHM}-mn`);
  });
});
