// The NfQueue binding against the real kernel: client -> router -> sink over veth pairs in
// namespaces tlbq-*. The router sends UDP to the sink through NFQUEUE 7; a child process
// inside the router namespace runs NfQueue with a small policy (mark = 0x100 + (dport & 15),
// drop dport 10003, throw on dport 10005); mangle FORWARD counters in the router, which
// only see packets after their verdict, show which marks the kernel applied.
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, inNs, removeNs, spawnInNs } from '../../src/lab/netns.js';
import { kernelQueueStats, type NativeNfQueueClass, NfQueue } from '../../src/nfqueue.js';
import { waitFor } from '../wait.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
// The child runs plain node: the modules it needs are transpiled below build/ (inside the
// checkout, so the addon loader finds package.json and build/Release).
const childDir = join(root, 'build', 'tlbq-child');
const CLI = 'tlbq-cli',
  RTR = 'tlbq-rtr',
  SNK = 'tlbq-snk';
const SINK4 = '10.77.2.1',
  SINK6 = 'fd77:2::1';
const QUEUE = 7;

const CHILD = `
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createInterface } from 'node:readline';
import { NfQueue, DESC, NF_ACCEPT, NF_DROP, kernelQueueStats } from './src/nfqueue.js';

const args = isMainThread ? JSON.parse(process.argv[2]) : workerData;
const out = isMainThread ? (o) => process.stdout.write(JSON.stringify(o) + '\\n') : (o) => parentPort.postMessage(o);

let q, maxBatch = 0, errors = 0, last = null;
function open() {
  const { queue, batch, copyRange, rcvBuf } = args;
  q = new NfQueue({ queue, maxLen: 8192, batch, copyRange, rcvBuf, onError: () => errors++ });
  q.start((count) => {
    if (count > maxBatch) maxBatch = count;
    const { desc, data, verdicts } = q;
    let fail = false;
    for (let i = 0; i < count; i++) {
      const off = desc[i * DESC.WORDS + DESC.OFFSET];
      const l4 = desc[i * DESC.WORDS + DESC.HWPROTO] === 0x0800 ? off + (data[off] & 15) * 4 : off + 40;
      const dport = (data[l4 + 2] << 8) | data[l4 + 3];
      verdicts[2 * i] = dport === 10003 ? NF_DROP : NF_ACCEPT;
      verdicts[2 * i + 1] = 0x100 + (dport & 15);
      if (dport === 10005) fail = true;
    }
    const d = (count - 1) * DESC.WORDS;
    last = { len: desc[d + DESC.LEN], caplen: desc[d + DESC.CAPLEN], hwproto: desc[d + DESC.HWPROTO], indev: desc[d + DESC.INDEV] };
    if (fail) throw new Error('policy failure');
  });
}
function handle(cmd) {
  if (cmd === 'stats') return { stats: q.stats(), maxBatch, errors, last, kernel: kernelQueueStats(args.queue) ?? null };
  if (cmd === 'close') {
    q.stop();
    q.stop(); // idempotent
    const released = kernelQueueStats(args.queue) === undefined;
    open();
    return { released, reopened: kernelQueueStats(args.queue) ?? null };
  }
  if (cmd === 'exit') { q.stop(); process.exit(0); }
  return { error: 'unknown command ' + cmd };
}

if (isMainThread && args.worker) {
  // The queue lives in a worker_thread; 'terminate' ends the worker without closing the
  // queue, so only the addon's environment cleanup hook can release it.
  const w = new Worker(new URL(import.meta.url), { workerData: args });
  w.on('message', out);
  w.on('error', (e) => out({ error: e.message }));
  createInterface({ input: process.stdin }).on('line', async (cmd) => {
    if (cmd !== 'terminate') return w.postMessage(cmd);
    await w.terminate();
    out({ terminated: true, kernel: kernelQueueStats(args.queue) ?? null });
  });
} else {
  try {
    open();
  } catch (e) {
    out({ openError: e.message, code: e.code });
    process.exit(1);
  }
  if (isMainThread) createInterface({ input: process.stdin }).on('line', (cmd) => out(handle(cmd)));
  else parentPort.on('message', (cmd) => out(handle(cmd)));
  out({ ready: true });
}
`;

// Sends n UDP datagrams to each port, as fast as node can.
const SENDER = `
import dgram from 'node:dgram';
const [host, n, size, ...ports] = process.argv.slice(2);
const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
const buf = Buffer.alloc(Number(size));
let left = Number(n) * ports.length;
for (let i = 0; i < Number(n); i++) for (const p of ports) s.send(buf, Number(p), host, () => { if (--left === 0) s.close(); });
`;

function writeChildFiles(): void {
  mkdirSync(join(childDir, 'src'), { recursive: true });
  for (const mod of ['native', 'nfqueue']) {
    const out = ts.transpileModule(readFileSync(join(root, 'src', `${mod}.ts`), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    });
    writeFileSync(join(childDir, 'src', `${mod}.js`), out.outputText);
  }
  writeFileSync(join(childDir, 'child.mjs'), CHILD);
  writeFileSync(join(childDir, 'send.mjs'), SENDER);
}

// biome-ignore lint/suspicious/noExplicitAny: the child's JSON replies have several shapes; each test reads its own fields.
type Reply = Record<string, any>;

/** A child process in the router namespace holding the queue, driven line by line. */
class QueueChild {
  readonly proc: ChildProcess;
  readonly #replies: Reply[] = [];
  #waiting: ((r: Reply) => void) | undefined;
  stderr = '';

  constructor(args: { queue: number; batch?: number; worker?: boolean; copyRange?: number; rcvBuf?: number }, prefix: string[] = []) {
    this.proc = spawnInNs(RTR, [...prefix, 'node', join(childDir, 'child.mjs'), JSON.stringify(args)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.proc.stderr!.on('data', (d) => (this.stderr += String(d)));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      const r = JSON.parse(line) as Reply;
      if (this.#waiting) {
        const w = this.#waiting;
        this.#waiting = undefined;
        w(r);
      } else {
        this.#replies.push(r);
      }
    });
  }

  next(timeoutMs = 10_000): Promise<Reply> {
    const r = this.#replies.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no reply from the queue child; stderr: ${this.stderr}`)), timeoutMs);
      this.#waiting = (x) => {
        clearTimeout(t);
        resolve(x);
      };
    });
  }

  cmd(c: string): Promise<Reply> {
    this.proc.stdin!.write(`${c}\n`);
    return this.next();
  }

  /** Polls stats until `done` holds; returns that stats reply. Rejects after 5 s with the last one. */
  async waitFor(what: string, done: (r: Reply) => boolean): Promise<Reply> {
    let last: Reply | undefined;
    return waitFor(
      what,
      async () => {
        last = await this.cmd('stats');
        if (!done(last)) return undefined;
        return last;
      },
      { timeout: 5000, interval: 50 },
    ).catch((e: Error) => {
      throw new Error(`${e.message}; last stats: ${JSON.stringify(last)}`);
    });
  }

  waitPackets(n: number): Promise<Reply> {
    return this.waitFor(`${n} packets`, (r) => r.stats.packets >= n);
  }

  exited(): Promise<number | null> {
    if (this.proc.exitCode !== null) return Promise.resolve(this.proc.exitCode);
    return new Promise((res) => this.proc.on('exit', (code) => res(code)));
  }

  kill(): void {
    if (this.proc.pid !== undefined && this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}

function send(host: string, n: number, ports: number[], payloadBytes = 18): void {
  inNs(CLI, ['node', join(childDir, 'send.mjs'), host, String(n), String(payloadBytes), ...ports.map(String)]);
}

/** Packets per fwmark counted by the router's mangle FORWARD rules, i.e. after the verdict. */
function forwardedByMark(v6: boolean): Map<number, number> {
  const out = inNs(RTR, [v6 ? 'ip6tables' : 'iptables', '-t', 'mangle', '-L', 'FORWARD', '-v', '-n', '-x']);
  const counts = new Map<number, number>();
  for (const m of out.matchAll(/^\s*(\d+)\s+\d+.*mark match 0x([0-9a-f]+)/gm)) counts.set(parseInt(m[2]!, 16), Number(m[1]));
  return counts;
}

function ifindex(ns: string, dev: string): number {
  return (JSON.parse(inNs(ns, ['ip', '-j', 'link', 'show', 'dev', dev])) as [{ ifindex: number }])[0].ifindex;
}

function zeroCounters(): void {
  for (const t of ['iptables', 'ip6tables']) inNs(RTR, [t, '-t', 'mangle', '-Z', 'FORWARD']);
}

function macOf(ns: string, dev: string): string {
  return (JSON.parse(inNs(ns, ['ip', '-j', 'link', 'show', 'dev', dev])) as [{ address: string }])[0].address;
}

function buildTopology(): void {
  for (const ns of [CLI, RTR, SNK]) addNs(ns);
  inNs(CLI, ['ip', 'link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 'r0', 'netns', RTR]);
  inNs(RTR, ['ip', 'link', 'add', 'r1', 'type', 'veth', 'peer', 'name', 's0', 'netns', SNK]);
  const addrs: [string, string, string[]][] = [
    [CLI, 'c0', ['10.77.1.1/24', 'fd77:1::1/64']],
    [RTR, 'r0', ['10.77.1.254/24', 'fd77:1::fe/64']],
    [RTR, 'r1', ['10.77.2.254/24', 'fd77:2::fe/64']],
    [SNK, 's0', [`${SINK4}/24`, `${SINK6}/64`]],
  ];
  for (const [ns, dev, list] of addrs) {
    for (const a of list) inNs(ns, ['ip', 'addr', 'add', a, 'dev', dev, ...(a.includes(':') ? ['nodad'] : [])]);
    inNs(ns, ['ip', 'link', 'set', dev, 'up']);
  }
  inNs(CLI, ['ip', 'route', 'add', 'default', 'via', '10.77.1.254']);
  inNs(CLI, ['ip', '-6', 'route', 'add', 'default', 'via', 'fd77:1::fe']);
  inNs(SNK, ['ip', 'route', 'add', 'default', 'via', '10.77.2.254']);
  inNs(SNK, ['ip', '-6', 'route', 'add', 'default', 'via', 'fd77:2::fe']);
  // Static neighbours: no ARP/ND queueing (and loss) of the first packets of a burst.
  const r0 = macOf(RTR, 'r0'),
    s0 = macOf(SNK, 's0');
  for (const via of ['10.77.1.254', 'fd77:1::fe'])
    inNs(CLI, ['ip', 'neigh', 'replace', via, 'lladdr', r0, 'dev', 'c0', 'nud', 'permanent']);
  for (const dst of [SINK4, SINK6]) inNs(RTR, ['ip', 'neigh', 'replace', dst, 'lladdr', s0, 'dev', 'r1', 'nud', 'permanent']);
  inNs(RTR, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  for (const [t, sink] of [
    ['iptables', SINK4],
    ['ip6tables', SINK6],
  ] as const) {
    inNs(RTR, [t, '-t', 'raw', '-A', 'PREROUTING', '-j', 'NOTRACK']);
    inNs(RTR, [t, '-t', 'mangle', '-A', 'PREROUTING', '-d', sink, '-p', 'udp', '-j', 'NFQUEUE', '--queue-num', String(QUEUE)]);
    for (const port of [0, 1, 2, 3, 4, 5])
      inNs(RTR, [t, '-t', 'mangle', '-A', 'FORWARD', '-m', 'mark', '--mark', `0x${(0x100 + port).toString(16)}`]);
  }
}

describe('NfQueue in a router namespace', () => {
  const children: QueueChild[] = [];
  let lb: QueueChild;
  const spawnChild = (args: ConstructorParameters<typeof QueueChild>[0], prefix?: string[]): QueueChild => {
    const c = new QueueChild(args, prefix);
    children.push(c);
    return c;
  };

  beforeAll(async () => {
    removeNs('tlbq-');
    writeChildFiles();
    buildTopology();
    lb = spawnChild({ queue: QUEUE });
    expect(await lb.next()).toEqual({ ready: true });
  });

  afterAll(() => {
    for (const c of children) c.kill();
    removeNs('tlbq-');
  });

  it.each([
    ['IPv4', SINK4, false, 0x0800, 20 + 8 + 18],
    ['IPv6', SINK6, true, 0x86dd, 40 + 8 + 18],
  ] as const)('%s: packets get the marks we set, and NF_DROP drops', async (_name, sink, v6, hwproto, len) => {
    zeroCounters();
    const before = (await lb.cmd('stats')).stats.packets as number;
    send(sink, 40, [10000, 10001, 10002, 10003]);
    const r = await lb.waitPackets(before + 160);
    expect(r.stats.packets - before).toBe(160);
    expect(r.stats.verdicts).toBe(r.stats.packets);
    expect(r.stats.verdictErrors).toBe(0);
    const fwd = forwardedByMark(v6);
    expect([0x100, 0x101, 0x102, 0x103].map((m) => fwd.get(m))).toEqual([40, 40, 40, 0]);
    expect(r.last).toEqual({ len, caplen: len, hwproto, indev: ifindex(RTR, 'r0') });
  });

  it('a batch whose onBatch throws gets the error verdict (drop) and onError is called', async () => {
    zeroCounters();
    const before = await lb.cmd('stats');
    send(SINK4, 20, [10005]);
    const r = await lb.waitPackets(before.stats.packets + 20);
    expect(r.stats.verdicts).toBe(r.stats.packets);
    expect(r.errors).toBeGreaterThan(before.errors);
    expect(forwardedByMark(false).get(0x105)).toBe(0);
  });

  it('a burst of 2000 packets: every packet gets a verdict, many per batch and per send', async () => {
    zeroCounters();
    const before = (await lb.cmd('stats')).stats;
    send(SINK4, 2000, [10001]);
    const r = await lb.waitPackets(before.packets + 2000);
    const d = (k: string): number => r.stats[k] - before[k];
    expect(d('packets')).toBe(2000);
    expect(d('verdicts')).toBe(2000);
    expect(d('sendmsgCalls')).toBe(d('batches'));
    expect(d('batches')).toBeLessThan(2000);
    expect(r.maxBatch).toBeGreaterThan(1);
    expect(r.kernel).toMatchObject({ queue: QUEUE, queued: 0, queueDropped: 0, userDropped: 0 });
    expect(forwardedByMark(false).get(0x101)).toBe(2000);
    console.log(
      `burst of 2000: ${d('batches')} batches, ${d('sendmsgCalls')} sends, ${d('recvCalls')} recvmmsg calls, max batch ${r.maxBatch}`,
    );
  });

  it('odd-sized packets after large ones: exactly one verdict each (no stale bytes parsed as packets)', async () => {
    // A datagram's last netlink message is not padded to 4 bytes; stepping past it once made
    // the receive loop parse the previous, larger packet's leftovers in the slot (and crash
    // at the end of the buffer).
    zeroCounters();
    const before = (await lb.cmd('stats')).stats;
    send(SINK4, 300, [10001], 600);
    for (const size of [1, 2, 3, 5, 7]) send(SINK4, 100, [10001], size);
    // One packet to another port last: once its verdict is applied, the queue (in order) has
    // handled all before it, so any stale "packets" parsed among them are counted by then.
    send(SINK4, 1, [10002]);
    await waitFor('the verdict on the last packet', () => forwardedByMark(false).get(0x102) === 1, { interval: 50 });
    const after = await lb.cmd('stats');
    expect(after.stats.packets - before.packets).toBe(801);
    expect(after.stats.verdictErrors - before.verdictErrors).toBe(0);
    expect(after.kernel).toMatchObject({ queued: 0 });
    expect(forwardedByMark(false).get(0x101)).toBe(800);
  });

  it('a second bind of the same queue fails with a clear error', async () => {
    const second = spawnChild({ queue: QUEUE });
    const r = await second.next();
    expect(r.openError).toMatch(/^nfqueue 7: already bound by another netlink socket \(port id \d+\)/);
    expect(r.code).toBe('EPERM');
    expect(await second.exited()).toBe(1);
  });

  it('binding without CAP_NET_ADMIN fails with a clear error', async () => {
    const weak = spawnChild({ queue: 8 }, ['setpriv', '--inh-caps=-all', '--bounding-set=-all']);
    const r = await weak.next();
    expect(r.openError).toMatch(/^nfqueue 8: permission denied: binding a queue needs CAP_NET_ADMIN/);
  });

  it('close() releases the queue: it can be bound again and traffic flows', async () => {
    const r = await lb.cmd('close');
    expect(r.released).toBe(true);
    expect(r.reopened).toMatchObject({ queue: QUEUE, copyRange: 256 });
    zeroCounters();
    const before = (await lb.cmd('stats')).stats.packets as number;
    send(SINK6, 10, [10002]);
    expect((await lb.waitPackets(before + 10)).stats.packets).toBe(before + 10);
    expect(forwardedByMark(true).get(0x102)).toBe(10);
  });

  it('runs in a worker_thread, and ending the worker releases the queue', async () => {
    lb.proc.stdin!.write('exit\n');
    expect(await lb.exited()).toBe(0);
    const w = spawnChild({ queue: QUEUE, worker: true, batch: 32 });
    expect(await w.next()).toEqual({ ready: true });
    zeroCounters();
    send(SINK4, 100, [10004]);
    const r = await w.waitPackets(100);
    expect(r.stats.packets).toBe(100);
    expect(r.maxBatch).toBeLessThanOrEqual(32);
    expect(forwardedByMark(false).get(0x104)).toBe(100);
    const t = await w.cmd('terminate');
    expect(t).toEqual({ terminated: true, kernel: null });
  });

  it('copies only copyRange bytes, and counts socket-buffer overflow (ENOBUFS) and keeps going', async () => {
    // IPv4 + UDP headers are 28 bytes: enough for the policy, less than the packet.
    const small = spawnChild({ queue: QUEUE, copyRange: 28, rcvBuf: 4096 });
    expect(await small.next()).toEqual({ ready: true });
    send(SINK4, 2000, [10001]);
    const r = await small.waitFor(
      'every packet handled or dropped by the kernel',
      (x) => x.stats.packets + (x.kernel?.userDropped ?? 0) >= 2000,
    );
    expect(r.last).toMatchObject({ caplen: 28, len: 46 });
    expect(r.stats.enobufs).toBeGreaterThan(0);
    // Packets the kernel could not deliver were dropped (and counted) by it, not lost by us.
    expect(r.kernel.userDropped).toBeGreaterThan(0);
    expect(r.stats.packets + r.kernel.userDropped).toBe(2000);
    expect(r.stats.verdicts).toBe(r.stats.packets);
    const before = r.stats.packets as number;
    send(SINK4, 1, [10001]);
    expect((await small.waitPackets(before + 1)).stats.packets).toBe(before + 1);
  });
});

describe('NfQueue wrapper (mock native class)', () => {
  const calls: unknown[][] = [];
  class Mock {
    constructor(...args: unknown[]) {
      calls.push(args);
    }
    start(): void {}
    close(): void {}
    stats(): never {
      throw new Error('unused');
    }
  }
  const Native = Mock as unknown as NativeNfQueueClass;

  it('passes defaults and JS-owned arrays sized batch*8, batch*copyRange, batch*2', () => {
    calls.length = 0;
    const q = new NfQueue({ queue: 3 }, Native);
    const [queue, copyRange, maxLen, cfgFlags, rcvBuf, errorVerdict, desc, data, verdicts] = calls[0]!;
    expect([queue, copyRange, maxLen, cfgFlags, rcvBuf, errorVerdict]).toEqual([3, 256, 1024, 4, 8 << 20, 0]);
    expect([desc, data, verdicts]).toEqual([q.desc, q.data, q.verdicts]);
    expect([q.desc.length, q.data.length, q.verdicts.length]).toEqual([128 * 8, 128 * 256, 128 * 2]);
    new NfQueue({ queue: 3, failOpen: true, gso: false, batch: 4, copyRange: 64 }, Native);
    expect(calls[1]!.slice(0, 4)).toEqual([3, 64, 1024, 1]);
  });

  it.each([
    [{ queue: 65536 }, RangeError],
    [{ queue: 1.5 }, RangeError],
    [{ queue: 1, batch: 0 }, RangeError],
    [{ queue: 1, batch: 1025 }, RangeError],
    [{ queue: 1, copyRange: 0 }, RangeError],
    [{ queue: 1, copyRange: 65532 }, RangeError],
    [{ queue: 1, errorVerdict: 2 }, RangeError],
    [{ queue: 1, gso: 'yes' as unknown as boolean }, TypeError],
  ])('rejects %o before any native call', (opts, type) => {
    calls.length = 0;
    expect(() => new NfQueue(opts, Native)).toThrow(type);
    expect(calls).toHaveLength(0);
  });

  it('names the queue and the cause when the kernel says EPERM', () => {
    class Denied {
      constructor() {
        throw Object.assign(new Error('nfqueue 65000: bind: Operation not permitted (EPERM)'), { code: 'EPERM' });
      }
    }
    // Queue 65000 is bound by nobody in this namespace: it must be the missing capability.
    expect(() => new NfQueue({ queue: 65000 }, Denied as unknown as NativeNfQueueClass)).toThrow(
      /^nfqueue 65000: permission denied: binding a queue needs CAP_NET_ADMIN/,
    );
  });

  it('reads one queue line of /proc/net/netfilter/nfnetlink_queue', () => {
    const text = '    2  12345     3 2   256     7     9    40000  1\n    7   4242     0 2    64     0     0        5  1\n';
    expect(kernelQueueStats(7, text)).toEqual({
      queue: 7,
      portId: 4242,
      queued: 0,
      copyMode: 2,
      copyRange: 64,
      queueDropped: 0,
      userDropped: 0,
      idSequence: 5,
    });
    expect(kernelQueueStats(2, text)).toMatchObject({ queued: 3, queueDropped: 7, userDropped: 9, idSequence: 40000 });
    expect(kernelQueueStats(3, text)).toBeUndefined();
  });
});
