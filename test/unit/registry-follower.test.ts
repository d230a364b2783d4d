// The follower's pure parts (the table a desired set asks for, the table hash, the warning
// limiter) and RegistryFollower itself over a fake registry and a real /dev/shm table: what it
// applies, what it leaves alone while the registry fails, and what it counts.
import { afterEach, describe, expect, it } from 'vitest';
import type { Registry } from '../../src/registry/etcd.js';
import { RegistryError } from '../../src/registry/etcd.js';
import { type Publication, RegistryFollower, tableHash, tableSlots, WarnLimiter } from '../../src/registry/follower.js';
import { type DesiredSet, desiredSet, type RawEntry, ServiceKeys } from '../../src/registry/model.js';
import { NFQLB_TABLE, TargetStore } from '../../src/target-store.js';
import { waitFor } from '../wait.js';

const keys = new ServiceKeys('/tslb', 'web');
const NAME = `tfol-unit-${process.pid}`;

let revision = 10;
function entry(key: string, value: unknown, createRevision = revision): RawEntry {
  return {
    key: `/tslb/web/${key}`,
    value: typeof value === 'string' ? value : JSON.stringify(value),
    createRevision,
    modRevision: revision,
    lease: '0',
  };
}

function desired(targets: [slot: number, fwmark: number, state?: string][]): DesiredSet {
  const entries = [
    entry('config', { M: 97, N: 8 }),
    ...targets.map(([slot, fwmark, state]) => entry(`targets/${slot}`, { fwmark, state: state ?? 'active' })),
  ];
  return desiredSet(keys, { revision, entries });
}

describe('tableSlots', () => {
  it('publishes the active targets in their slots; draining ones and those held down drain', () => {
    const d = desired([
      [0, 100],
      [1, 101, 'draining'],
      [3, 103],
      [5, 105],
    ]);
    expect(tableSlots(d, new Set())).toEqual({
      slots: new Map([
        [0, 100],
        [3, 103],
        [5, 105],
      ]),
      draining: new Set([101]),
    });
    // Held down: a slot with a target, a draining one, and one with none.
    expect(tableSlots(d, new Set([3, 1, 7]))).toEqual({
      slots: new Map([
        [0, 100],
        [5, 105],
      ]),
      draining: new Set([101, 103]),
    });
  });
});

describe('tableHash', () => {
  it('is 32-bit FNV-1a of the int32 entries, little-endian', () => {
    expect(tableHash(new Int32Array([]))).toBe(0x811c9dc5);
    expect(tableHash(new Int32Array([0]))).toBe(1268118805);
    expect(tableHash(new Int32Array([-1, 1]))).toBe(882072240);
  });

  it('is equal for equal tables and tells a moved entry', () => {
    const a = Int32Array.from({ length: 997 }, (_, i) => i % 7);
    const b = a.slice();
    expect(tableHash(b)).toBe(tableHash(a));
    [b[10], b[11]] = [b[11]!, b[10]!];
    expect(tableHash(b)).not.toBe(tableHash(a));
  });
});

describe('WarnLimiter', () => {
  it('lets one warning per key through per interval, and at most `burst` in all', () => {
    const w = new WarnLimiter(1000, 3);
    expect(['a', 'a', 'b', 'c', 'd'].map((k) => w.allow(k, 0))).toEqual([true, false, true, true, false]);
    expect(w.allow('a', 999)).toBe(false);
    expect(['a', 'd', 'a'].map((k) => w.allow(k, 1000))).toEqual([true, true, false]);
  });
});

/** A registry whose reads return `state` (or throw it) and whose watch the test drives. */
class FakeRegistry {
  static state: DesiredSet | Error = new RegistryError('EUNREACHABLE', 'etcd: unreachable');
  static connects = 0;
  static watchers: { onChange: (r: number) => void; onError: (e: Error) => void; from: number }[] = [];
  closed = false;

  static connect(): Promise<Registry> {
    FakeRegistry.connects++;
    return Promise.resolve(new FakeRegistry() as unknown as Registry);
  }

  async read(): Promise<DesiredSet> {
    const s = FakeRegistry.state;
    if (s instanceof Error) throw s;
    return s;
  }

  async watch(_k: ServiceKeys, from: number, onChange: (r: number) => void, onError: (e: Error) => void) {
    FakeRegistry.watchers.push({ onChange, onError, from });
    return async () => {};
  }

  close(): void {
    this.closed = true;
  }
}

const ETCD = { endpoints: ['http://127.0.0.1:1'], tls: null, user: null, timeoutMs: 100 };
const followers: RegistryFollower[] = [];

function follower(relistMs = 60_000): { f: RegistryFollower; published: Publication[] } {
  const f = new RegistryFollower({ keys, shm: NAME, etcd: ETCD, retryMs: 5, relistMs, connect: FakeRegistry.connect });
  followers.push(f);
  const published: Publication[] = [];
  f.onPublish((p) => published.push(p));
  return { f, published };
}

const active = () => [...TargetStore.open(NFQLB_TABLE, NAME).targets.active];
async function value(f: RegistryFollower, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const m = await f.metrics.getSingleMetric(name)!.get();
  return m.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l) && !('le' in v.labels))?.value;
}

/** The histogram's _count or _sum. */
async function apply(f: RegistryFollower, part: 'count' | 'sum'): Promise<number | undefined> {
  const values = (await f.metrics.getSingleMetric('nfqlb_registry_apply_seconds')!.get()).values as {
    metricName?: string;
    value: number;
  }[];
  return values.find((v) => v.metricName === `nfqlb_registry_apply_seconds_${part}`)?.value;
}

afterEach(() => {
  for (const f of followers.splice(0)) f.stop();
  TargetStore.delete(NFQLB_TABLE, NAME);
  FakeRegistry.state = new RegistryError('EUNREACHABLE', 'etcd: unreachable');
  FakeRegistry.watchers = [];
  FakeRegistry.connects = 0;
  revision = 10;
});

describe('RegistryFollower', () => {
  it('leaves the table in place until a read succeeds, then applies it and watches from its revision', async () => {
    const store = TargetStore.create(NFQLB_TABLE, NAME, { M: 97, N: 8, ownFwmark: 7 });
    store.apply(new Map([[2, 500]]));
    const before = tableHash(store.targets.lookup);
    const { f, published } = follower();
    expect(await value(f, 'nfqlb_table_hash', { service: keys.service })).toBe(before);
    await expect(f.start()).rejects.toThrow('etcd: unreachable');
    await waitFor('a few retries', () => FakeRegistry.connects >= 3);
    expect(active().slice(0, 3)).toEqual([-1, -1, 500]);
    expect([f.connected, await value(f, 'nfqlb_registry_connected'), published.length]).toEqual([false, 0, 0]);
    FakeRegistry.state = desired([[0, 100]]);
    await waitFor('the first publication', () => published.length === 1);
    expect(active().slice(0, 3)).toEqual([100, -1, -1]);
    expect(TargetStore.open(NFQLB_TABLE, NAME).targets.ownFwmark).toBe(7);
    // 500 left the table without the registry saying it drains: dead, not draining.
    expect(TargetStore.open(NFQLB_TABLE, NAME).draining()).toEqual([]);
    expect(FakeRegistry.watchers.map((w) => w.from)).toEqual([10]);
    expect([f.connected, f.revision, await value(f, 'nfqlb_registry_connected'), await value(f, 'nfqlb_registry_revision')]).toEqual([
      true,
      10,
      1,
      10,
    ]);
  });

  it('re-reads on a watch event, times changes from their ts, and re-creates the table for a new M or N', async () => {
    const { f, published } = follower();
    FakeRegistry.state = desired([[0, 100]]);
    await f.start();
    revision = 11;
    FakeRegistry.state = desired([
      [0, 100],
      [1, 101, 'draining'],
    ]);
    FakeRegistry.watchers[0]!.onChange(11);
    await waitFor('revision 11', () => published.at(-1)?.revision === 11);
    expect(active().slice(0, 2)).toEqual([100, -1]);
    // Changed at revision 11 (its entry has no ts: not timed); the first read times nothing.
    expect(await apply(f, 'count')).toBe(0);
    revision = 12;
    FakeRegistry.state = desiredSet(keys, {
      revision,
      entries: [entry('config', { M: 101, N: 16 }), entry('targets/9', { fwmark: 109, state: 'active', ts: Date.now() - 5 })],
    });
    FakeRegistry.watchers[0]!.onChange(12);
    await waitFor('revision 12', () => published.at(-1)?.revision === 12);
    expect(TargetStore.open(NFQLB_TABLE, NAME).targets).toMatchObject({ M: 101, N: 16 });
    expect(active()[9]).toBe(109);
    expect(await apply(f, 'count')).toBe(1);
    expect(await apply(f, 'sum')).toBeGreaterThanOrEqual(0.005);
  });

  it('after a watch error reconnects with a fresh client and reads again; the table stays meanwhile', async () => {
    const { f, published } = follower();
    FakeRegistry.state = desired([[0, 100]]);
    await f.start();
    FakeRegistry.state = new RegistryError('EUNREACHABLE', 'etcd: gone');
    FakeRegistry.watchers[0]!.onError(new Error('Connection dropped'));
    await waitFor('a reconnect attempt', () => FakeRegistry.connects >= 3);
    expect(f.problem).toBe('etcd: gone');
    expect(active()[0]).toBe(100);
    revision = 20;
    FakeRegistry.state = desired([
      [0, 100],
      [2, 102],
    ]);
    await waitFor('converged', () => published.at(-1)?.revision === 20);
    expect(active().slice(0, 3)).toEqual([100, -1, 102]);
    expect(FakeRegistry.watchers.at(-1)!.from).toBe(20);
    expect(f.connected).toBe(true);
  });

  it('re-reads periodically; a change the watch did not tell of starts the watch anew', async () => {
    const { f, published } = follower(20);
    FakeRegistry.state = desired([[0, 100]]);
    await f.start();
    await waitFor('a few re-reads', () => published.length >= 3);
    expect(FakeRegistry.watchers).toHaveLength(1);
    revision = 11;
    FakeRegistry.state = desired([[1, 101]]); // the watch stays silent
    await waitFor('revision 11', () => published.at(-1)?.revision === 11);
    expect(active().slice(0, 2)).toEqual([-1, 101]);
    await waitFor('a new watch', () => FakeRegistry.watchers.length === 2);
    expect(FakeRegistry.watchers[1]!.from).toBe(11);
    // The old watch is given up: its late news changes nothing.
    const n = published.length;
    FakeRegistry.watchers[0]!.onError(new Error('late'));
    expect([f.connected, published.length]).toEqual([true, n]);
  });

  it('counts each rejected key once per value, by kind; applies the rest', async () => {
    const { f } = follower();
    const bad = (v: string) =>
      desiredSet(keys, {
        revision,
        entries: [
          entry('config', { M: 97, N: 8 }),
          entry('targets/0', { fwmark: 100, state: 'active' }),
          entry('targets/1', v),
          entry('targets/9', { fwmark: 9, state: 'active' }),
        ],
      });
    FakeRegistry.state = bad('{');
    await f.start();
    expect(active()[0]).toBe(100);
    revision = 11;
    FakeRegistry.state = bad('{'); // the same values again: not counted again
    FakeRegistry.watchers[0]!.onChange(11);
    await waitFor('revision 11', () => f.revision === 11);
    expect(await value(f, 'nfqlb_registry_rejected_total', { reason: 'malformed' })).toBe(1);
    revision = 12;
    FakeRegistry.state = bad('[]');
    FakeRegistry.watchers[0]!.onChange(12);
    await waitFor('revision 12', () => f.revision === 12);
    expect(await value(f, 'nfqlb_registry_rejected_total', { reason: 'malformed' })).toBe(2);
    expect(await value(f, 'nfqlb_registry_rejected_total', { reason: 'slot_range' })).toBe(1);
  });

  it('setDown drains the slots at once, on top of the registry; onPublish tells each publication', async () => {
    const { f, published } = follower();
    f.setDown(new Set([0])); // before the first read: kept for it
    FakeRegistry.state = desired([
      [0, 100],
      [1, 101],
      [2, 102, 'draining'],
    ]);
    await f.start();
    expect(active().slice(0, 3)).toEqual([-1, 101, -1]);
    f.setDown(new Set([1]));
    expect(active().slice(0, 3)).toEqual([100, -1, -1]);
    // 102 was never in this (new) table: no lb can hold flows to it from here.
    expect(TargetStore.open(NFQLB_TABLE, NAME).draining()).toEqual([101]);
    f.setDown(new Set());
    expect(active().slice(0, 3)).toEqual([100, 101, -1]);
    expect(published.map((p) => [p.revision, [...p.down], p.changed])).toEqual([
      [10, [0], true],
      [10, [1], true],
      [10, [], true],
    ]);
    expect(published[2]!.hash).toBe(tableHash(TargetStore.open(NFQLB_TABLE, NAME).targets.lookup));
    expect(f.desired?.targets.map((t) => t.fwmark)).toEqual([100, 101, 102]);
  });
});
