// A tun device nfqlb re-injects stored IP fragments through (`nfqlb lb --tun=nfqlb0`): written
// packets enter the kernel as if received on the device, so they pass PREROUTING (and the
// NFQUEUE rule) again, now after their first fragment. The native class only opens and writes.
import { loadAddon } from '../native.js';

interface NativeTun {
  write(bytes: Uint8Array, offset: number, length: number): number;
  mtu(): number;
  fd(): number;
  close(): void;
}
type NativeTunClass = new (name: string, fd?: number) => NativeTun;

export class Tun {
  readonly name: string;
  readonly #native: NativeTun;

  /**
   * Attaches to tun device `name` (made with `ip tuntap add <name> mode tun`); throws one line
   * on failure. With `sharedFd` (another Tun's fd(), e.g. from the main thread) it writes
   * through that fd instead: a single-queue tun device takes one fd only.
   */
  constructor(name: string, sharedFd?: number, Native?: NativeTunClass) {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new RangeError(`tun: bad device name '${name}'`);
    this.name = name;
    const Impl = Native ?? loadAddon<{ Tun: NativeTunClass }>('tun').Tun;
    this.#native = sharedFd === undefined ? new Impl(name) : new Impl(name, sharedFd);
  }

  /** The device's fd, to share with worker threads. */
  fd(): number {
    return this.#native.fd();
  }

  /** Writes one IP packet; returns the bytes written or -errno (a full or down device loses it). */
  write(bytes: Uint8Array, offset: number, length: number): number {
    return this.#native.write(bytes, offset, length);
  }

  /** The device's MTU. */
  mtu(): number {
    return this.#native.mtu();
  }

  close(): void {
    this.#native.close();
  }
}
