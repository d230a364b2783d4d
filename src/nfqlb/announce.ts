// `nfqlb lb --announce=IFNAME`: the lb holds a tun device that exists only while the process
// lives. A routing daemon announces the VIPs with a route through that device (BIRD: a static
// route `via "IFNAME"`, see contrib/bird/lb.conf), so the announcement follows the lb: the
// kernel deletes a non-persistent tun when its last fd closes, which happens on exit, SIGTERM,
// SIGKILL and crash alike, and the daemon withdraws the route at once. No watchdog to keep alive.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { log } from '../log.js';
import { UsageError } from '../usage-error.js';
import { Tun } from './tun.js';

/** Checks an --announce device name: valid, and no such device yet (we must own it). Throws one line. */
export function checkAnnounceDevice(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new UsageError(`--announce: bad device name '${name}'`);
  // Attaching to an existing (persistent) device would leave it behind when we die.
  if (existsSync(`/sys/class/net/${name}`)) throw new UsageError(`--announce: device ${name} exists; the lb must create it`);
  return name;
}

export class Announcement {
  #tun: Tun | null;

  private constructor(
    readonly name: string,
    tun: Tun,
  ) {
    this.#tun = tun;
  }

  /** Creates the device and sets it up (the daemon's route needs it up); throws one line. */
  static open(name: string): Announcement {
    checkAnnounceDevice(name);
    const tun = new Tun(name);
    try {
      execFileSync('ip', ['link', 'set', 'dev', name, 'up'], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      tun.close();
      throw new Error(`--announce: cannot set ${name} up: ${String((e as { stderr?: Buffer }).stderr ?? e).trim()}`);
    }
    log.info({ announce: name }, 'announcing');
    return new Announcement(name, tun);
  }

  /** Deletes the device (the routers withdraw the VIPs), then waits `drainMs` while they move the flows. */
  async withdraw(drainMs: number): Promise<void> {
    if (this.#tun === null) return;
    this.#tun.close();
    this.#tun = null;
    log.info({ announce: this.name, drainMs }, 'withdrawn: draining');
    await sleep(drainMs);
  }

  close(): void {
    this.#tun?.close();
    this.#tun = null;
  }
}
