// SPDX-License-Identifier: GPL-2.0
// The XDP programs of xdplb; the lb attaches one of them to its ingress device.
//
// xdplb_vip: a frame whose IPv4 or IPv6 destination is a VIP goes to the AF_XDP socket of its
// rx queue, where the lb in user space forwards it; every other frame, and a VIP frame on a
// queue without a socket, goes on to the kernel (XDP_PASS). It only finds the destination:
// fragments, ICMP and anything else to a VIP go to the lb too.
//
// xdplb_forward (`xdplb lb --offload`): the lb's decision in the kernel. A whole TCP, UDP or
// SCTP packet to a VIP is hashed as the lb hashes it (flow_hash.h, hash mode 1), its target
// taken from the published Maglev table (maglev_table.h), its MAC addresses rewritten (the
// target's, the egress device's) and the frame redirected to the egress device. What it
// declines goes to the AF_XDP socket as with xdplb_vip: fragments, other protocols, cut or
// unusual headers, no active target, and TCP/UDP frames whose checksum holds only the
// pseudo-header sum (a local veth sender's checksum offload: the lb completes it, the kernel
// could not once the frame is redirected). Frames not to a VIP pass.
#include "counters.h"
#include "flow_hash.h"
#include "maglev_table.h"

// rx queue -> AF_XDP socket; user space sizes it (maxQueues) and fills it (setSocket).
struct {
  __uint(type, BPF_MAP_TYPE_XSKMAP);
  __uint(max_entries, 64);
  __type(key, __u32);
  __type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xdplb_vip(struct xdp_md *ctx) {
  struct key_address dst;
  if (!ip_destination(xdp_frame(ctx), &dst) || !is_vip(&dst)) return XDP_PASS;
  return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

// ---- xdplb_forward

// Lookup entry i: the slot of active[lookup[i]] (-1: no active target) and that target's MAC.
struct target_entry {
  __s32 slot;
  __u8 mac[ETH_ALEN];
  __u16 pad;
};

MAGLEV_TABLES(struct target_entry);

// Set once by the lb before it attaches (setEgress in native/xdp_program.cc).
struct forward_config {
  __u8 src_mac[ETH_ALEN];  // the egress device's address
  __u16 pad;
};

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct forward_config);
} config SEC(".maps");

// Entry 0: the egress device.
struct {
  __uint(type, BPF_MAP_TYPE_DEVMAP);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} egress SEC(".maps");

enum forward_counter { CNT_FORWARDED, CNT_DECLINED, CNT_COUNT };

// Frames forwarded, and VIP frames left to the AF_XDP socket.
PERCPU_COUNTERS(counters, CNT_COUNT);

// Frames forwarded to each target, by slot; user space sizes it (the table's N).
PERCPU_COUNTERS(target_counters, 1);

static __always_inline int decline(struct xdp_md *ctx) {
  count(&counters, CNT_DECLINED);
  return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

// Whether a TCP or UDP checksum holds just the pseudo-header sum (as src/xdp/checksum.ts tells
// it): the key's addresses are the packet's, and an IPv4 key's ::ffff: prefix adds 0xffff twice,
// which is 0 in one's complement. A packet without a length is left to the lb.
static __always_inline bool partial_checksum(struct frame f, const struct flow_key *key, const struct flow_l4 *l4) {
  __u32 field = l4->proto == IPPROTO_TCP ? 16 : l4->proto == IPPROTO_UDP ? 6 : 0;
  if (field == 0) return false;
  __be16 stored;
  if (l4->end == 0xffffffff || l4->offset + field + 2 > l4->end || !ip_load(f, l4->offset + field, &stored, 2))
    return true;
  __u32 csum = bpf_ntohs(stored);
  if (l4->proto == IPPROTO_UDP && csum == 0) return false;  // IPv4 UDP without checksum
  __u32 sum = l4->proto + (l4->end - l4->offset);
  const __u8 *a = key->src.bytes;  // source and destination, adjacent
#pragma unroll
  for (int i = 0; i < 2 * (int)sizeof(struct key_address); i += 2) sum += (a[i] << 8) | a[i + 1];
  return csum % 0xffff == sum % 0xffff;
}

SEC("xdp")
int xdplb_forward(struct xdp_md *ctx) {
  struct frame f = xdp_frame(ctx);
  struct flow_key key;
  struct flow_l4 l4;
  switch (flow_key_of(f, frame_ethertype(f), 0, &key, &l4)) {
    case FLOW_NOT_OURS:
      return XDP_PASS;
    case FLOW_DECLINED:
      return decline(ctx);
    case FLOW_KEYED:
      break;
  }
  if (partial_checksum(f, &key, &l4)) return decline(ctx);
  struct target_entry *t = maglev_entry(&tables, flow_hash(&key, HASH_MODE_SCTP_PORTS));
  __u32 zero = 0;
  struct forward_config *cfg = bpf_map_lookup_elem(&config, &zero);
  if (!t || t->slot < 0 || !cfg) return decline(ctx);
  // Whole: flow_key_of read past the Ethernet header.
  struct ethhdr *eth = (void *)(long)ctx->data;
  if ((void *)(eth + 1) > (void *)(long)ctx->data_end) return decline(ctx);
  __builtin_memcpy(eth->h_dest, t->mac, ETH_ALEN);
  __builtin_memcpy(eth->h_source, cfg->src_mac, ETH_ALEN);
  int action = bpf_redirect_map(&egress, 0, 0);
  if (action != XDP_REDIRECT) return decline(ctx);  // no egress device set
  count(&counters, CNT_FORWARDED);
  count(&target_counters, t->slot);
  return action;
}

char LICENSE[] SEC("license") = "GPL";
