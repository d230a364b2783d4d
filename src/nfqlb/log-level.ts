// The log level of a running nfqlb, in the shared { level, mask } words (tracer.ts): created
// or claimed by the lb, changed by `nfqlb loglevel`, followed by the lb's logger.
import { existsSync, statSync } from 'node:fs';
import { log } from '../log.js';
import { createShm, deleteShm, openShm, shmPath } from '../shm.js';
import { auditChange } from './audit.js';
import { LEVEL_WORD, MASK_WORD, TRACE_SHM } from './tracer.js';

const DEFAULT_LEVEL = 5;

/** The shared { level, mask } words, created (level 5, mask 0) when missing. */
export function openLogConfig(name = TRACE_SHM): Int32Array {
  if (!existsSync(shmPath(name))) {
    const created = new Int32Array(createShm(name, 8));
    created[LEVEL_WORD] = DEFAULT_LEVEL;
    created[MASK_WORD] = 0;
    return created;
  }
  return new Int32Array(openShm(name, true), 0, 2);
}

/**
 * The lb's { level, mask } words. A file someone else owns (or may write) would let them
 * set our level and trace mask, so it is replaced by one of our own (mode 0600).
 */
export function claimLogConfig(name = TRACE_SHM): Int32Array {
  try {
    const st = statSync(shmPath(name));
    if (st.uid !== (process.geteuid?.() ?? 0) || (st.mode & 0o022) !== 0) {
      log.warn({ shm: name, uid: st.uid, mode: (st.mode & 0o777).toString(8) }, 'log config not ours: replaced');
      deleteShm(name);
    }
  } catch {
    // Missing: openLogConfig creates it.
  }
  return openLogConfig(name);
}

/** The reference's levels (4 warning, 5 notice, 6 info, 7 debug) as pino levels. */
export function pinoLevel(level: number): string {
  if (level >= 7) return 'debug';
  if (level >= 5) return 'info';
  if (level >= 4) return 'warn';
  return 'error';
}

/** Follows `nfqlb loglevel` changes; returns a stop function. */
export function followLogLevel(config: Int32Array): () => void {
  let seen = config[LEVEL_WORD]!;
  const apply = () => {
    const now = config[LEVEL_WORD]!;
    // Only root can write the (0600) file, so the shm is the origin we can name.
    if (now !== seen) auditChange({}, { via: `shm ${TRACE_SHM}`, loglevel: { from: seen, to: now } }, 'log level changed');
    seen = now;
    const level = pinoLevel(now);
    if (log.level !== level) log.level = level;
  };
  apply();
  const timer = setInterval(apply, 500);
  timer.unref();
  return () => clearInterval(timer);
}
