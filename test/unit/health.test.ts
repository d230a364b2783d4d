// The health checker's decisions, without probes: HAProxy-style rise/fall counters, what is taken
// out (fail open, warm-up), the tier's majority, and the probe and option parsing.
import { describe, expect, it } from 'vitest';
import { healthCommands, healthOptions } from '../../src/cli/health.js';
import { parseOptions } from '../../src/cli/options.js';
import { parseProbeSpec, probeRequest } from '../../src/health/probe.js';
import { type HealthState, recordRound, TargetHealth, takenOut } from '../../src/health/state.js';
import { readViews, tierVerdict, viewValue } from '../../src/health/tier.js';

/** The state after each of `results` (true: the probe passed). */
function states(results: boolean[], rise = 2, fall = 3): HealthState[] {
  const h = new TargetHealth({ rise, fall });
  return results.map((ok) => {
    h.record(ok);
    return h.state;
  });
}

describe('TargetHealth', () => {
  it('settles an unknown target by its first probe, either way', () => {
    expect(new TargetHealth({ rise: 2, fall: 3 }).state).toBe('unknown');
    expect(states([true])).toEqual(['up']);
    expect(states([false])).toEqual(['down']);
  });

  it('goes down after fall failures in a row, and a pass in between starts the count again', () => {
    expect(states([true, false, false, false])).toEqual(['up', 'up', 'up', 'down']);
    expect(states([true, false, false, true, false, false, false])).toEqual(['up', 'up', 'up', 'up', 'up', 'up', 'down']);
  });

  it('comes up after rise passes in a row, and a failure in between starts the count again', () => {
    expect(states([false, true, true])).toEqual(['down', 'down', 'up']);
    expect(states([false, true, false, true, true])).toEqual(['down', 'down', 'down', 'down', 'up']);
  });

  it('reports only the changes', () => {
    const h = new TargetHealth({ rise: 1, fall: 1 });
    expect([true, true, false, false, true].map((ok) => h.record(ok))).toEqual(['up', null, 'down', null, 'up']);
  });
});

describe('recordRound', () => {
  /** Targets 1..n, each up after a first good probe. */
  const upTargets = (n: number) => {
    const targets = new Map(Array.from({ length: n }, (_, k) => [k + 1, new TargetHealth({ rise: 2, fall: 3 })] as const));
    recordRound(targets, new Map([...targets.keys()].map((fw) => [fw, true])));
    return targets;
  };
  /** Records a round in which the targets in `failed` fail and the others pass; answers the changes. */
  const round = (targets: Map<number, TargetHealth>, failed: number[]) =>
    recordRound(targets, new Map([...targets.keys()].map((fw) => [fw, !failed.includes(fw)])));

  it('says which targets changed, and an up target whose last probe failed is failing', () => {
    const targets = upTargets(3);
    expect(round(targets, [1])).toEqual(new Map());
    expect(targets.get(1)!.failing).toBe(true);
    expect(targets.get(2)!.failing).toBe(false);
    round(targets, [1]);
    expect(round(targets, [1])).toEqual(new Map([[1, 'down']]));
    expect(targets.get(1)!.failing).toBe(false);
  });

  it('holds up targets that fall while every other is failing, until all fall together', () => {
    const targets = upTargets(4);
    // Servers 1 and 2 stopped a round before 3 and 4.
    round(targets, [1, 2]);
    round(targets, [1, 2, 3, 4]);
    expect(round(targets, [1, 2, 3, 4])).toEqual(new Map());
    expect([...targets.values()].map((h) => h.state)).toEqual(['up', 'up', 'up', 'up']);
    expect(round(targets, [1, 2, 3, 4])).toEqual(
      new Map([
        [1, 'down'],
        [2, 'down'],
        [3, 'down'],
        [4, 'down'],
      ]),
    );
  });

  it('lets a held target fall at its next failed probe once another target passes', () => {
    const targets = upTargets(3);
    round(targets, [1]);
    round(targets, [1, 2, 3]);
    expect(round(targets, [1, 2, 3])).toEqual(new Map());
    expect(round(targets, [1])).toEqual(new Map([[1, 'down']]));
  });

  it('takes a fall as it comes when another target passes, or the others are down already', () => {
    const targets = upTargets(3);
    round(targets, [1, 2]);
    round(targets, [1, 2]);
    expect(round(targets, [1, 2])).toEqual(
      new Map([
        [1, 'down'],
        [2, 'down'],
      ]),
    );
    round(targets, [1, 2, 3]);
    round(targets, [1, 2, 3]);
    expect(round(targets, [1, 2, 3])).toEqual(new Map([[3, 'down']]));
  });

  it('settles a new target by its first probe, whatever the others do', () => {
    const targets = upTargets(2);
    round(targets, [1, 2]);
    targets.set(3, new TargetHealth({ rise: 2, fall: 3 }));
    expect(recordRound(targets, new Map([[3, false]]))).toEqual(new Map([[3, 'down']]));
  });
});

describe('takenOut', () => {
  const targets = new Set([101, 102, 103]);

  it('takes out the down targets (only those still targets)', () => {
    expect(takenOut(targets, new Set([102, 999]), false)).toEqual({ out: new Set([102]), allDown: false });
  });

  it('fails open: when every target is down none is taken out, and it says so', () => {
    expect(takenOut(targets, new Set([101, 102, 103]), false)).toEqual({ out: new Set(), allDown: true });
    expect(takenOut(new Set(), new Set(), false)).toEqual({ out: new Set(), allDown: false });
  });

  it('takes nothing out during the warm-up, but still says when all are down', () => {
    expect(takenOut(targets, new Set([102]), true)).toEqual({ out: new Set(), allDown: false });
    expect(takenOut(targets, new Set([101, 102, 103]), true)).toEqual({ out: new Set(), allDown: true });
  });
});

describe('tierVerdict', () => {
  const views = (v: Record<string, number[]>) => new Map(Object.entries(v).map(([lb, down]) => [lb, new Set(down)]));

  it('takes a target down when a majority of the live LBs see it down', () => {
    expect(tierVerdict(views({ a: [1], b: [1], c: [] }), new Set())).toEqual({ down: new Set([1]), disagree: new Set([1]) });
    expect(tierVerdict(views({ a: [1], b: [1], c: [1] }), new Set([1]))).toEqual({ down: new Set([1]), disagree: new Set() });
  });

  it('keeps a target only a minority sees down, and reports the disagreement', () => {
    expect(tierVerdict(views({ a: [2], b: [], c: [] }), new Set([2]))).toEqual({ down: new Set(), disagree: new Set([2]) });
    expect(tierVerdict(views({ a: [2], b: [], c: [] }), new Set())).toEqual({ down: new Set(), disagree: new Set() });
  });

  it('needs more than half: a tie keeps the target', () => {
    expect(tierVerdict(views({ a: [3], b: [] }), new Set()).down).toEqual(new Set());
    expect(tierVerdict(views({ a: [3] }), new Set()).down).toEqual(new Set([3]));
  });
});

describe('readViews', () => {
  const dir = '/tslb/web/health/';
  const targets = new Map([
    [0, 101],
    [1, 102],
  ]);

  it('counts every LB with a key as live, and a slot down only for the fwmark it holds now', () => {
    const entries = [
      { key: `${dir}lb1/0`, value: viewValue(101, 'down') },
      { key: `${dir}lb1/1`, value: viewValue(102, 'up') },
      { key: `${dir}lb2/0`, value: viewValue(101, 'unknown') },
      // Slot 1 changed hands since lb3 saw it down.
      { key: `${dir}lb3/1`, value: viewValue(999, 'down') },
      { key: `${dir}lb4/x`, value: viewValue(101, 'down') },
      { key: `${dir}lb5/0`, value: '{bad' },
      { key: '/tslb/web/targets/0', value: '{}' },
    ];
    expect(readViews(entries, dir, targets)).toEqual(
      new Map([
        ['lb1', new Set([0])],
        ['lb2', new Set()],
        ['lb3', new Set()],
        ['lb5', new Set()],
      ]),
    );
  });
});

describe('probe options', () => {
  const parse = (...argv: string[]) => healthOptions(parseOptions(argv, healthCommands.health!.options));

  it('reads the probe kinds and the defaults', () => {
    expect(parseProbeSpec('tcp:80')).toEqual({ kind: 'tcp', port: 80 });
    expect(parseProbeSpec('http:8080/healthz?x=1')).toEqual({ kind: 'http', port: 8080, path: '/healthz?x=1' });
    expect(parse('--health=tcp:80', '--vip=10.0.0.1,1000::1')).toEqual({
      spec: { kind: 'tcp', port: 80 },
      vips: ['10.0.0.1', '1000::1'],
      probeAddress: 'vip',
      timing: { intervalMs: 1000, timeoutMs: 500, rise: 2, fall: 3 },
      warmupMs: 5000,
    });
  });

  it('sends an HTTP/1.0 GET with the address as host', () => {
    expect(probeRequest({ kind: 'tcp', port: 80 }, '10.0.0.1')).toBe('');
    expect(probeRequest({ kind: 'http', port: 80, path: '/h' }, '1000::1')).toBe(
      'GET /h HTTP/1.0\r\nHost: [1000::1]\r\nUser-Agent: nfqlb-health\r\nConnection: close\r\n\r\n',
    );
  });

  it.each([
    [['--health=udp:80', '--vip=10.0.0.1'], "--health: 'udp:80' is not tcp:PORT or http:PORT/PATH"],
    [['--health=tcp:80/x', '--vip=10.0.0.1'], "--health: 'tcp:80/x' is not tcp:PORT or http:PORT/PATH"],
    [['--health=http:80', '--vip=10.0.0.1'], "--health: 'http:80' is not tcp:PORT or http:PORT/PATH"],
    [['--health=http:0/', '--vip=10.0.0.1'], "--health: 'http:0/' is not tcp:PORT or http:PORT/PATH"],
    [['--health=http:80/a b', '--vip=10.0.0.1'], "--health: 'http:80/a b' is not tcp:PORT or http:PORT/PATH"],
    [['--health=tcp:80'], '--health needs --vip=ADDR[,ADDR6]'],
    [['--health=tcp:80', '--vip=vip.example'], "--vip: 'vip.example' is not an IPv4 or IPv6 address"],
    [['--health=tcp:80', '--vip=10.0.0.1,10.0.0.2'], "--vip: '10.0.0.1,10.0.0.2' has two addresses of one family"],
    [['--health=tcp:80', '--vip=10.0.0.1', '--hc_addr=gw'], "--hc_addr: 'gw' is not vip or target"],
    [
      ['--health=tcp:80', '--vip=10.0.0.1', '--hc_interval=100', '--hc_timeout=200'],
      '--hc_timeout: 200 is longer than --hc_interval (100)',
    ],
    [['--health=tcp:80', '--vip=10.0.0.1', '--hc_rise=0'], '--hc_rise: 0 is out of range 1..100'],
    [['--health=tcp:80', '--vip=10.0.0.1', '--hc_fall=x'], "--hc_fall: 'x' is not a number"],
  ])('refuses %j', (argv, message) => {
    expect(() => parse(...argv)).toThrow(message);
  });
});
