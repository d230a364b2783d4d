// `--compat=nfqlb`: the option and what it does to --offload (the parse itself is in
// packet.test.ts and test/conformance/nfqlb-packet-vectors.test.ts).
import { describe, expect, it } from 'vitest';
import { parseCompat } from '../../src/nfqlb/compat.js';
import { compatOffload } from '../../src/nfqlb/offload.js';

describe('parseCompat', () => {
  it('takes nfqlb; absent is the correct behaviour', () => {
    expect(parseCompat(undefined)).toBeNull();
    expect(parseCompat('nfqlb')).toBe('nfqlb');
  });

  it.each(['', 'NFQLB', 'nfqlb-1.2.0', 'xdplb'])('refuses %j with one line', (text) => {
    expect(() => parseCompat(text)).toThrow(new RegExp(`^--compat: '${text}' is not one of: nfqlb$`));
  });
});

describe('compatOffload', () => {
  const o = { devs: ['eth2'], vips: ['10.0.0.0', '1000::', '10.0.0.1'] };

  it('offloads only the IPv4 VIPs with --compat=nfqlb', () => {
    expect(compatOffload(o, 'nfqlb')).toEqual({ devs: ['eth2'], vips: ['10.0.0.0', '10.0.0.1'] });
    expect(compatOffload({ devs: ['eth2'], vips: ['1000::'] }, 'nfqlb')).toBeUndefined();
  });

  it('changes nothing without it', () => {
    expect(compatOffload(o, null)).toBe(o);
    expect(compatOffload(undefined, 'nfqlb')).toBeUndefined();
  });
});
