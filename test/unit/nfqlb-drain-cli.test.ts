// The nfqlb CLI's drain list over real /dev/shm files: deactivate drains (the fwmark goes into
// `<table>-drain` before it leaves the table), --now and activate take it out, init clears it,
// delete removes it, `show` keeps the reference's output, and bad input changes nothing.

import { existsSync, readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/nfqlb.js';
import { DrainList } from '../../src/drain-list.js';
import { deleteShm } from '../../src/shm.js';
import { captureOutput } from './capture-output.js';

const SHM = `tct-cli-${process.pid}`;
const io = { out: '', err: '' };

async function nfqlb(...args: string[]): Promise<number> {
  io.out = '';
  io.err = '';
  return main([...args, `--shm=${SHM}`]);
}

const draining = (): number[] =>
  DrainList.open(SHM, false)
    ?.list()
    .sort((a, b) => a - b) ?? [];

describe('nfqlb drain list', () => {
  beforeEach(() => {
    captureOutput(io);
  });
  afterEach(() => vi.restoreAllMocks());
  afterAll(() => {
    deleteShm(SHM);
    DrainList.delete(SHM);
  });

  it('deactivate drains, --now and activate undrain, init clears, delete removes', async () => {
    expect(await nfqlb('init', '--M=101', '--N=10')).toBe(0);
    expect(await nfqlb('activate', '101', '102', '103', '104')).toBe(0);
    expect(existsSync(`/dev/shm/${SHM}-drain`)).toBe(false);
    expect(await nfqlb('deactivate', '101', '999')).toBe(0); // 999 is not active: ignored, as in the reference
    expect(await nfqlb('deactivate', '--index=1')).toBe(0); // 102
    expect(draining()).toEqual([101, 102]);
    await nfqlb('show');
    expect(io.out.split('\n')[4]).toBe('   Active: 103(2) 104(3)');
    expect(io.out.split('\n')).toHaveLength(6); // the reference's five lines
    expect(await nfqlb('deactivate', '--now', '101')).toBe(0); // already out of the table: only undrained
    expect(await nfqlb('deactivate', '--now', '--index=2')).toBe(0); // 103: out at once
    expect(draining()).toEqual([102]);
    expect(await nfqlb('activate', '102')).toBe(0);
    expect(draining()).toEqual([]);
    expect(await nfqlb('deactivate', '104')).toBe(0);
    expect(draining()).toEqual([104]);
    expect(await nfqlb('init', '--M=101', '--N=10')).toBe(0);
    expect(draining()).toEqual([]);
    expect(await nfqlb('delete')).toBe(0);
    expect(existsSync(`/dev/shm/${SHM}-drain`)).toBe(false);
  });

  it('refuses bad input with one line, changing nothing', async () => {
    expect(await nfqlb('init', '--M=101', '--N=10')).toBe(0);
    expect(await nfqlb('activate', '--index=3', '103')).toBe(0);
    const before = readFileSync(`/dev/shm/${SHM}`);
    expect(await nfqlb('deactivate', '--index=3', '103')).toBe(1);
    expect(io.err).toBe(`nfqlb deactivate: --index takes no fwmark\n`);
    expect(await nfqlb('deactivate', '--now=1', '103')).toBe(1);
    expect(io.err.trim().split('\n')).toHaveLength(1);
    expect(readFileSync(`/dev/shm/${SHM}`)).toEqual(before);
    expect(draining()).toEqual([]);
  });
});

describe('nfqlb lb --conntrack', () => {
  it('is refused with --offload (offloaded packets would never reach the flow table), before anything starts', async () => {
    const io = { out: '', err: '' };
    captureOutput(io);
    try {
      expect(await main(['lb', `--tshm=${SHM}-none`, '--conntrack=1000', '--offload=eth2', '--vip=10.0.0.0'])).not.toBe(0);
    } finally {
      vi.restoreAllMocks();
    }
    expect(io.err.trim().split('\n')).toHaveLength(1);
    expect(io.err).toContain('--offload and --conntrack');
  });
});
