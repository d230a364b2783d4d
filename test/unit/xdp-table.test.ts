import { describe, expect, it } from 'vitest';
import { TargetTable } from '../../src/target-table.js';
import { formatMac, MAX_VIPS, parseMac, vipKey, vipText, XdpTable } from '../../src/xdp/table.js';

function fresh(): XdpTable {
  return XdpTable.initialize(new ArrayBuffer(XdpTable.byteLength()));
}

describe('XdpTable', () => {
  it('initialises M=997, N=20 with nothing active and shows the original layout', () => {
    const t = fresh();
    expect([t.M, t.N]).toEqual([997, 20]);
    expect(t.show()).toBe(`M=997, N=20, lookup;\n${'-1 '.repeat(24)}...\nActive:\n`);
  });

  it('activates with a MAC; show lists active targets as "  <i> : <mac>"', () => {
    const t = fresh();
    t.activate(0, parseMac('0:0:0:1:1:1'));
    t.activate(11, parseMac('00:00:00:01:01:0B'));
    const lines = t.show().split('\n');
    expect(lines.slice(2)).toEqual(['Active:', '  0 : 00:00:00:01:01:01', '  11: 00:00:00:01:01:0b', '']);
    expect(
      lines[1]!
        .split(' ')
        .slice(0, 24)
        .every((v) => v === '0' || v === '11'),
    ).toBe(true);
  });

  it("its lookup is nfqlb's for the same active slots (bit-identical Maglev)", () => {
    const t = fresh();
    const ref = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(997, 20)), 997, 20, 0);
    for (const i of [2, 5, 7, 19]) {
      t.activate(i, parseMac(`0:0:0:1:1:${i}`));
      ref.setIndex(i, 101 + i);
    }
    t.deactivate(5);
    ref.clearIndex(5);
    expect(Array.from(t.targets.lookup)).toEqual(Array.from(ref.lookup));
  });

  it('refuses, changing nothing: no MAC yet, a bad index', () => {
    const t = fresh();
    const before = new Uint8Array(t.targets.lookup.buffer).slice();
    expect(() => t.activate(3)).toThrow(/no MAC/);
    expect(() => t.activate(20, parseMac('0:0:0:0:0:1'))).toThrow(/Invalid index \[20\]/);
    expect(() => t.activate(-1, parseMac('0:0:0:0:0:1'))).toThrow(RangeError);
    expect(() => t.deactivate(1.5)).toThrow(RangeError);
    expect(new Uint8Array(t.targets.lookup.buffer)).toEqual(before);
  });

  it('re-activating keeps the MAC it was given before', () => {
    const t = fresh();
    t.activate(4, parseMac('0:0:0:1:1:4'));
    t.deactivate(4);
    t.activate(4);
    expect(t.isActive(4)).toBe(true);
    expect(formatMac(t.macs, 4 * 8)).toBe('00:00:00:01:01:04');
  });

  it('keeps a VIP set with a generation that moves on every change', () => {
    const t = fresh();
    const g0 = t.vipGeneration;
    expect(t.addVips(['10.0.0.0', '1000::', '10.0.0.0'])).toBe(true);
    expect(t.vips()).toEqual(['10.0.0.0', '1000::']);
    expect(t.addVips(['1000::'])).toBe(false);
    const snap = t.vipSnapshot();
    expect(snap?.generation).toBeGreaterThan(g0);
    expect(snap!.generation % 2).toBe(0);
    expect(snap!.keys.map(vipText)).toEqual(['10.0.0.0', '1000::']);
    expect(t.removeVips(['10.0.0.0', '10.9.9.9'])).toBe(true);
    expect(t.vips()).toEqual(['1000::']);
    expect(t.vipGeneration).toBeGreaterThan(snap!.generation);
  });

  it('refuses bad VIPs and overflow, changing nothing', () => {
    const t = fresh();
    t.addVips(['10.0.0.0']);
    expect(() => t.addVips(['10.0.0.1', 'nonsense'])).toThrow(/Invalid address \[nonsense\]/);
    const many = Array.from({ length: MAX_VIPS }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
    expect(() => t.addVips(many)).toThrow(/too many VIPs/);
    expect(t.vips()).toEqual(['10.0.0.0']);
  });

  it('sees the same state through a second view of the same memory (another process)', () => {
    const buf = new ArrayBuffer(XdpTable.byteLength());
    const writer = XdpTable.initialize(buf);
    const reader = new XdpTable(buf);
    writer.activate(1, parseMac('2:0:0:0:0:1'));
    writer.addVips(['1000::5']);
    expect(reader.isActive(1)).toBe(true);
    expect(reader.vips()).toEqual(['1000::5']);
  });

  it('refuses memory that is not an xdplb table', () => {
    expect(() => new XdpTable(new ArrayBuffer(XdpTable.byteLength()))).toThrow(/not an xdplb table/);
    expect(() => new XdpTable(new ArrayBuffer(8))).toThrow(/too small/);
  });
});

describe('MAC and VIP text', () => {
  it.each(['0:0:0:1:1', '0:0:0:1:1:1:1', '0:0:0:1:1:100', 'g:0:0:0:0:0', ''])('refuses MAC %j', (m) => {
    expect(() => parseMac(m)).toThrow(/Invalid MAC/);
  });

  it('keys IPv4 VIPs as ::ffff:a.b.c.d and prints them back', () => {
    expect(Array.from(vipKey('10.0.0.1'))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 0, 0, 1]);
    expect(vipText(vipKey('10.0.0.1'))).toBe('10.0.0.1');
    expect(vipText(vipKey('1000::1:2'))).toBe('1000::1:2');
  });
});
