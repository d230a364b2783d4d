// SPDX-License-Identifier: GPL-2.0
// The VIPs a program acts on: packets to any other address are none of its business. User
// space adds them by key address and may size the map before loading the object.
#pragma once

#include "ip.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 256);
  __type(key, struct key_address);
  __type(value, __u32);  // unused: a VIP is there or not
} vips SEC(".maps");

static __always_inline bool is_vip(const struct key_address *a) { return bpf_map_lookup_elem(&vips, a) != 0; }
