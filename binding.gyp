# One addon per kernel facility, so a machine without libxdp can still run nfqlb.
{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
    "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-Wall", "-Wextra", "-O2", "-g"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"]
  },
  "targets": [
    {
      "target_name": "shm",
      "sources": ["native/shm.cc"]
    },
    {
      "target_name": "nfqueue",
      "sources": ["native/nfqueue.cc"],
      "libraries": ["-lnetfilter_queue", "-lmnl"]
    },
    {
      "target_name": "tun",
      "sources": ["native/tun.cc"]
    },
    {
      "target_name": "peercred",
      "sources": ["native/peercred.cc"]
    },
    {
      "target_name": "xsk",
      "sources": ["native/xsk.cc", "native/xdp_program.cc"],
      "libraries": ["-lxdp", "-lbpf"]
    },
    {
      "target_name": "tc_offload",
      "sources": ["native/tc_offload.cc"],
      "libraries": ["-lbpf"]
    }
  ]
}
