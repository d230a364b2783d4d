import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cidrContains, formatAddress, parseAddress, parseCidr, parseEndpoint, parseIPv4, parseIPv6 } from '../../src/address.js';
import { djb2, HASH_KEY_BYTES, hashTuple } from '../../src/hash.js';

interface Query {
  proto: 'tcp' | 'udp' | 'sctp' | null;
  src: string;
  dst: string;
  hashMode: number;
  expect: { hash: number };
}

const vectors = JSON.parse(readFileSync(new URL('../conformance/nfqlb-vectors.json', import.meta.url), 'utf8')) as {
  scenarios: { name: string; queries: Query[] }[];
};
const queries = vectors.scenarios.flatMap((s) => s.queries.map((q) => ({ scenario: s.name, ...q })));

describe('djb2', () => {
  it('is h = h * 33 + byte from 5381, as a uint32', () => {
    expect(djb2(new Uint8Array(0), 0, 0)).toBe(5381);
    expect(djb2(Uint8Array.of(97), 0, 1)).toBe(5381 * 33 + 97);
    let h = 5381n;
    const bytes = Uint8Array.from({ length: 64 }, (_, i) => (i * 37 + 200) & 0xff);
    for (const b of bytes) h = (h * 33n + BigInt(b)) % 2n ** 32n;
    expect(djb2(bytes, 0, bytes.length)).toBe(Number(h));
  });

  it('hashes only [start, end) and continues from a seed', () => {
    const bytes = Uint8Array.of(1, 2, 3, 4, 5);
    expect(djb2(bytes, 1, 4)).toBe(djb2(Uint8Array.of(2, 3, 4), 0, 3));
    expect(djb2(bytes, 2, 5, djb2(bytes, 0, 2))).toBe(djb2(bytes, 0, 5));
  });

  it('has a 40-byte key', () => {
    expect(HASH_KEY_BYTES).toBe(40);
  });
});

describe('hashTuple against the reference nfqlb vectors', () => {
  it('covers every protocol and both hash modes', () => {
    const kinds = new Set(queries.map((q) => `${q.proto}/${q.hashMode}/${q.src.startsWith('[') ? 6 : 4}`));
    expect(queries.length).toBeGreaterThanOrEqual(200);
    expect(kinds).toEqual(new Set(['udp/1/4', 'null/1/4', 'tcp/0/6', 'sctp/0/6']));
  });

  it.each(queries)('$scenario $proto $src -> $dst mode $hashMode', (q) => {
    expect(hashTuple(q, q.hashMode)).toBe(q.expect.hash);
  });
});

describe('hashTuple', () => {
  const v4 = { src: '10.1.2.3:4567', dst: '10.0.0.1:80' };
  const v6 = { src: '[2000::1]:4567', dst: '[1000::1]:80' };

  it('hashes SCTP on its ports only in hash mode 1, on the whole key in mode 0', () => {
    const ports = Uint8Array.of(4567 >> 8, 4567 & 0xff, 0, 80);
    expect(hashTuple({ proto: 'sctp', ...v6 }, 1)).toBe(djb2(ports, 0, 4));
    expect(hashTuple({ proto: 'sctp', ...v4 }, 1)).toBe(djb2(ports, 0, 4));
    expect(hashTuple({ proto: 'sctp', ...v6 }, 0)).not.toBe(djb2(ports, 0, 4));
  });

  it('gives TCP and UDP the same hash in both modes, and different hashes from each other', () => {
    for (const proto of ['tcp', 'udp'] as const) {
      expect(hashTuple({ proto, ...v4 }, 0)).toBe(hashTuple({ proto, ...v4 }, 1));
    }
    expect(hashTuple({ proto: 'tcp', ...v4 }, 1)).not.toBe(hashTuple({ proto: 'udp', ...v4 }, 1));
  });

  it('hashes the addresses only without a protocol, ports or not', () => {
    const a = hashTuple({ proto: null, ...v4 }, 1);
    expect(hashTuple({ proto: null, src: '10.1.2.3', dst: '10.0.0.1:1' }, 1)).toBe(a);
    expect(hashTuple({ proto: null, src: '[2000::1]', dst: '1000::1' }, 0)).toBe(hashTuple({ proto: null, ...v6 }, 0));
  });

  it('treats IPv4 as ::ffff:a.b.c.d', () => {
    const mapped = { src: '[::ffff:10.1.2.3]:4567', dst: '[::ffff:10.0.0.1]:80' };
    expect(hashTuple({ proto: 'tcp', ...mapped }, 1)).toBe(hashTuple({ proto: 'tcp', ...v4 }, 1));
  });

  it.each([
    [{ proto: 'tcp' as const, src: '10.1.2.3', dst: '10.0.0.1:80' }, /No port in \[10\.1\.2\.3\]/],
    [{ proto: 'tcp' as const, src: '10.1.2.300:1', dst: '10.0.0.1:80' }, /Invalid address \[10\.1\.2\.300:1\]/],
    [{ proto: 'udp' as const, src: '10.1.2.3:65536', dst: '10.0.0.1:80' }, /Invalid port \[65536\]/],
    [{ proto: 'udp' as const, src: '10.1.2.3:-1', dst: '10.0.0.1:80' }, /Invalid port/],
    [{ proto: 'tcp' as const, src: '1000::1:80', dst: '10.0.0.1:80' }, /write IPv6 as \[addr\]:port/],
    [{ proto: 'tcp' as const, src: '[1000::1:80', dst: '10.0.0.1:80' }, /missing '\]'/],
    [{ proto: 'tcp' as const, src: '[1000::g]:80', dst: '10.0.0.1:80' }, /Invalid address/],
    [{ proto: 'sctp' as const, src: 'host:80', dst: '10.0.0.1:80' }, /Invalid address \[host:80\]/],
    [{ proto: 'icmp' as 'tcp', src: '10.1.2.3:1', dst: '10.0.0.1:80' }, /Failed to parse protocol \[icmp\]/],
  ])('rejects %j with one clear line', (t, message) => {
    expect(() => hashTuple(t, 1)).toThrow(message);
    try {
      hashTuple(t, 1);
    } catch (e) {
      expect((e as Error).message).not.toContain('\n');
    }
  });
});

describe('address parsing', () => {
  it.each([
    ['0.0.0.0', [0, 0, 0, 0]],
    ['255.255.255.255', [255, 255, 255, 255]],
    ['10.0.0.1', [10, 0, 0, 1]],
  ])('IPv4 %s', (text, bytes) => {
    expect(Array.from(parseIPv4(text)!)).toEqual(bytes);
  });

  it.each(['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1.2.3.a', ' 1.2.3.4', '1..2.3'])('refuses IPv4 %j', (t) => {
    expect(parseIPv4(t)).toBeNull();
  });

  it.each([
    ['::', '00000000000000000000000000000000'],
    ['::1', '00000000000000000000000000000001'],
    ['1000::', '10000000000000000000000000000000'],
    ['1000::1:192.168.1.2', '100000000000000000000001c0a80102'],
    ['::ffff:10.0.0.1', '00000000000000000000ffff0a000001'],
    ['1:2:3:4:5:6:7:8', '00010002000300040005000600070008'],
    ['1:2:3:4:5:6:7::', '00010002000300040005000600070000'],
    ['FE80::aB:1', `fe80${'0'.repeat(20)}00ab0001`],
  ])('IPv6 %s', (text, hex) => {
    expect(Buffer.from(parseIPv6(text)!).toString('hex')).toBe(hex);
  });

  it.each([
    ':',
    ':::',
    '1:::2',
    '1::2::3',
    '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6:7',
    '12345::',
    '::g',
    '1.2.3.4::',
    '::1.2.3.4:5',
    '1:2:3:4:5:6:7:8::',
  ])('refuses IPv6 %j', (t) => {
    expect(parseIPv6(t)).toBeNull();
  });

  it('parses endpoints with and without ports', () => {
    expect(parseEndpoint('10.0.0.1:80')).toEqual({ address: parseAddress('10.0.0.1'), port: 80 });
    expect(parseEndpoint('[1000::1]:0').port).toBe(0);
    expect(parseEndpoint('[1000::1]', false).port).toBeNull();
    expect(parseEndpoint('1000::1', false).address.family).toBe(6);
    expect(() => parseEndpoint('[1000::1]')).toThrow('No port in [[1000::1]]');
    expect(() => parseEndpoint('[1000::1]x80')).toThrow('No port');
  });

  it('parses CIDRs, clears host bits and matches addresses', () => {
    const net = parseCidr('10.0.0.77/24');
    expect(net.prefixLen).toBe(24);
    expect(Array.from(net.bytes)).toEqual([10, 0, 0, 0]);
    expect(cidrContains(net, Uint8Array.of(10, 0, 0, 255), 0, 4)).toBe(true);
    expect(cidrContains(net, Uint8Array.of(10, 0, 1, 0), 0, 4)).toBe(false);
    const odd = parseCidr('1000::1:0/113');
    expect(cidrContains(odd, parseIPv6('1000::1:7fff')!, 0, 16)).toBe(true);
    expect(cidrContains(odd, parseIPv6('1000::1:8000')!, 0, 16)).toBe(false);
    expect(cidrContains(odd, Uint8Array.of(16, 0, 0, 0), 0, 4)).toBe(false);
    expect(parseCidr('1000::5').prefixLen).toBe(128);
    expect(cidrContains(parseCidr('0.0.0.0/0'), Uint8Array.of(1, 2, 3, 4), 0, 4)).toBe(true);
    expect(() => parseCidr('10.0.0.0/33')).toThrow('Invalid prefix length [10.0.0.0/33]');
    expect(() => parseCidr('10.0.0.0/')).toThrow('Invalid prefix length');
  });

  it.each([
    '::',
    '::1',
    '1000::',
    '1000::1:c0a8:102',
    '2001:db8::1:0:0:1',
    '1:2:3:4:5:6:7:8',
    '1:0:2::',
    '::ffff:10.0.0.1',
    'fe80:0:0:1::1',
    '1::2:0:0:3:4',
  ])('formats IPv6 %s back to itself (RFC 5952)', (text) => {
    expect(formatAddress(parseIPv6(text)!, 0, 16)).toBe(text);
  });

  it('formats IPv4 at an offset', () => {
    expect(formatAddress(Uint8Array.of(9, 10, 0, 0, 1), 1, 4)).toBe('10.0.0.1');
  });
});
