// The pure parts of `lb --offload`: its options and the table the program reads.
import { describe, expect, it } from 'vitest';
import { lookupFwmarks, parseOffloadOptions } from '../../src/nfqlb/offload.js';
import { TargetTable } from '../../src/target-table.js';

describe('parseOffloadOptions', () => {
  it('takes device and VIP lists, VIPs repeatable', () => {
    expect(parseOffloadOptions(undefined, [])).toBeUndefined();
    expect(parseOffloadOptions('eth2,eth3', ['10.0.0.0,1000::', '10.0.0.1'])).toEqual({ devs: ['eth2', 'eth3'], vips: ['10.0.0.0', '1000::', '10.0.0.1'] });
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
