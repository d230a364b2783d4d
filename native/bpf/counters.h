// SPDX-License-Identifier: GPL-2.0
// A program's packet counters: a per-CPU array of __u64 by a __u32 index, so that counting
// needs no atomic; the lb sums each entry over the CPUs (SumPerCpu in native/bpf_object.cc).
#pragma once

#include <linux/bpf.h>

#include <bpf/bpf_helpers.h>

#define PERCPU_COUNTERS(name, entries)       \
  struct {                                   \
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
    __uint(max_entries, entries);            \
    __type(key, __u32);                      \
    __type(value, __u64);                    \
  } name SEC(".maps")

// Adds one to this CPU's counter `which` of `map` (an index past its end counts nothing).
static __always_inline void count(void *map, __u32 which) {
  __u64 *c = bpf_map_lookup_elem(map, &which);
  if (c) *c += 1;
}
