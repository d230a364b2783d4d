// The library: everything the nfqlb and xdplb commands use, importable and scriptable.
export { primeBelow, fillPermutation, populate } from './maglev.js';
export { GlibcRandom } from './glibc-random.js';
export { TargetTable, type TableChange } from './target-table.js';
export {
  TargetStore, TableFollower, NFQLB_TABLE, type TableKind, type TargetTableShape, type DrainOptions, type FollowOptions,
} from './target-store.js';
export { djb2, hashTuple, packetHash, HASH_KEY_BYTES } from './hash.js';
export { PacketInfo, parsePacket } from './packet.js';
export { createShm, openShm, deleteShm, shmPath, publishShm } from './shm.js';
export { NfQueue, DESC, NF_ACCEPT, NF_DROP, kernelQueueStats, type NfQueueOptions } from './nfqueue.js';
export { Balancer, serveQueue, type BalancerOptions, type FwmarkFn } from './nfqlb/balancer.js';
export { runLb, parseQueueRange, type LbOptions, type FragmentOptions } from './nfqlb/run.js';
export { XdpTable, XDPLB_TABLE, XDPLB_M, XDPLB_N, parseMac, formatMac } from './xdp/table.js';
export { FrameForwarder, type ForwarderCounters } from './xdp/forwarder.js';
export { XdpLb, runXdpLb, type XdpLbOptions } from './xdp/run.js';
export { xskAddon, VERDICT_DROP, VERDICT_TX, type XdpMode, type XskAddon } from './xdp/xsk.js';
export {
  FragTable, FRAG_STAT, FRAG_STATS_BYTES, FRAG_STORED, FRAG_DROP, formatFragStats, type FragTableOptions, type InjectFn,
} from './nfqlb/frag-table.js';
export {
  FlowSet, FlowSelector, Flow, FlowError, parseMatch, formatMatch, MAX_FLOW_SLOTS, type FlowSpec, type MatchItem, type FlowSelectorOptions,
} from './nfqlb/flow-table.js';
export { SingleTable, type TargetSelector } from './nfqlb/balancer.js';
export { QueueCounters, QUEUE_COUNTER, MAX_FWMARKS, fwmarkTotals, type QueueCounterName } from './nfqlb/counters.js';
export { startQueue, type QueueContext, type QueueHandle } from './nfqlb/run.js';
export { FlowServer, parseRequest, specOfRequest } from './nfqlb/flow-server.js';
export { flowRequest } from './nfqlb/flow-client.js';
export {
  parseControlAddress, flowAddress, DEFAULT_FLOW_ADDRESS, DEFAULT_TRACE_ADDRESS, type ControlAddress,
} from './nfqlb/control-address.js';
export { Tracer, TRACE, TRACE_SHM, parseTraceSelection } from './nfqlb/tracer.js';
export { TraceServer } from './nfqlb/trace-server.js';
export { openLogConfig, pinoLevel } from './nfqlb/log-level.js';
export { Tun } from './nfqlb/tun.js';
export {
  ConnTrack, CT_STAT, CT_STAT_NAMES, CT_STATE, CT_DEFAULT_TIMEOUTS, type ConnTrackOptions, type ConnTrackTimeouts,
} from './nfqlb/conntrack.js';
export { DrainList, drainShmName } from './drain-list.js';
