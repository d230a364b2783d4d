// The nfqlb fixtures (test/fixtures/nfqlb-fixtures.ts) replayed through the kernel: each packet
// is written into a tun device, passes PREROUTING where iptables queues it to a running
// `nfqlb lb` or `flowlb`, and, marked by our verdict, is forwarded; an observer on a second
// queue in the FORWARD chain reads the fwmark the kernel carries. Stored fragments come back
// through the lb's own tun device (--tun). Same expectations as the unit test; and flowlb without
// --nolb_fwmark drops what no flow matches.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, inNs, ipBatch, removeNs, spawnInNs } from '../../src/lab/netns.js';
import type { TargetTable } from '../../src/target-table.js';
import {
  buildTable,
  expectedFwmark,
  FIXTURE_M,
  type Fixture,
  type FixtureGroup,
  fixtureGroups,
  LB_TIER,
  type LbConfig,
  NOLB_FWMARK,
  TABLES,
  type TableName,
  VIP4,
  VIP6,
} from '../fixtures/nfqlb-fixtures.js';
import { type Daemon, NFQLB, nfqlb, ROOT, requireBuild, startDaemon } from './harness.js';

const NS = 'tfx-fix';
const shmOf = (t: TableName) => `tfx-${t}`;
const LB_SHM = 'tfx-lb';
const FT_SHM = 'tfx-ftfix';
const procs: ChildProcess[] = [];
const tables: Record<TableName, TargetTable> = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') };

// In the namespace: writes each fixture's packets into tun "tfix" and collects the marks the
// observer queue (9) sees, until all that the lb forwarded arrived. A tun write passes PREROUTING
// in the write call: then the fixture's packets are in the lb's queue (2), or dropped by the
// kernel. Once that queue holds no packet waiting for a verdict, the lb decided every one (the
// fragments it re-injects enter the queue before it answers the packet that frees them), and an
// accepted packet is forwarded within its verdict's call, into queue 9: the fixture is done when
// the observer has read every packet queue 9 got. So what the lb wrongly forwards shows up in the
// fixture that sent it, never in the next one.
const REPLAY_JS = `
import { readFileSync } from 'node:fs';
import { NfQueue, DESC, NF_DROP, kernelQueueStats } from '${ROOT}dist/src/nfqueue.js';
import { Tun } from '${ROOT}dist/src/nfqlb/tun.js';
const fixtures = JSON.parse(readFileSync(0, 'utf8'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (what, condition) => {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await sleep(2);
  }
};
const tun = new Tun('tfix');
let seen = [];
let observed = 0;
const q = new NfQueue({ queue: 9, copyRange: 64 });
q.start((count) => {
  for (let i = 0; i < count; i++) {
    seen.push(q.desc[i * DESC.WORDS + DESC.MARK]);
    q.verdicts[2 * i] = NF_DROP;
    q.verdicts[2 * i + 1] = -1;
  }
  observed += count;
});
const base = kernelQueueStats(9).idSequence;
const out = [];
for (const packets of fixtures) {
  seen = [];
  for (const p of packets) { const b = Buffer.from(p, 'base64'); tun.write(b, 0, b.length); }
  await until('the lb to decide every packet', () => kernelQueueStats(2).queued === 0);
  const forwarded = kernelQueueStats(9).idSequence - base;
  await until('the observer to read every forwarded packet', () => observed === forwarded);
  out.push(seen);
}
q.stop();
console.log(JSON.stringify(out));
process.exit(0);`;

function startLb(config: LbConfig): Promise<Daemon> {
  const args = config.mode === 'lb' ? ['lb', `--tshm=${shmOf('main')}`] : ['flowlb'];
  args.push('--tun=nfqlb0', `--ft_shm=${FT_SHM}`, `--hash_mode=${config.hashMode}`);
  if (config.sctpEncap !== undefined) args.push(`--sctp_encap=${config.sctpEncap}`);
  if (config.lbTier) args.push(`--lbshm=${LB_SHM}`);
  if (config.nolbFwmark !== undefined) args.push(`--nolb_fwmark=${config.nolbFwmark}`);
  if (config.promiscuousPing) args.push('--promiscuous_ping');
  const lb = spawnInNs(NS, ['node', NFQLB, ...args]);
  procs.push(lb);
  return startDaemon(lb);
}

beforeAll(() => {
  requireBuild();
  removeNs(NS);
  addNs(NS);
  inNs(NS, [
    'sysctl',
    '-qw',
    'net.ipv4.ip_forward=1',
    'net.ipv6.conf.all.forwarding=1',
    'net.ipv4.conf.all.rp_filter=0',
    'net.ipv4.conf.default.rp_filter=0',
    'net.ipv6.conf.all.accept_dad=0',
    'net.ipv6.conf.default.accept_dad=0',
  ]);
  // Marked packets leave through a veth towards a made-up neighbour (its peer drops them as
  // addressed to another host), after the observer saw them.
  ipBatch(NS, [
    'tuntap add dev tfix mode tun',
    'tuntap add dev nfqlb0 mode tun',
    'link set tfix up',
    'link set nfqlb0 up',
    'link add sink0 type veth peer name sink1',
    'link set sink0 up',
    'link set sink1 up',
    'addr add 10.99.0.1/24 dev sink0',
    'addr add fd00::1/64 dev sink0 nodad',
    'neigh add 10.99.0.2 lladdr 02:00:00:00:00:02 dev sink0 nud permanent',
    'neigh add fd00::2 lladdr 02:00:00:00:00:02 dev sink0 nud permanent',
    `route add ${VIP4}/24 via 10.99.0.2`,
    `route add ${VIP6}/120 via fd00::2`,
  ]);
  for (const [cmd, vip] of [
    ['iptables', `${VIP4}/24`],
    ['ip6tables', `${VIP6}/120`],
  ] as const) {
    inNs(NS, [cmd, '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    inNs(NS, [cmd, '-t', 'mangle', '-A', 'PREROUTING', '-d', vip, '-j', 'NFQUEUE', '--queue-num', '2']);
    inNs(NS, [cmd, '-A', 'FORWARD', '-o', 'sink0', '-j', 'NFQUEUE', '--queue-num', '9']);
  }
  for (const t of Object.keys(TABLES) as TableName[]) {
    nfqlb('init', `--shm=${shmOf(t)}`, `--M=${FIXTURE_M}`, `--N=${FIXTURE_M}`);
    nfqlb('activate', `--shm=${shmOf(t)}`, ...Array.from({ length: FIXTURE_M }, (_, i) => String(TABLES[t] + i)));
  }
  nfqlb('init', `--shm=${LB_SHM}`, `--M=${LB_TIER.M}`, '--N=2', `--ownfw=${LB_TIER.own}`);
  nfqlb('activate', `--shm=${LB_SHM}`, String(LB_TIER.own), String(LB_TIER.other));
});

afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  removeNs(NS);
  for (const shm of [...(Object.keys(TABLES) as TableName[]).map(shmOf), LB_SHM, FT_SHM]) {
    try {
      nfqlb('delete', `--shm=${shm}`);
    } catch {
      /* never created */
    }
  }
});

// flowlb's group again without --nolb_fwmark: the packets no flow matches are dropped, among
// packets that are forwarded.
const flowlb = fixtureGroups().find((g) => g.name === 'flowlb')!;
const nolbToDrop = (f: Fixture): Fixture => ({
  ...f,
  expect: f.expect.map((e) => (typeof e === 'object' && 'fwmark' in e && e.fwmark === NOLB_FWMARK ? 'drop' : e)),
});
const dropGroup: FixtureGroup = {
  name: 'flowlb without --nolb_fwmark',
  config: { ...flowlb.config, nolbFwmark: undefined },
  fixtures: flowlb.fixtures.map(nolbToDrop),
};

it('has fixtures that the lb must drop, replayed through the kernel', () => {
  expect(dropGroup.fixtures.filter((f) => f.kernel && f.expect.includes('drop')).length).toBeGreaterThan(0);
});

describe.each([...fixtureGroups(), dropGroup].map((g) => [g.name, g] as const))('nfqlb %s through the kernel', (_name, group) => {
  it('gives every replayable fixture packet its expected fwmark', async () => {
    const lb = await startLb(group.config);
    try {
      for (const f of group.config.flows ?? []) {
        const args = ['flow-set', `--name=${f.name}`, `--target=${shmOf(f.target as TableName)}`, `--prio=${f.priority}`];
        if (f.protocols) args.push(`--protocols=${f.protocols.join(',')}`);
        if (f.dsts) args.push(`--dsts=${f.dsts.join(',')}`);
        if (f.srcs) args.push(`--srcs=${f.srcs.join(',')}`);
        if (f.dports) args.push(`--dports=${f.dports}`);
        if (f.match) args.push(`--match=${f.match.join(',')}`);
        if (f.udpencap) args.push(`--udpencap=${f.udpencap}`);
        expect(inNs(NS, ['node', NFQLB, ...args])).toBe('OK\n');
      }
      const fixtures = group.fixtures.filter((f) => f.kernel);
      const expected = fixtures.map((f) => f.expect.filter((e) => e !== 'drop').map((e) => expectedFwmark(e, tables)));
      const input = fixtures.map((f) => f.packets.map((p) => Buffer.from(p).toString('base64')));
      const r = spawnSync('ip', ['netns', 'exec', NS, 'node', '--input-type=module', '-e', REPLAY_JS], {
        input: JSON.stringify(input),
        encoding: 'utf8',
      });
      if (r.status !== 0) throw new Error(`replay failed: ${r.stderr}`);
      const seen = JSON.parse(r.stdout) as number[][];
      fixtures.forEach((f, i) => {
        // Re-injected fragments arrive after the others: compare as sets with counts.
        expect([...seen[i]!].sort(), f.description).toEqual([...expected[i]!].sort());
      });
    } finally {
      await lb.stop();
    }
  });
});
