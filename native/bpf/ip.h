// SPDX-License-Identifier: GPL-2.0
// IP headers as the lbs read them: whole, right after the Ethernet header, with their addresses
// in the 16-byte form that nfqlb's flow key and the VIP maps use (IPv4 as ::ffff:a.b.c.d), so
// that one map key and one hash serve both families.
#pragma once

#include <linux/ip.h>
#include <linux/ipv6.h>

#include "frame.h"

struct key_address {
  __u8 bytes[16];
};

static __always_inline void ipv4_key_address(struct key_address *a, __be32 ipv4) {
  __builtin_memset(a->bytes, 0, 10);
  a->bytes[10] = a->bytes[11] = 0xff;
  __builtin_memcpy(&a->bytes[12], &ipv4, 4);
}

static __always_inline void ipv6_key_address(struct key_address *a, const struct in6_addr *ipv6) {
  __builtin_memcpy(a->bytes, ipv6, 16);
}

// Copies len bytes at offset off from the IP header; false if the frame is shorter.
static __always_inline bool ip_load(struct frame f, __u32 off, void *to, __u32 len) {
  return frame_load(f, ETH_HLEN + off, to, len);
}

// The destination of an IPv4 or IPv6 frame whose fixed IP header is whole; false for other frames.
static __always_inline bool ip_destination(struct frame f, struct key_address *dst) {
  __be16 type = frame_ethertype(f);
  if (type == bpf_htons(ETH_P_IP)) {
    struct iphdr h;
    if (!ip_load(f, 0, &h, sizeof(h))) return false;
    ipv4_key_address(dst, h.daddr);
    return true;
  }
  if (type == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr h;
    if (!ip_load(f, 0, &h, sizeof(h))) return false;
    ipv6_key_address(dst, &h.daddr);
    return true;
  }
  return false;
}
