// SPDX-License-Identifier: GPL-2.0
// The XDP program of xdplb: a frame whose IPv4 or IPv6 destination is a VIP goes to the
// AF_XDP socket of its rx queue, where the lb in user space forwards it; every other frame,
// and a VIP frame on a queue without a socket, goes on to the kernel (XDP_PASS).
//
// It only finds the destination: fragments, ICMP and anything else to a VIP go to the lb too.
#include "vip.h"

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

char LICENSE[] SEC("license") = "GPL";
