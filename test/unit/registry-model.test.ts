// The registry's pure rules: which keys a follower applies and which it rejects (and why), the
// slot a registrant claims, and the key names. Table-driven, over snapshots as etcd returns them.
import { describe, expect, it } from 'vitest';
import { connectFailure } from '../../src/registry/etcd.js';
import {
  checkConfig,
  checkTarget,
  chooseSlot,
  desiredSet,
  fwmarkIn,
  leaseHex,
  newTarget,
  planClaim,
  type RawEntry,
  ServiceKeys,
  withState,
} from '../../src/registry/model.js';

const keys = new ServiceKeys('/tslb', 'web');
let revision = 0;

/** An entry as etcd would hold it, created at the next revision unless told. */
function entry(key: string, value: unknown, o: Partial<RawEntry> = {}): RawEntry {
  revision++;
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return { key: `/tslb/web/${key}`, value: text, createRevision: revision, modRevision: revision, lease: '0', ...o };
}

const config = (M = 97, N = 8) => entry('config', { M, N });
const target = (slot: number | string, fwmark: unknown, o: Record<string, unknown> = {}, e: Partial<RawEntry> = {}) =>
  entry(`targets/${slot}`, { fwmark, state: 'active', ...o }, e);

describe('ServiceKeys', () => {
  it('names the keys of a service below its own directory', () => {
    expect(keys.config).toBe('/tslb/web/config');
    expect(keys.target(3)).toBe('/tslb/web/targets/3');
    expect(keys.slotOf('/tslb/web/targets/31')).toBe(31);
    expect(new ServiceKeys('/a/b', 'x-1.2_3').dir).toBe('/a/b/x-1.2_3/');
  });

  it.each([
    ['targets/007', null],
    ['targets/-1', null],
    ['targets/1x', null],
    ['targets/', null],
    ['targets/0', 0],
    ['targets/12345678901', null],
  ])('slot of %s is %s', (k, slot) => {
    expect(keys.slotOf(`/tslb/web/${k}`)).toBe(slot);
  });

  it.each([
    ['tslb', 'web', /--prefix/],
    ['/tslb/', 'web', /--prefix/],
    ['/ts lb', 'web', /--prefix/],
    ['/tslb', 'a/b', /--service/],
    ['/tslb', '', /--service/],
    ['/tslb', '.hidden', /--service/],
    ['/tslb', 'x'.repeat(65), /--service/],
  ])('refuses prefix %j with service %j', (prefix, service, message) => {
    expect(() => new ServiceKeys(prefix, service)).toThrow(message);
  });
});

describe('values', () => {
  // config values, then target values (their slot and duplicates are desiredSet's).
  it.each([
    ['config', '{"M":97,"N":8}', { ok: { M: 97, N: 8 } }],
    ['config', '{"M":97,"N":8,"owner":"ops"}', { ok: { M: 97, N: 8 } }],
    ['config', '{"M":100,"N":8}', { reason: 'M 100 is not a prime (nfqlb init would use 97)' }],
    ['config', '{"M":97,"N":98}', { reason: 'N 98 is not an integer 1..M (M=97)' }],
    ['config', '{"M":97,"N":0}', { reason: 'N 0 is not an integer 1..M (M=97)' }],
    ['config', '{"M":"97","N":8}', { reason: 'M "97" is not an integer >= 3' }],
    ['config', '{"M":993997,"N":500}', { reason: 'M=993997, N=500 needs more than 1 GiB of shared memory' }],
    ['config', '[97, 8]', { reason: 'not a JSON object' }],
    ['target', '{"fwmark":101,"state":"active"}', { ok: { fwmark: 101, state: 'active', name: null, ts: null } }],
    [
      'target',
      '{"fwmark":101,"state":"draining","name":"vm-1","ts":5,"zone":"a"}',
      { ok: { fwmark: 101, state: 'draining', name: 'vm-1', ts: 5 } },
    ],
    ['target', '{"fwmark":0,"state":"active"}', { reason: 'fwmark 0 is out of range 1..2147483647' }],
    ['target', '{"fwmark":2147483648,"state":"active"}', { reason: 'fwmark 2147483648 is out of range 1..2147483647' }],
    ['target', '{"fwmark":1.5,"state":"active"}', { reason: 'fwmark 1.5 is out of range 1..2147483647' }],
    ['target', '{"fwmark":"101","state":"active"}', { reason: 'fwmark "101" is out of range 1..2147483647' }],
    ['target', '{"state":"active"}', { reason: 'no fwmark' }],
    ['target', '{"fwmark":101}', { reason: 'state undefined is not "active" or "draining"' }],
    ['target', '{"fwmark":101,"state":"up"}', { reason: 'state "up" is not "active" or "draining"' }],
    ['target', '{"fwmark":101,"state":"active","name":7}', { reason: 'name is not a string' }],
    ['target', '{"fwmark":101,"state":"active","ts":"now"}', { reason: 'ts is not a number (ms since the epoch)' }],
    ['target', 'null', { reason: 'not a JSON object' }],
  ])('%s %s', (kind, value, want) => {
    expect((kind === 'config' ? checkConfig : checkTarget)(value)).toEqual(want);
  });

  it('says why JSON is malformed', () => {
    expect(checkTarget('{"fwmark":')).toMatchObject({ reason: expect.stringMatching(/^malformed JSON \(.+\)$/) });
  });

  it('finds the fwmark of a value that is otherwise invalid', () => {
    expect(fwmarkIn('{"fwmark":101,"state":"up"}')).toBe(101);
    expect(fwmarkIn('{"fwmark":"101"}')).toBeNull();
    expect(fwmarkIn('nope')).toBeNull();
  });

  it('writes new targets and state changes, keeping fields other writers added', () => {
    expect(JSON.parse(newTarget(101, 'vm-1', 7))).toEqual({ fwmark: 101, state: 'active', name: 'vm-1', ts: 7 });
    expect(JSON.parse(newTarget(101, null, 7))).toEqual({ fwmark: 101, state: 'active', ts: 7 });
    expect(JSON.parse(withState('{"fwmark":101,"state":"active","zone":"a","ts":1}', 'draining', 9))).toEqual({
      fwmark: 101,
      state: 'draining',
      zone: 'a',
      ts: 9,
    });
  });

  it('prints lease IDs in hex, as etcdctl does', () => {
    expect(leaseHex('0')).toBeNull();
    expect(leaseHex('7587862070457129000')).toBe('694d8059d241d828');
  });
});

describe('desiredSet', () => {
  it('applies the valid targets by slot and rejects each bad key with its reason', () => {
    const entries = [
      config(97, 8),
      target(3, 103, { name: 'vm-3', ts: 1000 }, { lease: '255' }),
      target(0, 100),
      target(1, 101, { state: 'draining' }),
      entry('targets/2', '{"fwmark": 102,'),
      target(4, 0),
      target(8, 108),
      target('x', 109),
      target(5, 101),
      entry('health/lb-1', 'ignored: not the registry'),
    ];
    const d = desiredSet(keys, { revision: 99, entries });
    expect(d.revision).toBe(99);
    expect(d.config).toEqual({ M: 97, N: 8 });
    expect(d.targets.map(({ slot, fwmark, state, name, ts, lease }) => ({ slot, fwmark, state, name, ts, lease }))).toEqual([
      { slot: 0, fwmark: 100, state: 'active', name: null, ts: null, lease: null },
      { slot: 1, fwmark: 101, state: 'draining', name: null, ts: null, lease: null },
      { slot: 3, fwmark: 103, state: 'active', name: 'vm-3', ts: 1000, lease: 'ff' },
    ]);
    expect(d.rejected.map((r) => [r.key, r.kind, r.reason])).toEqual([
      ['/tslb/web/targets/2', 'malformed', expect.stringMatching(/^malformed JSON/)],
      ['/tslb/web/targets/4', 'fwmark_range', 'fwmark 0 is out of range 1..2147483647'],
      ['/tslb/web/targets/5', 'duplicate_fwmark', 'fwmark 101 is also at slot 1, which had it first'],
      ['/tslb/web/targets/8', 'slot_range', 'slot 8 >= N=8'],
      ['/tslb/web/targets/x', 'slot_range', "slot 'x' is not a decimal number"],
    ]);
    expect(d.rejected[0]!.value).toBe('{"fwmark": 102,');
  });

  it('gives a duplicated fwmark to the key created first, whatever the slot order or read order', () => {
    const late = target(1, 101, {}, { createRevision: 20 });
    const early = target(6, 101, {}, { createRevision: 10 });
    for (const entries of [
      [config(), late, early],
      [early, config(), late],
    ]) {
      const d = desiredSet(keys, { revision: 30, entries });
      expect(d.targets.map((t) => t.slot)).toEqual([6]);
      expect(d.rejected).toEqual([
        {
          key: '/tslb/web/targets/1',
          kind: 'duplicate_fwmark',
          reason: 'fwmark 101 is also at slot 6, which had it first',
          value: late.value,
        },
      ]);
    }
    // Written in one transaction (one create revision): the lower slot keeps it.
    const a = target(4, 7, {}, { createRevision: 40 });
    const b = target(2, 7, {}, { createRevision: 40 });
    expect(desiredSet(keys, { revision: 40, entries: [config(), a, b] }).targets.map((t) => t.slot)).toEqual([2]);
  });

  it('lets an invalid key hold no fwmark against a valid one', () => {
    const d = desiredSet(keys, { revision: 5, entries: [config(), target(0, 101, { state: 'bad' }), target(1, 101)] });
    expect(d.targets.map((t) => t.slot)).toEqual([1]);
  });

  it('applies nothing without a valid config, and says so for every target', () => {
    const none = desiredSet(keys, { revision: 5, entries: [target(0, 100)] });
    expect(none.config).toBeNull();
    expect(none.targets).toEqual([]);
    expect(none.rejected.map((r) => r.reason)).toEqual(['the service has no config (nfqlb registry init)']);
    const bad = desiredSet(keys, { revision: 5, entries: [entry('config', '{"M":97}'), target(0, 100)] });
    expect(bad.rejected.map((r) => [r.key, r.kind, r.reason])).toEqual([
      ['/tslb/web/config', 'bad_config', 'N undefined is not an integer 1..M (M=97)'],
      ['/tslb/web/targets/0', 'no_config', 'the service config is invalid'],
    ]);
  });

  it('shortens a long rejected value', () => {
    const d = desiredSet(keys, { revision: 5, entries: [config(), entry('targets/0', 'x'.repeat(1000))] });
    expect(d.rejected[0]!.value).toBe(`${'x'.repeat(200)}...`);
  });
});

describe('chooseSlot', () => {
  it.each([
    [4, [], undefined, 0],
    [4, [0, 1, 3], undefined, 2],
    [4, [0, 1, 2, 3], undefined, null],
    [4, [1], 1, null],
    [4, [1], 3, 3],
    [4, [], 4, null],
    [1, [], undefined, 0],
  ])('N=%i taken=%j wanted=%j -> %j', (N, taken, wanted, want) => {
    expect(chooseSlot(N, new Set(taken), wanted)).toBe(want);
  });
});

describe('planClaim', () => {
  const draining = (slot: number, fwmark: number) => target(slot, fwmark, { state: 'draining' }, { lease: '77' });
  it('claims a free slot: the wanted one, the preferred one when free, else the lowest', () => {
    const entries = [config(), target(0, 100), target(2, 102)];
    expect(planClaim(keys, 4, entries, 200)).toEqual({ slot: 1, takeOver: null });
    expect(planClaim(keys, 4, entries, 200, undefined, 3)).toEqual({ slot: 3, takeOver: null });
    expect(planClaim(keys, 4, entries, 200, undefined, 2)).toEqual({ slot: 1, takeOver: null });
    expect(planClaim(keys, 4, entries, 200, 3)).toEqual({ slot: 3, takeOver: null });
    expect(planClaim(keys, 4, entries, 200, 2)).toEqual({ refused: 'slot', key: '/tslb/web/targets/2' });
    expect(planClaim(keys, 1, entries, 200)).toEqual({ refused: 'full' });
  });

  it("takes over the fwmark's draining registration, on its slot", () => {
    const d = draining(2, 102);
    const entries = [config(), target(0, 100), d];
    expect(planClaim(keys, 4, entries, 102)).toEqual({ slot: 2, takeOver: d });
    expect(planClaim(keys, 4, entries, 102, 2)).toEqual({ slot: 2, takeOver: d });
    expect(planClaim(keys, 4, entries, 102, undefined, 1)).toEqual({ slot: 2, takeOver: d });
  });

  it('refuses a fwmark registered active, invalid, draining on another slot than --slot, or twice', () => {
    const reg = (slot: number) => `/tslb/web/targets/${slot}`;
    expect(planClaim(keys, 4, [config(), target(1, 101)], 101)).toEqual({ refused: 'fwmark', key: reg(1) });
    expect(planClaim(keys, 4, [config(), target(1, 101, { state: 'up' })], 101)).toEqual({ refused: 'fwmark', key: reg(1) });
    expect(planClaim(keys, 4, [config(), draining(1, 101)], 101, 3)).toEqual({ refused: 'fwmark', key: reg(1) });
    expect(planClaim(keys, 4, [config(), draining(1, 101), target(3, 101)], 101)).toEqual({ refused: 'fwmark', key: reg(1) });
    // A draining key out of the table (slot >= N) is no registration to take over.
    expect(planClaim(keys, 4, [config(), draining(5, 101)], 101)).toEqual({ refused: 'fwmark', key: reg(5) });
  });
});

describe('connectFailure', () => {
  const grpc = (last: string) => `14 UNAVAILABLE: No connection established. Last error: ${last}. Resolution note: `;
  it.each([
    [grpc('Error: connect ECONNREFUSED 127.0.0.1:2999'), 'connect ECONNREFUSED 127.0.0.1:2999'],
    [grpc('null'), 'no connection'],
    [grpc('Failed to connect (2026-12-03T02:20:32.931Z)'), 'Failed to connect'],
    [
      grpc(
        '80ACA90FD67F0000:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:' +
          '../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 42\n (2026-12-03T02:20:32.339Z)',
      ),
      'TLS: sslv3 alert bad certificate: etcd refused the client certificate, or wants one (--etcd_cert)',
    ],
  ])('%s', (message, want) => {
    expect(connectFailure(message)).toBe(want);
  });
});
