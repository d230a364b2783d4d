// An NFQUEUE queue: packets sent to user space by `iptables -j NFQUEUE --queue-num N`
// come back here in batches. The native class (native/nfqueue.cc) drains up to `batch`
// packets per wake-up into the typed arrays below, makes ONE call to onBatch(count), and
// sends the verdicts written into `verdicts` in ONE send(). All decisions are made in JS.
//
// Per packet i < count:
//   desc[i*DESC.WORDS + DESC.ID .. FLAGS]  what the kernel said about the packet
//   data[desc[...OFFSET] ..+ CAPLEN]       its first copyRange bytes (from the IP header)
//   verdicts[2*i] = NF_DROP | NF_ACCEPT, verdicts[2*i+1] = fwmark to set, -1 = keep it
// The arrays are reused by the next batch: copy out what must outlive onBatch.
import { readFileSync } from 'node:fs';
import { loadAddon } from './native.js';

export const DESC = { ID: 0, OFFSET: 1, CAPLEN: 2, LEN: 3, HWPROTO: 4, MARK: 5, INDEV: 6, FLAGS: 7, WORDS: 8 } as const;
export const NF_DROP = 0;
export const NF_ACCEPT = 1;
/** Bits of desc FLAGS (the kernel's NFQA_SKB_INFO). */
export const PKT_FLAG = { CSUM_NOT_READY: 1, GSO: 2, CSUM_NOT_VERIFIED: 4 } as const;

export interface NfQueueOptions {
  /** Queue number, as in `--queue-num`. */
  queue: number;
  /** Bytes of each packet copied to user space (default 256: headers only). */
  copyRange?: number;
  /** Packets the kernel holds for us before dropping (or accepting, with failOpen); default 1024. */
  maxLen?: number;
  /** Packets per onBatch call at most (default 128). */
  batch?: number;
  /** Accept instead of drop when the kernel queue is full (NFQA_CFG_F_FAIL_OPEN); default false. */
  failOpen?: boolean;
  /** Take GSO super-packets whole, one verdict each (NFQA_CFG_F_GSO); default true. */
  gso?: boolean;
  /** Verdict for every packet of a batch whose onBatch threw; default NF_DROP. */
  errorVerdict?: number;
  /** Socket receive buffer in bytes (default 8 MiB); overflow is counted as enobufs. */
  rcvBuf?: number;
  /** Errors from onBatch (after its packets got errorVerdict) and from the socket. Without
   *  it they become uncaught exceptions. */
  onError?: (e: Error) => void;
}

export interface NfQueueStats {
  packets: number;
  batches: number;
  /** Verdict messages sent. */
  verdicts: number;
  sendmsgCalls: number;
  recvCalls: number;
  /** Receive-buffer overflows: the kernel dropped packets (see kernelQueueStats userDropped). */
  enobufs: number;
  /** Verdicts the kernel refused (netlink error replies). */
  verdictErrors: number;
  /** Failed verdict send() calls. */
  sendErrors: number;
}

/** The native object; injectable so unit tests can run without the kernel. */
export interface NativeNfQueue {
  start(onBatch: (count: number) => void, onError?: (e: Error) => void): void;
  close(): void;
  stats(): NfQueueStats;
}
export type NativeNfQueueClass = new (
  queue: number,
  copyRange: number,
  maxLen: number,
  cfgFlags: number,
  rcvBuf: number,
  errorVerdict: number,
  desc: Uint32Array,
  data: Uint8Array,
  verdicts: Int32Array,
) => NativeNfQueue;

// NFQA_CFG_FLAGS bits.
const CFG_F_FAIL_OPEN = 1;
const CFG_F_GSO = 4;
// The kernel caps the copy range at 0xffff minus a netlink attribute header.
const MAX_COPY_RANGE = 65531;
// The verdicts of a batch go out in one send(), which must fit the socket send buffer.
const MAX_BATCH = 1024;

export class NfQueue {
  readonly queue: number;
  readonly copyRange: number;
  readonly batch: number;
  readonly desc: Uint32Array;
  readonly data: Uint8Array;
  readonly verdicts: Int32Array;
  readonly #native: NativeNfQueue;
  readonly #onError: ((e: Error) => void) | undefined;

  /** Binds the queue; throws if it is bound elsewhere or we lack CAP_NET_ADMIN. */
  constructor(opts: NfQueueOptions, Native?: NativeNfQueueClass) {
    const queue = integer('queue', opts.queue, 0, 65535);
    const copyRange = integer('copyRange', opts.copyRange ?? 256, 1, MAX_COPY_RANGE);
    const maxLen = integer('maxLen', opts.maxLen ?? 1024, 1, 0xffffffff);
    const batch = integer('batch', opts.batch ?? 128, 1, MAX_BATCH);
    const rcvBuf = integer('rcvBuf', opts.rcvBuf ?? 8 << 20, 4096, 0x7fffffff);
    const errorVerdict = opts.errorVerdict ?? NF_DROP;
    if (errorVerdict !== NF_DROP && errorVerdict !== NF_ACCEPT) {
      throw new RangeError(`nfqueue: errorVerdict must be NF_DROP (0) or NF_ACCEPT (1), got ${errorVerdict}`);
    }
    const failOpen = flag('failOpen', opts.failOpen ?? false);
    const gso = flag('gso', opts.gso ?? true);
    if (opts.onError !== undefined && typeof opts.onError !== 'function') throw new TypeError('nfqueue: onError must be a function');

    this.queue = queue;
    this.copyRange = copyRange;
    this.batch = batch;
    this.desc = new Uint32Array(batch * DESC.WORDS);
    this.data = new Uint8Array(batch * copyRange);
    this.verdicts = new Int32Array(batch * 2);
    this.#onError = opts.onError;
    const cfgFlags = (failOpen ? CFG_F_FAIL_OPEN : 0) | (gso ? CFG_F_GSO : 0);
    const Impl = Native ?? loadAddon<{ NfQueue: NativeNfQueueClass }>('nfqueue').NfQueue;
    try {
      this.#native = new Impl(queue, copyRange, maxLen, cfgFlags, rcvBuf, errorVerdict, this.desc, this.data, this.verdicts);
    } catch (e) {
      throw explainBindError(queue, e);
    }
  }

  /** Starts delivering batches; onBatch must write a verdict for each of its `count` packets. */
  start(onBatch: (count: number) => void): void {
    if (typeof onBatch !== 'function') throw new TypeError('nfqueue: onBatch must be a function');
    this.#native.start(onBatch, this.#onError);
  }

  /** Releases the queue (packets still waiting for a verdict are dropped); idempotent. */
  stop(): void {
    this.#native.close();
  }

  stats(): NfQueueStats {
    return this.#native.stats();
  }
}

/** One queue's line of /proc/net/netfilter/nfnetlink_queue (for this network namespace). */
export interface KernelQueueStats {
  queue: number;
  /** Netlink port id of the socket bound to the queue. */
  portId: number;
  /** Packets waiting for a verdict now. */
  queued: number;
  copyMode: number;
  copyRange: number;
  /** Dropped because the queue was full (maxLen). */
  queueDropped: number;
  /** Dropped because our socket buffer was full. */
  userDropped: number;
  /** Last packet id handed out. */
  idSequence: number;
}

/** The kernel's counters for `queue`, or undefined when nobody has it bound. */
export function kernelQueueStats(queue: number, procText?: string): KernelQueueStats | undefined {
  let text = procText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/net/netfilter/nfnetlink_queue', 'utf8');
    } catch {
      return undefined; // no nfnetlink_queue in this kernel: no queue is bound
    }
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/).map(Number);
    if (f.length < 8 || f[0] !== queue) continue;
    const [, portId = 0, queued = 0, copyMode = 0, copyRange = 0, queueDropped = 0, userDropped = 0, idSequence = 0] = f;
    return { queue, portId, queued, copyMode, copyRange, queueDropped, userDropped, idSequence };
  }
  return undefined;
}

// The kernel answers EPERM both to a process without CAP_NET_ADMIN and to a bind of a
// queue that another socket holds; the proc file tells which.
function explainBindError(queue: number, e: unknown): unknown {
  const err = e as NodeJS.ErrnoException;
  if (err?.code !== 'EPERM') return e;
  const holder = kernelQueueStats(queue);
  const why = holder
    ? `already bound by another netlink socket (port id ${holder.portId}); one queue has one reader`
    : 'permission denied: binding a queue needs CAP_NET_ADMIN (run as root)';
  return Object.assign(new Error(`nfqueue ${queue}: ${why}`, { cause: e }), { code: err.code, errno: err.errno, queue });
}

function integer(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`nfqueue: ${name} must be an integer in ${min}..${max}, got ${v}`);
  return v;
}

function flag(name: string, v: boolean): boolean {
  if (typeof v !== 'boolean') throw new TypeError(`nfqueue: ${name} must be a boolean`);
  return v;
}
