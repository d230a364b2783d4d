// SPDX-License-Identifier: GPL-2.0
// nfqlb's in-kernel fast path (`nfqlb lb --offload`), attached at tc ingress (tcx).
//
// For a whole TCP, UDP or SCTP packet to a VIP it computes nfqlb's flow hash (flow_hash.h:
// hash modes 0 and 1, --sctp_encap) and sets skb->mark to the fwmark the Maglev table gives,
// so `ip rule fwmark` routes it without a trip through NFQUEUE. Anything it does not fully
// understand (fragments, ICMP, other protocols, cut headers, IPv6 extension headers other
// than hop-by-hop, routing, destination options and AH, no active target) is left unmarked:
// the iptables rule queues unmarked packets and the lb decides them as before. Every packet
// continues (TCX_NEXT); the program never drops.
//
// The table is published by the lb as a whole new map swapped in at once (maglev_table.h).
#include "counters.h"
#include "flow_hash.h"
#include "maglev_table.h"

#define TCX_NEXT (-1)

// Set once by the lb before it attaches (see TcOffload in native/tc_offload.cc).
struct offload_config {
  __u32 hash_mode;
  __u32 sctp_encap;  // UDP port carrying SCTP, 0 = none
};

enum offload_counter { CNT_MARKED, CNT_DECLINED, CNT_COUNT };

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct offload_config);
} config SEC(".maps");

// Lookup entry i gives the fwmark of active[lookup[i]], -1 if none.
MAGLEV_TABLES(__s32);

// Packets marked, and VIP packets left to the queue.
PERCPU_COUNTERS(counters, CNT_COUNT);

// Counts `which` and lets the packet continue.
static __always_inline int counted(__u32 which) {
  count(&counters, which);
  return TCX_NEXT;
}

SEC("tc")
int tslb_offload(struct __sk_buff *skb) {
  __u32 zero = 0;
  struct offload_config *cfg = bpf_map_lookup_elem(&config, &zero);
  if (!cfg) return TCX_NEXT;  // never: a one-entry array always has entry 0

  struct flow_key key;
  struct flow_l4 l4;
  switch (flow_key_of(tc_frame(skb), skb->protocol, cfg->sctp_encap, &key, &l4)) {
    case FLOW_NOT_OURS:
      return TCX_NEXT;
    case FLOW_DECLINED:
      return counted(CNT_DECLINED);
    case FLOW_KEYED:
      break;
  }
  __u32 hash = flow_hash(&key, cfg->hash_mode);

  __s32 *fwmark = maglev_entry(&tables, hash);
  // No active target (or fwmark 0, which is no mark): the lb applies --notargets_fwmark.
  if (!fwmark || *fwmark <= 0) return counted(CNT_DECLINED);
  skb->mark = *fwmark;
  return counted(CNT_MARKED);
}

char LICENSE[] SEC("license") = "GPL";
