// SPDX-License-Identifier: GPL-2.0
// nfqlb's flow hash in BPF: the 40-byte key a packet gives and djb2 over it, bit for bit as
// nfqlb computes them (src/hash.ts has the layout), so that a program in the kernel sends a
// flow to the same target as the lb in user space would. Only whole TCP, UDP and SCTP packets
// to a VIP are keyed here; what the user-space lb handles with more state (fragments, ICMP,
// other protocols, cut headers, uncommon IPv6 extension headers) is declined to it.
#pragma once

#include <linux/in.h>

#include "vip.h"

#define HASH_MODE_SCTP_PORTS 1
// A longer IPv6 extension chain is left to the lb (which walks up to 16).
#define MAX_EXT_HEADERS 8

struct flow_key {
  struct key_address src;
  struct key_address dst;
  __u16 user;       // the ICMP echo identifier in nfqlb; 0 for the protocols keyed here
  __u16 proto;      // the IP protocol number, in host order as nfqlb keys it
  __be16 ports[2];  // source and destination, as on the wire
};

enum flow_verdict {
  FLOW_NOT_OURS,  // not a sane IP packet, or not to a VIP: none of the program's business
  FLOW_DECLINED,  // to a VIP, but for the lb to decide
  FLOW_KEYED,
};

// Where the transport header starts and its packet ends (offsets from the IP header).
struct flow_l4 {
  __u32 offset;
  __u32 end;
  __u8 proto;
};

static __always_inline enum flow_verdict flow_ipv4(struct frame f, struct flow_key *key, struct flow_l4 *l4) {
  struct iphdr h;
  if (!ip_load(f, 0, &h, sizeof(h)) || h.version != 4) return FLOW_NOT_OURS;
  __u32 total = bpf_ntohs(h.tot_len);
  l4->offset = h.ihl * 4;
  // A length of 0 (BIG TCP packets over 64 KiB have it) leaves the frame to bound the packet.
  if (l4->offset < sizeof(h) || (total != 0 && total < l4->offset)) return FLOW_NOT_OURS;
  if (total != 0) l4->end = total;
  ipv4_key_address(&key->src, h.saddr);
  ipv4_key_address(&key->dst, h.daddr);
  if (!is_vip(&key->dst)) return FLOW_NOT_OURS;
  // MF or a fragment offset: the lb's fragment table handles it.
  if (h.frag_off & bpf_htons(0x3fff)) return FLOW_DECLINED;
  l4->proto = h.protocol;
  return FLOW_KEYED;
}

static __always_inline enum flow_verdict flow_ipv6(struct frame f, struct flow_key *key, struct flow_l4 *l4) {
  struct ipv6hdr h;
  if (!ip_load(f, 0, &h, sizeof(h)) || h.version != 6) return FLOW_NOT_OURS;
  __u32 payload = bpf_ntohs(h.payload_len);
  if (payload != 0) l4->end = sizeof(h) + payload;
  ipv6_key_address(&key->src, &h.saddr);
  ipv6_key_address(&key->dst, &h.daddr);
  if (!is_vip(&key->dst)) return FLOW_NOT_OURS;
  __u8 proto = h.nexthdr;
  l4->offset = sizeof(h);
  // Hop-by-hop, routing, destination options and AH are skipped; a fragment header is not,
  // so a fragment ends up declined as any other protocol.
  for (int i = 0; i < MAX_EXT_HEADERS; i++) {
    __u8 ext[2];  // next header, length
    if (proto != IPPROTO_HOPOPTS && proto != IPPROTO_ROUTING && proto != IPPROTO_DSTOPTS && proto != IPPROTO_AH) break;
    if (l4->offset + 2 > l4->end || !ip_load(f, l4->offset, ext, 2)) return FLOW_DECLINED;
    l4->offset += proto == IPPROTO_AH ? (ext[1] + 2) * 4 : (ext[1] + 1) * 8;
    proto = ext[0];
  }
  l4->proto = proto;
  return FLOW_KEYED;
}

// Fills key for a whole TCP, UDP or SCTP packet to a VIP. With sctp_encap (a UDP port, 0 for
// none), SCTP over UDP to that port is keyed as SCTP on its inner ports, as nfqlb does. l4
// tells where the transport header is (end 0xffffffff: the IP header gave no length).
static __always_inline enum flow_verdict flow_key_of(struct frame f, __be16 ethertype, __u32 sctp_encap,
                                                     struct flow_key *key, struct flow_l4 *l4) {
  *l4 = (struct flow_l4){.end = 0xffffffff};
  enum flow_verdict v = FLOW_NOT_OURS;
  __builtin_memset(key, 0, sizeof(*key));
  if (ethertype == bpf_htons(ETH_P_IP))
    v = flow_ipv4(f, key, l4);
  else if (ethertype == bpf_htons(ETH_P_IPV6))
    v = flow_ipv6(f, key, l4);
  if (v != FLOW_KEYED) return v;
  if (l4->proto != IPPROTO_TCP && l4->proto != IPPROTO_UDP && l4->proto != IPPROTO_SCTP) return FLOW_DECLINED;
  // Cut transport headers are hashed on the addresses by the lb: leave them to it.
  if (l4->offset + 4 > l4->end || !ip_load(f, l4->offset, key->ports, 4)) return FLOW_DECLINED;
  if (l4->proto == IPPROTO_UDP && sctp_encap != 0 && bpf_ntohs(key->ports[1]) == sctp_encap) {
    // After the 8-byte UDP header: the SCTP common header, ports first.
    if (l4->offset + 12 > l4->end || !ip_load(f, l4->offset + 8, key->ports, 4)) return FLOW_DECLINED;
    l4->proto = IPPROTO_SCTP;
  }
  key->proto = l4->proto;
  return FLOW_KEYED;
}

static __always_inline __u32 djb2(const __u8 *bytes, int from, int to) {
  __u32 hash = 5381;
#pragma unroll
  for (int i = from; i < to; i++) hash = hash * 33 + bytes[i];
  return hash;
}

// With hash mode 1 (nfqlb's default), SCTP hashes its ports only: a multi-homed association
// uses several addresses, and all its paths must reach the same target.
static __always_inline __u32 flow_hash(const struct flow_key *key, __u32 hash_mode) {
  if (hash_mode == HASH_MODE_SCTP_PORTS && key->proto == IPPROTO_SCTP)
    return djb2((const __u8 *)key, offsetof(struct flow_key, ports), sizeof(*key));
  return djb2((const __u8 *)key, 0, sizeof(*key));
}
