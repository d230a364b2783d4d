// SPDX-License-Identifier: GPL-2.0
// How the tc and XDP programs read a frame, so that parsing is written once for both.
//
// Both see the frame from its Ethernet header (the lbs attach to Ethernet devices only), and
// each program type has a helper that copies bytes out of it, also from past the linear part
// (skb pages, XDP fragments), and fails when the frame is too short: a parser takes that as
// "not a packet for us".
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <stdbool.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct frame {
  void *ctx;
  // Which helper reads ctx. Each program passes a constant, so only that helper is compiled
  // in: the verifier refuses the other program type's helper.
  bool xdp;
};

static __always_inline struct frame tc_frame(struct __sk_buff *skb) { return (struct frame){skb, false}; }

static __always_inline struct frame xdp_frame(struct xdp_md *ctx) { return (struct frame){ctx, true}; }

// Copies len bytes at offset off (from the Ethernet header) to `to`; false if the frame is shorter.
static __always_inline bool frame_load(struct frame f, __u32 off, void *to, __u32 len) {
  return (f.xdp ? bpf_xdp_load_bytes(f.ctx, off, to, len) : bpf_skb_load_bytes(f.ctx, off, to, len)) == 0;
}

// The Ethernet type in network order, 0 for a frame shorter than its Ethernet header.
static __always_inline __be16 frame_ethertype(struct frame f) {
  __be16 type;
  return frame_load(f, offsetof(struct ethhdr, h_proto), &type, sizeof(type)) ? type : 0;
}
