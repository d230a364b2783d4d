# One addon per kernel facility, so a machine without libxdp can still run nfqlb. The BPF
# programs (native/bpf/*.bpf.c, clang -target bpf) are built here too, so `npm install` gets
# them as well; the addons that load them find them next to themselves in build/Release.
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
      "target_name": "health_probe",
      "sources": ["native/health_probe.cc"]
    },
    {
      "target_name": "xsk",
      "sources": ["native/xsk.cc", "native/xdp_program.cc", "native/bpf_object.cc"],
      "libraries": ["-lxdp", "-lbpf"],
      "dependencies": ["bpf_programs"]
    },
    {
      "target_name": "tc_offload",
      "sources": ["native/tc_offload.cc", "native/bpf_object.cc"],
      "libraries": ["-lbpf"],
      "dependencies": ["bpf_programs"]
    },
    {
      # build/Release/<name>.bpf.o for each native/bpf/<name>.bpf.c. The asm/ headers the
      # kernel's uapi headers include live under the host's multiarch directory.
      "target_name": "bpf_programs",
      "type": "none",
      "sources": ["native/bpf/tc_offload.bpf.c", "native/bpf/xdplb.bpf.c"],
      "rules": [{
        "rule_name": "clang_target_bpf",
        "extension": "c",
        "inputs": ["native/bpf/frame.h", "native/bpf/ip.h", "native/bpf/vip.h", "native/bpf/flow_hash.h",
                   "native/bpf/maglev_table.h", "native/bpf/counters.h"],
        "outputs": ["<(PRODUCT_DIR)/<(RULE_INPUT_ROOT).o"],
        "action": ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I/usr/include/<!(gcc -dumpmachine)",
                   "-c", "<(RULE_INPUT_PATH)", "-o", "<(PRODUCT_DIR)/<(RULE_INPUT_ROOT).o"],
        "message": "BPF <(RULE_INPUT_NAME)"
      }]
    }
  ]
}
