// The pure parts of `lb --offload`: its options and the table the program reads.

import { renameSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { lookupFwmarks, Offload, parseOffloadOptions, type TcOffloadAddon, type TcOffloadNative } from '../../src/nfqlb/offload.js';
import { createShm, deleteShm, shmPath } from '../../src/shm.js';
import { TargetTable } from '../../src/target-table.js';

describe('parseOffloadOptions', () => {
  it('takes device and VIP lists, VIPs repeatable', () => {
    expect(parseOffloadOptions(undefined, [])).toBeUndefined();
    expect(parseOffloadOptions('eth2,eth3', ['10.0.0.0,1000::', '10.0.0.1'])).toEqual({
      devs: ['eth2', 'eth3'],
      vips: ['10.0.0.0', '1000::', '10.0.0.1'],
    });
  });

  it.each([
    [undefined, ['10.0.0.0'], '--vip is for --offload'],
    ['eth2', [], '--offload needs the VIPs: --vip=ADDR[,ADDR...]'],
    ['eth2,', ['10.0.0.0'], "--offload: 'eth2,' is not a list of device names"],
    ['a-very-long-device-name', ['10.0.0.0'], "--offload: 'a-very-long-device-name' is not a list of device names"],
    ['eth2', ['10.0.0.0,'], "--vip: '' is not an IPv4 or IPv6 address"],
    ['eth2', ['10.0.0.256'], "--vip: '10.0.0.256' is not an IPv4 or IPv6 address"],
    ['eth2', ['10.0.0.0/24'], "--vip: '10.0.0.0/24' is not an IPv4 or IPv6 address"],
  ])('refuses --offload=%s --vip=%j with one line', (devs, vips, message) => {
    expect(() => parseOffloadOptions(devs, vips)).toThrow(message);
  });
});

describe('lookupFwmarks', () => {
  it('gives each lookup entry the fwmark of its slot, -1 for free or out-of-range slots', () => {
    const t = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(7, 3)), 7, 3, 0);
    const out = new Int32Array(7);
    lookupFwmarks(t, out);
    expect(Array.from(out)).toEqual(new Array(7).fill(-1));
    t.activate([101, 102, 103]);
    lookupFwmarks(t, out);
    expect(Array.from(out)).toEqual(Array.from(t.lookup, (slot) => t.active[slot]));
    for (let h = 0; h < 50; h++) expect(out[h % 7]).toBe(t.fwmarkOf(h));
    // A writer in another process may leave anything in the shm: never index outside active[].
    t.lookup[0] = 3;
    t.lookup[1] = -5;
    lookupFwmarks(t, out);
    expect([out[0], out[1]]).toEqual([-1, -1]);
  });
});

describe('Offload follows the shared-memory table', () => {
  const SHM = `tof-unit-${process.pid}`;
  afterEach(() => deleteShm(SHM));

  /** An addon that records what would go to the kernel. */
  function fakeAddon(published: number[][], vips: number[][]): TcOffloadAddon {
    const program: TcOffloadNative = {
      attach: () => {},
      detach: () => {},
      addVip: (key) => vips.push(Array.from(key)),
      publish: (fw) => published.push(Array.from(fw)),
      counters: () => ({ marked: 0, declined: 0 }),
      testRun: () => ({ retval: -1, mark: 0 }),
      close: () => {},
    };
    // A constructor that returns the fake: `new` needs a function, not an arrow.
    // biome-ignore lint/complexity/useArrowFunction: an arrow cannot be called with new.
    const TcOffload = function () {
      return program;
    } as unknown as TcOffloadAddon['TcOffload'];
    return { TcOffload, tcxIngress: () => [] };
  }

  function init(M: number, N: number): TargetTable {
    const tmp = `${SHM}.new`;
    const t = TargetTable.initialize(createShm(tmp, TargetTable.byteLength(M, N)), M, N, 0);
    renameSync(shmPath(tmp), shmPath(SHM));
    return t;
  }

  it('publishes the table at start and then only when a lookup entry changes, whole', () => {
    const t = init(13, 4);
    t.activate([101, 102]);
    const published: number[][] = [];
    const vips: number[][] = [];
    const offload = Offload.start({ devs: [], vips: ['10.0.0.0', '1000::'] }, SHM, 1, 0, fakeAddon(published, vips));
    try {
      expect(vips).toEqual([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0],
        [0x10, ...new Array(15).fill(0)],
      ]);
      const expected = () => Array.from(t.lookup, (slot) => t.active[slot]!);
      expect(published).toEqual([expected()]);
      offload.sync();
      expect(published).toHaveLength(1);
      t.activate([103]);
      offload.sync();
      expect(published).toEqual([published[0], expected()]);
      t.deactivate([101, 102, 103]);
      offload.sync();
      expect(published.at(-1)).toEqual(new Array(13).fill(-1));
      expect(published).toHaveLength(3);
    } finally {
      offload.close();
    }
  });
});
