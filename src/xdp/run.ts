// `xdplb lb`: the XDP program on the ingress device sends VIP frames to an AF_XDP socket;
// each batch is decided in TypeScript (FrameForwarder) and sent on the egress device
// through a second socket on the same UMEM. Non-VIP traffic goes to the kernel.
//
// With --offload the program decides in the kernel (xdplb_forward) from a mirror of the same
// table (TableMirror, targetEntries) and redirects to the egress device itself; the socket
// gets only what it declines.
import { readdirSync, readFileSync } from 'node:fs';
import { log } from '../log.js';
import type { MetricsAddress } from '../metrics.js';
import { MetricsServer, newRegistry } from '../metrics.js';
import { MIRROR_FOLLOW_MS, TableMirror } from '../table-mirror.js';
import { TableFollower, TargetStore } from '../target-store.js';
import { FrameForwarder } from './forwarder.js';
import { registerXdpMetrics, type XdpLbStats } from './metrics.js';
import { ENTRY_WORDS, targetEntries } from './offload.js';
import { parseMac, vipText, XDPLB_TABLE, type XdpTable } from './table.js';
import { type Umem, type XdpMode, type XdpProgram, type XskSocket, xskAddon } from './xsk.js';

export interface XdpLbOptions {
  idev: string;
  edev: string;
  shm: string;
  /** The ingress rx queue to serve. */
  queue: number;
  /** auto: native where the driver has it, else generic. */
  mode: XdpMode | 'auto';
  /** Decide in the kernel (xdplb_forward); the socket gets what the program declines. */
  offload?: boolean;
  /** VIPs added to the shm table at start (the lb follows the table's VIP list). */
  vips: readonly string[];
  /** Frames per JS call (default 64). */
  batch?: number;
  /** UMEM frames, a power of two (default 4096). */
  frames?: number;
  /** Where to serve Prometheus metrics and /healthz (--metrics); default none. */
  metrics?: MetricsAddress | null;
}

const FRAME_SIZE = 4096;
/** How often the table is looked at for a new file (`xdplb init`) and new VIPs. */
const TABLE_POLL_MS = 200;
/** Target slots the program counts at least (more when the table has more at start). */
const COUNTED_SLOTS = 256;
const ATTACH_REFUSED = new Set(['EOPNOTSUPP', 'EINVAL', 'ERANGE']);

function deviceMac(dev: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(`/sys/class/net/${dev}/address`, 'utf8').trim();
  } catch {
    throw new Error(`Unknown interface [${dev}]`);
  }
  return parseMac(text);
}

function rxQueueCount(dev: string): number {
  try {
    return readdirSync(`/sys/class/net/${dev}/queues`).filter((q) => q.startsWith('rx-')).length;
  } catch {
    return 1;
  }
}

export class XdpLb {
  readonly forwarder: FrameForwarder;
  private readonly follower: TableFollower<XdpTable>;
  private readonly program: XdpProgram;
  private readonly mirror: TableMirror<XdpTable> | null = null;
  /** Target slots the program counts (0 without --offload). */
  private readonly countedSlots: number;
  private readonly mode: XdpMode;
  private readonly umem: Umem;
  private readonly rx: XskSocket;
  private readonly tx: XskSocket;
  private readonly timer: NodeJS.Timeout;
  /** The table and VIP generation the program's VIP map was last made equal to. */
  private vipsOf: { table: XdpTable; generation: number } | null = null;
  private closed = false;

  /** Sets everything up and starts forwarding; on failure nothing is left attached. */
  static start(o: XdpLbOptions): XdpLb {
    return new XdpLb(o);
  }

  private constructor(o: XdpLbOptions) {
    if (o.vips.length > 0) TargetStore.open(XDPLB_TABLE, o.shm, true).table.addVips(o.vips);
    this.follower = new TableFollower(XDPLB_TABLE, o.shm);
    const srcMac = deviceMac(o.edev);
    deviceMac(o.idev);
    const nq = rxQueueCount(o.idev);
    if (nq > 1) {
      log.warn({ idev: o.idev, rxQueues: nq, queue: o.queue }, 'only one rx queue is served; run `ethtool -L <idev> combined 1`');
    }
    const addon = xskAddon();
    const batch = o.batch ?? 64;
    this.countedSlots = o.offload ? Math.max(COUNTED_SLOTS, this.follower.table.N) : 0;
    this.program = new addon.XdpProgram(undefined, undefined, this.countedSlots);
    let umem: Umem | undefined;
    let rx: XskSocket | undefined;
    let tx: XskSocket | undefined;
    try {
      this.syncVips();
      if (o.offload) {
        const program = this.program;
        program.setEgress(o.edev, srcMac);
        this.mirror = new TableMirror(
          'xdplb',
          (t) => t.M * ENTRY_WORDS,
          targetEntries,
          (e) => program.publish(e),
        );
        this.mirror.sync(this.follower.table);
      }
      umem = new addon.Umem(o.frames ?? 4096, FRAME_SIZE);
      // One socket can receive and send when both sides are the same device and queue.
      const same = o.idev === o.edev && o.queue === 0;
      rx = new addon.XskSocket(umem, o.idev, o.queue, { rx: true, tx: same });
      tx = same ? rx : new addon.XskSocket(umem, o.edev, 0, { tx: true });
      this.program.setSocket(o.queue, rx.fd);
      this.forwarder = new FrameForwarder(new Uint8Array(umem.buffer), this.follower.table, srcMac);
      const addr = new Uint32Array(batch);
      const len = new Uint32Array(batch);
      const verdict = new Uint8Array(batch);
      const fw = this.forwarder;
      rx.start(tx, addr, len, verdict, (n) => fw.batch(n, addr, len, verdict));
      this.mode = attach(this.program, o.idev, o.mode);
    } catch (e) {
      if (tx && tx !== rx) tx.close();
      rx?.close();
      umem?.close();
      this.program.close();
      throw e;
    }
    this.umem = umem;
    this.rx = rx;
    this.tx = tx;
    // The table changes under us: `xdplb init` replaces the file, vip-add and vip-delete write it.
    this.timer = setInterval(
      () => {
        if (this.follower.check()) this.useTable(this.follower.table);
        this.syncVips();
        this.mirror?.follow(this.follower.table);
      },
      o.offload ? MIRROR_FOLLOW_MS : TABLE_POLL_MS,
    );
    this.timer.unref();
    const offload = o.offload === true;
    log.info({ idev: o.idev, edev: o.edev, queue: o.queue, mode: this.mode, offload, shm: o.shm, vips: this.vips() }, 'xdplb forwarding');
    if (this.vips().length === 0) log.warn('no VIPs yet: all traffic goes to the kernel until `xdplb vip-add`');
  }

  private useTable(table: XdpTable): void {
    this.forwarder.useTable(table);
    if (table.N > this.countedSlots && this.mirror !== null) {
      log.warn(
        { N: table.N, counted: this.countedSlots },
        'the program counts frames of the first slots only: restart the lb to count all',
      );
    }
  }

  /** The VIPs in the XDP program's map. */
  vips(): string[] {
    return this.program.vips().map(vipText);
  }

  /** Makes the program's VIP map equal to the table's VIP list, when the list (or the table) changed. */
  private syncVips(): void {
    const table = this.follower.table;
    const snap = table.vipSnapshot();
    if (snap === null || (table === this.vipsOf?.table && snap.generation === this.vipsOf.generation)) return;
    const want = new Map(snap.keys.map((k) => [vipText(k), k]));
    for (const have of this.program.vips()) {
      if (!want.delete(vipText(have))) this.program.removeVip(have);
    }
    for (const k of want.values()) this.program.addVip(k);
    if (this.vipsOf !== null) log.info({ vips: this.vips() }, 'VIPs changed');
    this.vipsOf = { table, generation: snap.generation };
  }

  /** Attached and forwarding (until close). */
  get running(): boolean {
    return !this.closed;
  }

  stats(): XdpLbStats {
    const stats: XdpLbStats = { ...this.rx.stats(), ...this.forwarder.counters };
    if (this.mirror === null) return stats;
    const { forwarded, declined } = this.program.counters(0);
    return { ...stats, offloaded: forwarded, declined };
  }

  /** Frames sent to each target, by table index: by the forwarder and, with --offload, by the program. */
  targetFrames(): Float64Array {
    const frames = this.forwarder.targetFrames;
    if (this.mirror === null) return frames;
    const kernel = this.program.counters(this.follower.table.N).targets;
    const sum = new Float64Array(Math.max(frames.length, kernel.length));
    sum.set(kernel);
    frames.forEach((n, i) => {
      sum[i]! += n;
    });
    return sum;
  }

  /** Detaches the program and releases the sockets (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    const stats = this.stats();
    this.program.close(); // detaches first: nothing is redirected to closing sockets
    this.rx.close();
    if (this.tx !== this.rx) this.tx.close();
    this.umem.close();
    log.info(stats, 'xdplb stopped');
  }
}

/** Attaches in `mode`, or with auto natively where the driver lets it, else generically; returns the mode used. */
function attach(program: XdpProgram, dev: string, mode: XdpMode | 'auto'): XdpMode {
  if (mode !== 'auto') {
    program.attach(dev, mode);
    return mode;
  }
  try {
    program.attach(dev, 'native');
    return 'native';
  } catch (e) {
    if (!ATTACH_REFUSED.has((e as { code?: string }).code ?? '')) throw e;
    log.info({ dev, err: (e as Error).message }, 'no native XDP: attaching in generic mode');
    program.attach(dev, 'generic');
    return 'generic';
  }
}

/** Runs the lb until SIGINT or SIGTERM; SIGUSR1 logs the counters. */
export async function runXdpLb(o: XdpLbOptions): Promise<number> {
  // Caught before the program is attached: a SIGTERM right after start (systemd stopping the
  // unit) must still detach it, or the device's VIP traffic would go to a dead socket.
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  // Listening first: a bad --metrics address fails before anything is attached.
  let started: XdpLb | null = null;
  let metrics: MetricsServer | null = null;
  if (o.metrics) {
    const registry = newRegistry();
    metrics = await MetricsServer.start(
      o.metrics,
      registry,
      registerXdpMetrics(registry, () => started, o.shm),
    );
  }
  let lb: XdpLb;
  try {
    lb = started = XdpLb.start(o);
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  const report = (): void => void log.info(lb.stats(), 'xdplb stats');
  process.on('SIGUSR1', report);
  await stopped;
  process.off('SIGUSR1', report);
  lb.close();
  await metrics?.close();
  return 0;
}
