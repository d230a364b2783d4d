// Waiting for another process's state change: poll a condition until it holds or a deadline
// passes. A test never sleeps a fixed time for this: on a busy 2-core machine any fixed time
// can be too short, and when it is long enough it wastes the difference on every run.

export interface WaitOptions {
  /** Give up after this many ms (default 10 000): the failure then names `what`. */
  timeout?: number;
  /** Poll every this many ms (default 20). */
  interval?: number;
}

/**
 * Resolves with the first truthy value `condition` returns (it may be async); rejects with
 * "timed out after N ms waiting for <what>" (and the last error the condition threw, if any)
 * once the deadline passes.
 */
export async function waitFor<T>(what: string, condition: () => T | Promise<T>, o: WaitOptions = {}): Promise<NonNullable<T>> {
  const timeout = o.timeout ?? 10_000;
  const deadline = Date.now() + timeout;
  let last: unknown;
  for (;;) {
    try {
      const v = await condition();
      if (v) return v as NonNullable<T>;
      last = undefined;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      const why = last instanceof Error ? `: ${last.message}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, o.interval ?? 20));
  }
}

/**
 * Resolves with `sample()` once two samples `settle` ms apart are equal (JSON-compared): for
 * counters that another process is still moving. Rejects like waitFor at the deadline.
 */
export async function waitUntilStable<T>(
  what: string,
  sample: () => T | Promise<T>,
  o: WaitOptions & { settle?: number } = {},
): Promise<T> {
  let prev = JSON.stringify(await sample());
  return waitFor(
    `${what} to stop changing`,
    async () => {
      await new Promise((r) => setTimeout(r, o.settle ?? 200));
      const v = await sample();
      const s = JSON.stringify(v);
      if (s === prev) return { v };
      prev = s;
      return undefined;
    },
    o,
  ).then((x) => x.v);
}
