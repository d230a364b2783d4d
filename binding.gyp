# One addon per kernel facility, so a machine without libxdp can still run nfqlb. The offload
# program (BPF C, clang -target bpf) is built here too, so `npm install` gets it as well.
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
      "libraries": ["-lbpf"],
      "dependencies": ["tc_offload_bpf"]
    },
    {
      "target_name": "tc_offload_bpf",
      "type": "none",
      "actions": [{
        "action_name": "clang_target_bpf",
        "inputs": ["native/bpf/tc_offload.bpf.c"],
        "outputs": ["<(PRODUCT_DIR)/tc_offload.bpf.o"],
        "action": ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I/usr/include/<!(gcc -dumpmachine)",
                   "-c", "native/bpf/tc_offload.bpf.c", "-o", "<(PRODUCT_DIR)/tc_offload.bpf.o"]
      }]
    }
  ]
}
