// Who may use nfqlb's control channels (flow and trace).
//   unix:<name>  the peer's credentials (SO_PEERCRED): root only. The reference's own client
//                works here unchanged.
//   tcp:...      anyone who can connect, so the client must present the control key: the
//                contents of a root-only file (default /run/nfqlb/control.key, or
//                $NFQLB_CONTROL_KEY) that the lb creates when missing. The key is compared in
//                constant time. A tcp address that is not loopback is refused at start unless
//                the operator passes --allow_remote.
// The key travels as one `auth:<key>` line before the request (flow) or as the first line
// (trace); the reference's client cannot send it, so it must use the unix socket.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, constants, fstatSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { Socket } from 'node:net';
import { dirname } from 'node:path';
import { parseIPv4, parseIPv6 } from '../address.js';
import { loadAddon } from '../native.js';
import { UsageError } from '../usage-error.js';
import { type ControlAddress, formatControlAddress } from './control-address.js';

export const DEFAULT_KEY_FILE = '/run/nfqlb/control.key';
/** What a refusal reply starts with, so a client can tell it from a command's own FAIL. */
export const REFUSED = 'FAIL: refused: ';

/** The key file: $NFQLB_CONTROL_KEY or /run/nfqlb/control.key. */
export function keyFile(): string {
  return process.env.NFQLB_CONTROL_KEY || DEFAULT_KEY_FILE;
}

/**
 * The lb's key: read from `path`, or created there (0600, directory 0700) when missing. A
 * file that others could read or write, or that someone else owns, is refused: its key
 * would prove nothing.
 */
export function serverKey(path = keyFile()): Buffer {
  let fd: number;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, `${randomBytes(32).toString('hex')}\n`);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`control key ${path}: ${(e as Error).message}`);
  }
  fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    const uid = process.geteuid?.() ?? 0;
    if (!st.isFile()) throw new UsageError(`control key ${path} is not a regular file`);
    if (st.uid !== uid) throw new UsageError(`control key ${path} is owned by uid ${st.uid}, not by us (uid ${uid}): remove it`);
    if ((st.mode & 0o077) !== 0)
      throw new UsageError(`control key ${path} is accessible by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
    const key = readFileSync(fd, 'utf8').trim();
    if (key.length < 16) throw new UsageError(`control key ${path} is shorter than 16 characters`);
    return Buffer.from(key);
  } finally {
    closeSync(fd);
  }
}

/** The client's key, or why it has none (the server then refuses and says so). */
export function clientKey(path = keyFile()): { key: string } | { missing: string } {
  try {
    const key = readFileSync(path, 'utf8').trim();
    if (key.includes('\n')) return { missing: `${path} holds more than one line` };
    return { key };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return { missing: `cannot read the control key ${path} (${err.code ?? err.message})` };
  }
}

/** Constant-time comparison; hashing first makes the lengths equal. */
export function keyMatches(expected: Buffer, given: string | undefined): boolean {
  if (given === undefined) return false;
  const a = createHash('sha256').update(expected).digest();
  const b = createHash('sha256').update(given.trim()).digest();
  return timingSafeEqual(a, b);
}

export function isLoopback(host: string): boolean {
  const v4 = parseIPv4(host);
  if (v4 !== null) return v4[0] === 127;
  const v6 = parseIPv6(host);
  if (v6 === null) return false;
  if (v6.subarray(0, 15).every((b) => b === 0)) return v6[15] === 1;
  // ::ffff:127.x.y.z
  return v6.subarray(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff && v6[12] === 127;
}

/** Refuses, at start, a tcp address reachable from other hosts unless the operator allows it. */
export function checkListenAddress(a: ControlAddress, allowRemote: boolean, what: string): void {
  if (a.kind === 'tcp' && !allowRemote && !isLoopback(a.host)) {
    throw new UsageError(
      `${what} ${formatControlAddress(a)} is not a loopback address: other hosts could reach it; pass --allow_remote to accept that`,
    );
  }
}

/** Who is at the other end, for the audit log. */
export interface Peer {
  uid?: number;
  pid?: number;
  address?: string;
}

interface PeerCredAddon {
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
}

/** The peer of an accepted connection: uid/pid on a unix socket, address:port on tcp. */
export function peerOf(c: Socket, a: ControlAddress): Peer {
  if (a.kind === 'tcp') return { address: `${c.remoteAddress}:${c.remotePort}` };
  const fd = (c as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return {};
  try {
    const cred = loadAddon<PeerCredAddon>('peercred').peerCredentials(fd);
    return { uid: cred.uid, pid: cred.pid };
  } catch {
    return {};
  }
}

/**
 * Admission of a connection before any request is read: a unix peer must be root; a tcp
 * peer is admitted pending its key (checked with `keyMatches`). Returns the refusal reason.
 */
export function unixRefusal(peer: Peer, a: ControlAddress): string | null {
  return a.kind === 'unix' && peer.uid !== 0 ? 'root only (the unix socket checks the peer)' : null;
}
