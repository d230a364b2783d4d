// What `xdplb lb --offload` publishes to its XDP program (native/bpf/xdplb.bpf.c,
// xdplb_forward): per lookup entry (hash % M) the slot the TypeScript forwarder would send to
// and that target's MAC, so the kernel picks the same target for every packet it forwards.
import type { XdpTable } from './table.js';

/** int32s per lookup entry: the slot (-1 for no active target), MAC bytes 0..3, MAC bytes 4..5. */
export const ENTRY_WORDS = 3;
const MAC_STRIDE = 8;

/**
 * Fills `out` (M * ENTRY_WORDS) from the table as FrameForwarder reads it. The words are the
 * bytes of struct target_entry on a little-endian host, which is what Node runs on.
 */
export function targetEntries(t: XdpTable, out: Int32Array): void {
  const { lookup } = t.targets;
  const m = t.macs;
  for (let i = 0, w = 0; i < t.M; i++, w += ENTRY_WORDS) {
    const slot = lookup[i]!;
    if (t.targets.slotFwmark(slot) < 0) {
      out[w] = -1;
      out[w + 1] = 0;
      out[w + 2] = 0;
      continue;
    }
    const a = slot * MAC_STRIDE;
    out[w] = slot;
    out[w + 1] = m[a]! | (m[a + 1]! << 8) | (m[a + 2]! << 16) | (m[a + 3]! << 24);
    out[w + 2] = m[a + 4]! | (m[a + 5]! << 8);
  }
}
