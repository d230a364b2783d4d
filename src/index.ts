// The library: everything the nfqlb and xdplb commands use, importable and scriptable.

export { DrainList, drainShmName } from './drain-list.js';
export { GlibcRandom } from './glibc-random.js';
export { djb2, HASH_KEY_BYTES, hashTuple, packetHash } from './hash.js';
export { fillPermutation, populate, primeBelow } from './maglev.js';
export { Balancer, type BalancerOptions, type FwmarkFn, SingleTable, serveQueue, type TargetSelector } from './nfqlb/balancer.js';
export {
  ConnTrack,
  type ConnTrackOptions,
  type ConnTrackTimeouts,
  CT_DEFAULT_TIMEOUTS,
  CT_STAT,
  CT_STAT_NAMES,
  CT_STATE,
} from './nfqlb/conntrack.js';
export {
  type ControlAddress,
  DEFAULT_FLOW_ADDRESS,
  DEFAULT_TRACE_ADDRESS,
  flowAddress,
  parseControlAddress,
} from './nfqlb/control-address.js';
export { fwmarkTotals, MAX_FWMARKS, QUEUE_COUNTER, type QueueCounterName, QueueCounters } from './nfqlb/counters.js';
export { flowRequest } from './nfqlb/flow-client.js';
export { FlowServer, parseRequest, specOfRequest } from './nfqlb/flow-server.js';
export {
  Flow,
  FlowError,
  FlowSelector,
  type FlowSelectorOptions,
  FlowSet,
  type FlowSpec,
  formatMatch,
  MAX_FLOW_SLOTS,
  type MatchItem,
  parseMatch,
} from './nfqlb/flow-table.js';
export {
  FRAG_DROP,
  FRAG_STAT,
  FRAG_STATS_BYTES,
  FRAG_STORED,
  FragTable,
  type FragTableOptions,
  formatFragStats,
  type InjectFn,
} from './nfqlb/frag-table.js';
export { openLogConfig, pinoLevel } from './nfqlb/log-level.js';
export {
  type FragmentOptions,
  type LbOptions,
  parseQueueRange,
  type QueueContext,
  type QueueHandle,
  runLb,
  startQueue,
} from './nfqlb/run.js';
export { TraceServer } from './nfqlb/trace-server.js';
export { parseTraceSelection, TRACE, TRACE_SHM, Tracer } from './nfqlb/tracer.js';
export { Tun } from './nfqlb/tun.js';
export { DESC, kernelQueueStats, NF_ACCEPT, NF_DROP, NfQueue, type NfQueueOptions } from './nfqueue.js';
export { PacketInfo, parsePacket } from './packet.js';
export { type EtcdOptions, Registry, RegistryError, type RegistryErrorCode } from './registry/etcd.js';
export {
  type FollowerOptions,
  type Publication,
  RegistryFollower,
  type TableSlots,
  tableHash,
  tableSlots,
  WarnLimiter,
} from './registry/follower.js';
export {
  DEFAULT_PREFIX,
  type DesiredSet,
  type DesiredTarget,
  desiredSet,
  type RejectedEntry,
  type RejectKind,
  ServiceKeys,
} from './registry/model.js';
export { createShm, deleteShm, openShm, publishShm, shmPath } from './shm.js';
export {
  type DrainOptions,
  type FollowOptions,
  NFQLB_TABLE,
  TableFollower,
  type TableKind,
  TargetStore,
  type TargetTableShape,
} from './target-store.js';
export { type TableChange, TargetTable } from './target-table.js';
export { type ForwarderCounters, FrameForwarder } from './xdp/forwarder.js';
export { runXdpLb, XdpLb, type XdpLbOptions } from './xdp/run.js';
export { formatMac, parseMac, XDPLB_M, XDPLB_N, XDPLB_TABLE, XdpTable } from './xdp/table.js';
export { VERDICT_DROP, VERDICT_TX, type XdpMode, type XskAddon, xskAddon } from './xdp/xsk.js';
