// SPDX-License-Identifier: GPL-2.0
// nfqlb's in-kernel fast path (`nfqlb lb --offload`), attached at tc ingress (tcx).
//
// For a whole TCP, UDP or SCTP packet to a VIP it computes nfqlb's flow hash (djb2 over the
// same 40-byte key, hash modes 0 and 1, --sctp_encap) and sets skb->mark to the fwmark the
// Maglev table gives, so `ip rule fwmark` routes it without a trip through NFQUEUE. Anything
// it does not fully understand (fragments, ICMP, other protocols, cut headers, IPv6 extension
// headers other than hop-by-hop, routing, destination options and AH, no active target) is
// left unmarked: the iptables rule queues unmarked packets and the lb decides them as before.
// Every packet continues (TCX_NEXT); the program never drops.
//
// The table is published by the lb as a whole new inner map swapped into `tables` (one RCU
// pointer exchange), so a packet sees either the old table or the new one, never a mix.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TCX_NEXT (-1)
#define HASH_MODE_SCTP_PORTS 1
#define KEY_BYTES 40
#define KEY_DST 16
#define KEY_PROTO 34
#define KEY_PORTS 36
// A longer IPv6 extension chain is left to the lb (which walks up to 16).
#define MAX_EXT_HEADERS 8
#define NO_LIMIT 0xffffffffu

// Set once by the lb before it attaches (see TcOffload in native/tc_offload.cc).
struct offload_config {
	__u32 hash_mode;
	__u32 sctp_encap; // UDP port carrying SCTP, 0 = none
};

enum offload_counter { CNT_MARKED, CNT_DECLINED, CNT_COUNT };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offload_config);
} config SEC(".maps");

// Keys are 16 bytes, IPv4 as ::ffff:a.b.c.d (the hash key's address form).
struct vip_key {
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct vip_key);
	__type(value, __u32);
} vips SEC(".maps");

// One table: [0] = M, [1 + i] = the fwmark of lookup entry i (active[lookup[i]], -1 if none).
// BPF_F_INNER_MAP lets each published table have its own size (M + 1).
struct lookup_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct lookup_table);
} tables SEC(".maps");

// Per-CPU: packets marked, and VIP packets left to the queue.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
	return TCX_NEXT;
}

// Offsets are from the IP header; at tc ingress the data starts at the Ethernet header (the lb
// attaches to Ethernet devices only). bpf_skb_load_bytes also reads non-linear data.
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(skb, ETH_HLEN + off, to, len);
}

SEC("tc")
int tslb_offload(struct __sk_buff *skb)
{
	__u8 key[KEY_BYTES] = {};
	__u32 zero = 0, l4, end = NO_LIMIT;
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (load(skb, 0, h, sizeof(h)) || h[0] >> 4 != 4)
			return TCX_NEXT;
		l4 = (h[0] & 0x0f) * 4;
		__u32 total = (__u32)h[2] << 8 | h[3];
		if (l4 < 20 || (total != 0 && total < l4))
			return TCX_NEXT;
		if (total != 0)
			end = total;
		key[10] = key[11] = key[KEY_DST + 10] = key[KEY_DST + 11] = 0xff;
		__builtin_memcpy(&key[12], &h[12], 4);
		__builtin_memcpy(&key[KEY_DST + 12], &h[16], 4);
		if (!bpf_map_lookup_elem(&vips, &key[KEY_DST]))
			return TCX_NEXT;
		// MF or a fragment offset: the lb's fragment table handles it.
		if ((h[6] & 0x3f) | h[7])
			return count(CNT_DECLINED);
		proto = h[9];
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (load(skb, 0, h, sizeof(h)) || h[0] >> 4 != 6)
			return TCX_NEXT;
		__u32 payload = (__u32)h[4] << 8 | h[5];
		if (payload != 0)
			end = 40 + payload;
		__builtin_memcpy(key, &h[8], 32);
		if (!bpf_map_lookup_elem(&vips, &key[KEY_DST]))
			return TCX_NEXT;
		proto = h[6];
		l4 = 40;
		for (int i = 0; i < MAX_EXT_HEADERS; i++) {
			__u8 ext[2];
			if (proto != 0 && proto != 43 && proto != 60 && proto != 51)
				break;
			if (l4 + 2 > end || load(skb, l4, ext, 2))
				return count(CNT_DECLINED);
			l4 += proto == 51 ? (ext[1] + 2) * 4 : (ext[1] + 1) * 8;
			proto = ext[0];
		}
	} else {
		return TCX_NEXT;
	}

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return count(CNT_DECLINED);
	// Cut transport headers are hashed on the addresses by the lb: leave them to it.
	if (l4 + 4 > end || load(skb, l4, &key[KEY_PORTS], 4))
		return count(CNT_DECLINED);
	struct offload_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return count(CNT_DECLINED);
	if (proto == IPPROTO_UDP && cfg->sctp_encap != 0 &&
	    ((__u32)key[KEY_PORTS + 2] << 8 | key[KEY_PORTS + 3]) == cfg->sctp_encap) {
		// SCTP over UDP: keyed as SCTP on the inner ports.
		if (l4 + 12 > end || load(skb, l4 + 8, &key[KEY_PORTS], 4))
			return count(CNT_DECLINED);
		proto = IPPROTO_SCTP;
	}
	key[KEY_PROTO] = proto; // a little-endian u16 in the key

	__u32 hash = 5381;
	if (cfg->hash_mode == HASH_MODE_SCTP_PORTS && proto == IPPROTO_SCTP) {
#pragma unroll
		for (int i = KEY_PORTS; i < KEY_BYTES; i++)
			hash = hash * 33 + key[i];
	} else {
#pragma unroll
		for (int i = 0; i < KEY_BYTES; i++)
			hash = hash * 33 + key[i];
	}

	void *table = bpf_map_lookup_elem(&tables, &zero);
	if (!table)
		return count(CNT_DECLINED);
	__s32 *m = bpf_map_lookup_elem(table, &zero);
	if (!m || *m <= 0)
		return count(CNT_DECLINED);
	__u32 index = hash % (__u32)*m + 1;
	__s32 *fwmark = bpf_map_lookup_elem(table, &index);
	// No active target (or fwmark 0, which is no mark): the lb applies --notargets_fwmark.
	if (!fwmark || *fwmark <= 0)
		return count(CNT_DECLINED);
	skb->mark = *fwmark;
	return count(CNT_MARKED);
}

char LICENSE[] SEC("license") = "GPL";
