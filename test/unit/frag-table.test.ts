// The fragment table on its own: first fragment then the others, the others first (stored and
// handed back in arrival order), timeouts, full pools, collisions, and the stats format.
import { describe, expect, it } from 'vitest';
import { FRAG_DROP, FRAG_STAT, FRAG_STORED, FragTable, formatFragStats } from '../../src/nfqlb/frag-table.js';
import { PacketInfo, parsePacket } from '../../src/packet.js';
import { fragmentPacket, ipv4, ipv6 } from '../fixtures/packet-builder.js';

const opts = { size: 16, buckets: 4, maxFragments: 4, mtu: 1500, ttlMs: 200 };

function frags(family: 4 | 6, id: number, src = family === 4 ? '50.0.0.1' : '2000::1'): Uint8Array[] {
  const dst = family === 4 ? '10.0.0.0' : '1000::';
  const b = family === 4 ? ipv4({ src, dst }) : ipv6({ src, dst });
  return fragmentPacket(b.udp({ sport: 4000, dport: 5001 }).payload(3000).build(), 1280, id);
}

function parsed(pkt: Uint8Array): PacketInfo {
  const p = new PacketInfo();
  parsePacket(pkt, 0, pkt.length, p);
  return p;
}

describe.each([4, 6] as const)('FragTable, IPv%i', (family) => {
  it('gives later fragments the first fragment’s verdict', () => {
    const ft = new FragTable(opts);
    const [first, second, third] = frags(family, 7);
    expect(ft.insertFirst(first!, parsed(first!), 105, 0, () => expect.fail('nothing stored'))).toBe(0);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 1)).toBe(105);
    expect(ft.lookupOrStore(third!, 0, third!.length, parsed(third!), 2)).toBe(105);
    expect(ft.stats[FRAG_STAT.INSERTS]).toBe(1);
    expect(ft.stats[FRAG_STAT.ACTIVE]).toBe(1);
  });

  it('stores fragments that come before the first and hands them back in order', () => {
    const ft = new FragTable(opts);
    const [first, second, third] = frags(family, 8);
    expect(ft.lookupOrStore(third!, 0, third!.length, parsed(third!), 0)).toBe(FRAG_STORED);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 0)).toBe(FRAG_STORED);
    expect(ft.storedFragments()).toBe(2);
    const injected: Uint8Array[] = [];
    const n = ft.insertFirst(first!, parsed(first!), 103, 1, (pool, off, len) => injected.push(pool.slice(off, off + len)));
    expect(n).toBe(2);
    expect(injected).toEqual([third, second]);
    expect(ft.storedFragments()).toBe(0);
    expect(ft.stats[FRAG_STAT.FRAGS_ALLOCATED]).toBe(2);
  });

  it('keeps datagrams with other ids or addresses apart', () => {
    const ft = new FragTable(opts);
    const a = frags(family, 1);
    const b = frags(family, 2);
    const c = frags(family, 1, family === 4 ? '50.0.0.2' : '2000::2');
    ft.insertFirst(a[0]!, parsed(a[0]!), 101, 0, () => {});
    ft.insertFirst(b[0]!, parsed(b[0]!), 102, 0, () => {});
    expect(ft.lookupOrStore(b[1]!, 0, b[1]!.length, parsed(b[1]!), 0)).toBe(102);
    expect(ft.lookupOrStore(a[1]!, 0, a[1]!.length, parsed(a[1]!), 0)).toBe(101);
    expect(ft.lookupOrStore(c[1]!, 0, c[1]!.length, parsed(c[1]!), 0)).toBe(FRAG_STORED);
  });
});

describe('FragTable limits', () => {
  it('forgets an entry after its ttl and discards what it stored', () => {
    const ft = new FragTable(opts);
    const [first, second, third] = frags(4, 9);
    ft.insertFirst(first!, parsed(first!), 101, 0, () => {});
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 199)).toBe(101);
    // After the ttl the datagram is new again: the fragment is stored, not forwarded.
    expect(ft.lookupOrStore(third!, 0, third!.length, parsed(third!), 200)).toBe(FRAG_STORED);
    expect(ft.stats[FRAG_STAT.OBJ_GC]).toBe(1);
    ft.sweep(500);
    expect(ft.stats[FRAG_STAT.FRAGS_DISCARDED]).toBe(1);
    expect(ft.stats[FRAG_STAT.ACTIVE]).toBe(0);
    expect(ft.storedFragments()).toBe(0);
  });

  it('poisons a datagram that lost a fragment for want of room', () => {
    const ft = new FragTable({ ...opts, maxFragments: 1 });
    const [first, second, third] = frags(4, 10);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 0)).toBe(FRAG_STORED);
    expect(ft.lookupOrStore(third!, 0, third!.length, parsed(third!), 0)).toBe(FRAG_DROP);
    expect(ft.stats[FRAG_STAT.FRAGS_DISCARDED]).toBe(1);
    // The first fragment of a datagram that can no longer be whole is dropped too.
    expect(ft.insertFirst(first!, parsed(first!), 101, 0, () => {})).toBe(-1);
    expect(ft.storedFragments()).toBe(0);
  });

  it('stores nothing without fragment slots (no --tun) and drops what comes early', () => {
    const ft = new FragTable({ ...opts, maxFragments: 0 });
    const [, second] = frags(6, 11);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 0)).toBe(FRAG_DROP);
  });

  it('chains colliding datagrams in the extra buckets and rejects beyond them', () => {
    const ft = new FragTable({ size: 1, buckets: 2, maxFragments: 0, mtu: 1500, ttlMs: 200 });
    const firsts = [1, 2, 3, 4].map((id) => frags(4, id)[0]!);
    expect(firsts.map((f) => ft.insertFirst(f, parsed(f), 100 + f[5]!, 0, () => {}))).toEqual([0, 0, 0, -1]);
    expect(ft.stats[FRAG_STAT.BUCKETS_USED]).toBe(2);
    expect(ft.stats[FRAG_STAT.REJECTED]).toBe(1);
    const later = frags(4, 2)[1]!;
    expect(ft.lookupOrStore(later, 0, later.length, parsed(later), 1)).toBe(102);
    ft.sweep(1000);
    expect(ft.stats[FRAG_STAT.BUCKETS_USED]).toBe(0);
    expect(ft.stats[FRAG_STAT.ACTIVE]).toBe(0);
  });

  it('keeps the first verdict for a repeated first fragment', () => {
    const ft = new FragTable(opts);
    const [first, second] = frags(4, 12);
    ft.insertFirst(first!, parsed(first!), 101, 0, () => {});
    expect(ft.insertFirst(first!, parsed(first!), 109, 1, () => {})).toBe(0);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 2)).toBe(101);
  });

  it('refuses a fragment longer than the mtu or cut short', () => {
    const ft = new FragTable({ ...opts, mtu: 1000 });
    const [, second] = frags(4, 13);
    expect(ft.lookupOrStore(second!, 0, second!.length, parsed(second!), 0)).toBe(FRAG_DROP);
    const ft2 = new FragTable(opts);
    expect(ft2.lookupOrStore(second!, 0, 0, parsed(second!), 0)).toBe(FRAG_DROP);
  });

  it('writes its counters into a caller’s block (shared memory) in the reference layout', () => {
    const block = new Uint32Array(FRAG_STAT.WORDS);
    new FragTable({ ...opts, ttlMs: 5000 }, block);
    expect(block[FRAG_STAT.SIZE]).toBe(16);
    expect(block[FRAG_STAT.TTL_NANOS_HI]! * 2 ** 32 + block[FRAG_STAT.TTL_NANOS_LO]!).toBe(5000 * 1e6);
    expect(block[FRAG_STAT.MTU]).toBe(1500);
    expect(block[FRAG_STAT.BUCKETS_MAX]).toBe(4);
    expect(block[FRAG_STAT.FRAGS_MAX]).toBe(4);
  });

  it('formats stats as valid JSON, summing the queues’ blocks', () => {
    const a = new FragTable(opts);
    const b = new FragTable(opts);
    const f = frags(4, 1);
    a.insertFirst(f[0]!, parsed(f[0]!), 101, 0, () => {});
    b.lookupOrStore(f[1]!, 0, f[1]!.length, parsed(f[1]!), 0);
    const text = formatFragStats([a.stats, b.stats]);
    const json = JSON.parse(text) as Record<string, number>;
    expect(json).toMatchObject({
      hsize: 32,
      ttlMillis: 200,
      inserts: 2,
      lookups: 2,
      mtu: 1500,
      fragsMax: 8,
      fragsAllocated: 1,
      fragsDiscarded: 0,
    });
    expect(Object.keys(json)).toContain('reAssembled');
    expect(text.split('\n')[1]).toBe('  "hsize":            32,');
  });

  it('validates its options', () => {
    expect(() => new FragTable({ ...opts, size: 0 })).toThrow(/size/);
    expect(() => new FragTable({ ...opts, mtu: 1.5 })).toThrow(/mtu/);
    expect(() => new FragTable(opts, new Uint32Array(3))).toThrow(/stats/);
  });
});
