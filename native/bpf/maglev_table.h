// SPDX-License-Identifier: GPL-2.0
// The Maglev lookup as a program in the kernel reads it: user space publishes each table as a
// whole new inner array map and swaps it into `tables` (one RCU pointer exchange), so a packet
// sees either the old table or the new one, never a mix.
//
// One table: entry 0 starts with M (an __s32), entry 1 + i is what lookup entry i (hash % M)
// gives. Each program has its own entry type, beginning with an __s32 (the tc offload's fwmark,
// the XDP forwarder's target slot); BPF_F_INNER_MAP lets each published table have its own
// size (M + 1). native/bpf_object.cc (PublishTable) builds the tables. The inner map has sizes,
// not BTF types: clang leaves a struct only pointed to by a map definition as a forward
// declaration, which libbpf cannot size.
#pragma once

#include <linux/bpf.h>

#include <bpf/bpf_helpers.h>

#define MAGLEV_TABLES(entry_type)             \
  struct maglev_table {                       \
    __uint(type, BPF_MAP_TYPE_ARRAY);         \
    __uint(map_flags, BPF_F_INNER_MAP);       \
    __uint(max_entries, 1);                   \
    __uint(key_size, sizeof(__u32));          \
    __uint(value_size, sizeof(entry_type));   \
  };                                          \
  struct {                                    \
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
    __uint(max_entries, 1);                   \
    __type(key, __u32);                       \
    __array(values, struct maglev_table);     \
  } tables SEC(".maps")

// The entry the hash selects in the published table; 0 before the first table.
static __always_inline void *maglev_entry(void *tables, __u32 hash) {
  __u32 zero = 0;
  void *table = bpf_map_lookup_elem(tables, &zero);
  if (!table) return 0;
  __s32 *m = bpf_map_lookup_elem(table, &zero);
  if (!m || *m <= 0) return 0;
  __u32 index = hash % (__u32)*m + 1;
  return bpf_map_lookup_elem(table, &index);
}
