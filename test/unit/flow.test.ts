// Flows: validation, priority order, matching (protocols, CIDRs, ports, byte matches,
// promiscuous ping, UDP-encapsulated SCTP), listing, and the flow channel's request handling.
import { describe, expect, it } from 'vitest';
import { FlowServer, parseRequest, specOfRequest } from '../../src/nfqlb/flow-server.js';
import { Flow, FlowError, FlowSelector, FlowSet, type FlowSpec, formatMatch, parseMatch } from '../../src/nfqlb/flow-table.js';
import { PacketInfo, parsePacket } from '../../src/packet.js';
import { TargetTable } from '../../src/target-table.js';
import { ipv4, ipv6 } from '../fixtures/packet-builder.js';

function parsed(pkt: Uint8Array, encap = 0): PacketInfo {
  const p = new PacketInfo();
  parsePacket(pkt, 0, pkt.length, p, encap);
  return p;
}

function matches(spec: Partial<FlowSpec>, pkt: Uint8Array, ping = false): boolean {
  const f = new Flow({ name: 'f', target: 't', priority: 0, ...spec });
  return f.matches(pkt, parsed(pkt), ping);
}

const tcp4 = (dport = 80, sport = 1234, src = '50.0.0.1', dst = '10.0.0.1') => ipv4({ src, dst }).tcp({ sport, dport }).build();
const udp6 = (dport = 53, src = '2000::1', dst = '1000::1') => ipv6({ src, dst }).udp({ sport: 999, dport }).build();

describe('match statements', () => {
  it('parses the reference syntax and prints it back', () => {
    expect(parseMatch('tcp[2:2] = 5001')).toEqual({ proto: 6, offset: 2, bytes: 2, mask: 0, value: 5001 });
    expect(parseMatch('udp[0:4] & 0x0000ffff = 5001')).toEqual({ proto: 17, offset: 0, bytes: 4, mask: 0xffff, value: 5001 });
    expect(parseMatch('sctp[8:4]=0x10')).toMatchObject({ proto: 132, offset: 8, bytes: 4, value: 16 });
    expect(formatMatch(parseMatch('udp[0:4] & 0x0000ffff = 5001'))).toBe('udp[0:4]&0xffff=0x1389');
    expect(formatMatch(parseMatch('tcp[13:1] = 2'))).toBe('tcp[13:1]=0x2');
  });

  it.each([
    ['tcp[2:3] = 1', /invalid match/],
    ['tcp[19:2] = 1', /out of bounds/],
    ['udp[8:1] = 1', /out of bounds/],
    ['icmp[0:1] = 8', /invalid match/],
    ['tcp[2:1] = 256', /wider/],
    ['tcp[2:2] & 0x10000 = 1', /wider/],
    ['tcp[2:2] == 1', /invalid match/],
  ])('refuses %s', (text, err) => {
    expect(() => parseMatch(text)).toThrow(err);
  });
});

describe('Flow', () => {
  it('matches everything when nothing is given', () => {
    expect(matches({}, tcp4())).toBe(true);
    expect(matches({}, udp6())).toBe(true);
    expect(matches({}, ipv4({ src: '1.1.1.1', dst: '2.2.2.2' }).icmp(8, 0, { id: 1 }).build())).toBe(true);
  });

  it('selects by protocol, ports, CIDRs (IPv4 in the ::ffff: space)', () => {
    expect(matches({ protocols: ['tcp'] }, tcp4())).toBe(true);
    expect(matches({ protocols: ['UDP', 'sctp'] }, tcp4())).toBe(false);
    expect(matches({ protocols: ['tcp'], dports: '80,443' }, tcp4(443))).toBe(true);
    expect(matches({ protocols: ['tcp'], dports: '1000-2000' }, tcp4(443))).toBe(false);
    expect(matches({ protocols: ['tcp'], sports: '1000-2000' }, tcp4(80, 1234))).toBe(true);
    expect(matches({ dsts: ['10.0.0.0/24'] }, tcp4())).toBe(true);
    expect(matches({ dsts: ['10.0.1.0/24'] }, tcp4())).toBe(false);
    expect(matches({ srcs: ['50.0.0.0/16', '2000::/112'] }, udp6())).toBe(true);
    expect(matches({ dsts: ['1000::/127'] }, udp6())).toBe(true);
    expect(matches({ dsts: ['1000::2/128'] }, udp6())).toBe(false);
    // ::/0 covers ::ffff:0:0/96, so it takes IPv4 too (as in the reference); 0.0.0.0/0 only IPv4.
    expect(matches({ dsts: ['::/0'] }, tcp4())).toBe(true);
    expect(matches({ dsts: ['0.0.0.0/0'] }, udp6())).toBe(false);
  });

  it('applies byte matches to their own protocol only', () => {
    const pkt = tcp4(5001);
    expect(matches({ match: ['tcp[2:2] = 5001'] }, pkt)).toBe(true);
    expect(matches({ match: ['tcp[2:2] = 5002'] }, pkt)).toBe(false);
    expect(matches({ match: ['tcp[0:4] & 0xffff = 5001'] }, pkt)).toBe(true);
    expect(matches({ match: ['tcp[13:1] = 2'] }, pkt)).toBe(true); // SYN
    expect(matches({ match: ['udp[2:2] = 1'] }, pkt)).toBe(true);
    expect(matches({ match: ['tcp[2:2] = 5001', 'tcp[0:2] = 1'] }, pkt)).toBe(false);
  });

  it('reads byte matches past IPv6 extension headers and in a first fragment', () => {
    const pkt = ipv6({ src: '2000::1', dst: '1000::1' })
      .ext('hop')
      .ext('frag', { mf: true, id: 5 })
      .udp({ sport: 7, dport: 5001 })
      .payload(100)
      .build();
    expect(matches({ match: ['udp[2:2] = 5001'] }, pkt)).toBe(true);
    expect(matches({ match: ['udp[2:2] = 5000'] }, pkt)).toBe(false);
  });

  it('lets an ICMP error match the flow of the connection it quotes', () => {
    const inner = ipv4({ src: '10.0.0.1', dst: '50.0.0.1' }).tcp({ sport: 80, dport: 1234 }).build();
    const err = ipv4({ src: '192.168.2.1', dst: '10.0.0.1' }).icmp(3, 4, { rest: 1300 }).inner(inner).build();
    expect(matches({ protocols: ['tcp'], dports: '80', srcs: ['50.0.0.0/24'] }, err)).toBe(true);
  });

  it('matches echo requests on addresses only with promiscuous ping', () => {
    const ping = ipv6({ src: '2000::1', dst: '1000::1' }).icmp(128, 0, { id: 9 }).build();
    const flow = { protocols: ['tcp'], dports: '80', dsts: ['1000::/120'] };
    expect(matches(flow, ping, false)).toBe(false);
    expect(matches(flow, ping, true)).toBe(true);
    expect(matches({ ...flow, dsts: ['1000::100/120'] }, ping, true)).toBe(false);
  });

  it.each([
    [{ name: 'a b' }, /invalid name/],
    [{ name: '' }, /no name/],
    [{ priority: -1 }, /priority/],
    [{ protocols: ['icmp'] }, /protocol/],
    [{ dports: '80' }, /ports specified without protocols/],
    [{ protocols: ['tcp'], dports: '0' }, /port range/],
    [{ protocols: ['tcp'], dports: '9-8' }, /port range/],
    [{ dsts: ['10.0.0.0'] }, /CIDR/],
    [{ dsts: ['10.0.0.0/33'] }, /CIDR/],
    [{ protocols: ['tcp'], udpencap: 9899 }, /only sctp/],
    [{ match: ['tcp[30:2] = 1'] }, /out of bounds/],
  ] as [Partial<FlowSpec>, RegExp][])('refuses %j', (spec, err) => {
    expect(() => new Flow({ name: 'f', target: 't', priority: 0, ...spec })).toThrow(err);
  });
});

function table(fw: number): TargetTable {
  const t = TargetTable.initialize(new ArrayBuffer(TargetTable.byteLength(5, 2)), 5, 2, 0);
  t.activate([fw]);
  return t;
}

describe('FlowSet and FlowSelector', () => {
  const tables = new Map([
    ['tcp-lb', table(101)],
    ['any-lb', table(102)],
    ['sctp-lb', table(103)],
  ]);
  const selector = () => new FlowSelector({ promiscuousPing: false, openTable: (n) => tables.get(n)! });

  it('matches flows in priority order and lists them so', () => {
    const set = new FlowSet();
    set.set({ name: 'any', target: 'any-lb', priority: 0 });
    set.set({ name: 'web', target: 'tcp-lb', priority: 10, protocols: ['tcp'], dports: '80' });
    expect(set.all().map((f) => f.name)).toEqual(['web', 'any']);
    const sel = selector();
    sel.setFlows(set.specs());
    const pkt = tcp4(80);
    expect(sel.select(pkt, 0, pkt.length, parsed(pkt))).toBe(tables.get('tcp-lb'));
    expect(sel.addressOnly).toBe(false);
    const other = tcp4(81);
    expect(sel.select(other, 0, other.length, parsed(other))).toBe(tables.get('any-lb'));
    // A flow without protocols hashes on addresses only.
    expect(sel.addressOnly).toBe(true);
  });

  it('replaces a flow of the same name and deletes it', () => {
    const set = new FlowSet();
    set.set({ name: 'x', target: 'tcp-lb', priority: 1 });
    set.set({ name: 'x', target: 'any-lb', priority: 2, protocols: ['udp'] });
    expect(set.all()).toHaveLength(1);
    expect(set.find('x')?.target).toBe('any-lb');
    expect(set.delete('x')).toBe(true);
    expect(set.delete('x')).toBe(false);
  });

  it('re-reads UDP to an --udpencap port as SCTP and matches the SCTP flow', () => {
    const set = new FlowSet();
    set.set({ name: 'sctp', target: 'sctp-lb', priority: 5, protocols: ['sctp'], dports: '7000', udpencap: 9899 });
    expect(set.all().map((f) => f.name)).toEqual(['sctp', '#sctp']);
    const sel = selector();
    sel.setFlows(set.specs());
    const inner = new Uint8Array(12 + 16);
    inner[0] = 0x1b;
    inner[1] = 0x58; // sport 7000
    inner[2] = 0x1b;
    inner[3] = 0x58; // dport 7000
    const pkt = ipv4({ src: '50.0.0.1', dst: '10.0.0.1' }).udp({ sport: 9899, dport: 9899 }).payload(inner).build();
    const p = parsed(pkt);
    expect(sel.select(pkt, 0, pkt.length, p)).toBe(tables.get('sctp-lb'));
    expect(p.proto).toBe(132);
    expect(p.sctpEncap).toBe(true);
    expect(p.dport).toBe(7000);
    const plainUdp = ipv4({ src: '50.0.0.1', dst: '10.0.0.1' }).udp({ sport: 1, dport: 9898 }).build();
    expect(sel.select(plainUdp, 0, plainUdp.length, parsed(plainUdp))).toBeNull();
    expect(set.delete('sctp')).toBe(true);
    expect(set.all()).toHaveLength(0);
  });

  it('refuses # names and keeps the set unchanged on bad input', () => {
    const set = new FlowSet();
    set.set({ name: 'ok', target: 't', priority: 0 });
    expect(() => set.set({ name: '#x', target: 't', priority: 0 })).toThrow(FlowError);
    expect(() => set.set({ name: 'ok', target: 't', priority: 0, protocols: ['bogus'] })).toThrow(FlowError);
    expect(set.all().map((f) => f.name)).toEqual(['ok']);
  });

  it('counts matches per flow slot', () => {
    const set = new FlowSet();
    set.set({ name: 'any', target: 'any-lb', priority: 0 });
    const counters = new Float64Array(1024);
    const sel = new FlowSelector({ promiscuousPing: false, counters, openTable: (n) => tables.get(n)! });
    sel.setFlows(set.specs());
    const pkt = tcp4();
    for (let i = 0; i < 3; i++) sel.select(pkt, 0, pkt.length, parsed(pkt));
    expect(counters[set.find('any')!.slot]).toBe(3);
  });

  it('disables a flow whose table cannot be opened', () => {
    const set = new FlowSet();
    set.set({ name: 'gone', target: 'missing', priority: 1 });
    const sel = new FlowSelector({
      promiscuousPing: false,
      openTable: () => {
        throw new Error('no shm');
      },
    });
    sel.setFlows(set.specs());
    const pkt = tcp4();
    expect(sel.select(pkt, 0, pkt.length, parsed(pkt))).toBeNull();
  });
});

describe('flow channel requests', () => {
  it('parses the reference wire form (first value wins, lists split on commas)', () => {
    const req = parseRequest(
      'action:set\nname:web\nname:other\ntarget:t\npriority:7\nprotocols:tcp,udp\n' +
        'dsts:10.0.0.0/24,1000::/120\ndports:80,8080\nmatch:tcp[2:2] = 80,tcp[13:1]=2\nudpencap:0\neoc:\n',
    )!;
    expect(req.get('name')).toBe('web');
    expect(specOfRequest(req, true)).toEqual({
      name: 'web',
      target: 't',
      priority: 7,
      protocols: ['tcp', 'udp'],
      dsts: ['10.0.0.0/24', '1000::/120'],
      dports: '80,8080',
      match: ['tcp[2:2] = 80', 'tcp[13:1]=2'],
    });
    expect(parseRequest('action:set\nname:x\n')).toBeNull(); // no eoc yet
    expect(parseRequest('garbage\neoc:\n')).toBeNull();
  });
});

describe('FlowServer.handle', () => {
  // handle() needs no socket; targets must exist as shm, so use a name that cannot.
  const server = (FlowServer as unknown as { prototype: FlowServer }).prototype;
  it('answers unknown actions and a set with a missing target', () => {
    const fake = Object.create(server) as FlowServer;
    Object.assign(fake, {
      flows: new FlowSet(),
      traceFlows: new FlowSet(),
      tracer: null,
      apply: () => {},
      counters: new Float64Array(1024),
    });
    expect(fake.handle(new Map([['action', 'bogus']]))).toBe('FAIL: action unknown\0');
    expect(fake.handle(new Map())).toBe('FAIL: no action\0');
    expect(
      fake.handle(
        new Map([
          ['action', 'set'],
          ['name', 'x'],
          ['target', 'tlbf-no-such-shm'],
        ]),
      ),
    ).toBe("FAIL: Couldn't create load-balancer\0");
    expect(
      fake.handle(
        new Map([
          ['action', 'trace-set'],
          ['name', 'bad name'],
        ]),
      ),
    ).toMatch(/^FAIL: invalid name/);
    expect(
      fake.handle(
        new Map([
          ['action', 'trace-set'],
          ['name', 't1'],
          ['protocols', 'udp'],
        ]),
      ),
    ).toBe('OK\0');
    expect(JSON.parse(fake.handle(new Map([['action', 'trace-list-names']])))).toEqual(['t1']);
    expect(fake.handle(new Map([['action', 'delete']]))).toBe('FAIL: no name\0');
  });
});
