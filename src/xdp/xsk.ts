// The xsk addon (native/xsk.cc, native/xdp_program.cc): AF_XDP sockets over one shared
// UMEM, and the XDP programs (native/bpf/xdplb.bpf.c). Types only; what the
// programs' maps hold is decided in TypeScript.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadAddon, packageRoot } from '../native.js';

/** Frame verdicts written by the batch callback. */
export const VERDICT_DROP = 0;
export const VERDICT_TX = 1;

/** XDP actions (as returned by XdpProgram.testRun). */
export const XDP_DROP = 1;
export const XDP_PASS = 2;
export const XDP_REDIRECT = 4;

export type XdpMode = 'native' | 'generic';

/** Packet buffer memory registered with the kernel; `buffer` views all of it. */
export interface Umem {
  readonly buffer: ArrayBuffer;
  /** Unregisters the UMEM (its sockets must be closed first); `buffer` stays readable. */
  close(): void;
}

export interface XskStats {
  rx: number;
  tx: number;
  /** Frames given back to the fill ring by a drop verdict. */
  dropped: number;
  /** Transmit verdicts that found the egress tx ring full (the frame was dropped). */
  txRingFull: number;
  batches: number;
  /** The kernel's XDP_STATISTICS for this socket (absent once closed). */
  kernelRxDropped?: number;
  kernelRxRingFull?: number;
  kernelFillRingEmpty?: number;
  kernelRxInvalid?: number;
  kernelTxInvalid?: number;
}

/**
 * Called once per batch of n received frames: frame i is at UMEM offset addr[i] with
 * length len[i]; set verdict[i] to VERDICT_TX (after rewriting it in place) or leave
 * VERDICT_DROP.
 */
export type BatchHandler = (n: number) => void;

export interface XskSocket {
  readonly fd: number;
  /** Starts forwarding from this (rx) socket to `out` (a tx socket on the same UMEM). */
  start(out: XskSocket, addr: Uint32Array, len: Uint32Array, verdict: Uint8Array, onBatch: BatchHandler): void;
  stop(): void;
  /**
   * Queues n frames the caller wrote into the UMEM for sending (a traffic generator, not
   * while forwarding); returns how many fit in the tx ring.
   */
  transmit(addr: Uint32Array, len: Uint32Array, n: number): number;
  close(): void;
  stats(): XskStats;
}

export interface XdpProgram {
  /** Number of BPF instructions of the program. */
  readonly instructions: number;
  /** Attaches as a bpf_link: detached when closed or when the process dies. */
  attach(ifname: string, mode: XdpMode): void;
  detach(ifname: string): void;
  /** Frames of rx queue `queue` that match a VIP go to the AF_XDP socket `fd`. */
  setSocket(queue: number, fd: number): void;
  /** VIPs are 16-byte keys, IPv4 as ::ffff:a.b.c.d (see toKeyAddress). */
  addVip(key: Uint8Array): void;
  removeVip(key: Uint8Array): boolean;
  vips(): Uint8Array[];
  /** The XDP action for one frame, run by the kernel (BPF_PROG_TEST_RUN); frame gets the program's rewrite. */
  testRun(frame: Uint8Array): number;
  /** xdplb_forward: sends out of `ifname`, from `mac` (its address). */
  setEgress(ifname: string, mac: Uint8Array): void;
  /** xdplb_forward: the table, ENTRY_WORDS int32s per lookup entry (src/xdp/offload.ts). */
  publish(entries: Int32Array): void;
  /** xdplb_forward: frames forwarded (and to each of the first `slots` target slots) and VIP frames declined to the socket. */
  counters(slots?: number): { forwarded: number; declined: number; targets: Float64Array };
  close(): void;
}

export interface XskAddon {
  Umem: new (frameCount: number, frameSize: number) => Umem;
  XskSocket: new (umem: Umem, ifname: string, queue: number, rings: { rx?: boolean; tx?: boolean; ringSize?: number }) => XskSocket;
  /** With targets > 0 the forwarding program (xdplb_forward), counting that many target slots. */
  XdpProgram: new (
    maxVips?: number,
    maxQueues?: number,
    targets?: number,
  ) => XdpProgram;
}

/** The addon as built: XdpProgram loads the compiled program from the file it is given. */
interface XskNative extends Omit<XskAddon, 'XdpProgram'> {
  XdpProgram: new (objectFile: string, maxVips?: number, maxQueues?: number, targets?: number) => XdpProgram;
}

/** The compiled XDP program, built by `make build` next to the addons. */
export function xdpObjectFile(): string {
  return join(packageRoot(), 'build', 'Release', 'xdplb.bpf.o');
}

let addon: XskAddon | undefined;

export function xskAddon(): XskAddon {
  if (addon) return addon;
  const native = loadAddon<XskNative>('xsk');
  const file = xdpObjectFile();
  // Checked when a program is made, not here: a traffic generator uses the sockets alone.
  class XdpProgramOfBuild extends native.XdpProgram {
    constructor(maxVips?: number, maxQueues?: number, targets?: number) {
      if (!existsSync(file)) throw new Error(`the XDP program is not built (${file}): run 'make build' (needs apt package clang)`);
      super(file, maxVips, maxQueues, targets);
    }
  }
  addon = { Umem: native.Umem, XskSocket: native.XskSocket, XdpProgram: XdpProgramOfBuild };
  return addon;
}
