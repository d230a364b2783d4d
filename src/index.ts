// The library: everything the nfqlb and xdplb commands use, importable and scriptable.
export { primeBelow, fillPermutation, populate } from './maglev.js';
export { GlibcRandom } from './glibc-random.js';
export { TargetTable } from './target-table.js';
export { djb2, hashTuple, HASH_KEY_BYTES } from './hash.js';
export { PacketInfo, parsePacket, packetHash } from './packet.js';
export { createShm, openShm, deleteShm, shmPath } from './shm.js';
export { NfQueue, DESC, NF_ACCEPT, NF_DROP, kernelQueueStats, type NfQueueOptions } from './nfqueue.js';
export { Balancer, serveQueue, type BalancerOptions, type FwmarkFn } from './nfqlb/lb.js';
export { runLb, parseQueueRange, type LbOptions } from './nfqlb/run.js';
export { XdpTable, XDPLB_M, XDPLB_N, parseMac, formatMac } from './xdp/table.js';
export { FrameForwarder, type ForwarderCounters } from './xdp/forwarder.js';
export { XdpLb, runXdpLb, type XdpLbOptions } from './xdp/lb.js';
export { xskAddon, VERDICT_DROP, VERDICT_TX, type XdpMode, type XskAddon } from './xdp/xsk.js';
