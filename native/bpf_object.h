// What TcOffload and XdpProgram share: one of our BPF object files (native/bpf/*.bpf.c,
// compiled by clang into build/Release) loaded with libbpf, its program attached to interfaces,
// run on test frames, and the VIP map every program of ours has (native/bpf/vip.h).
//
// The program and maps live as long as the JS object (no bpffs pins). Attachments are
// bpf_links: closing a link's fd detaches the program, and the kernel closes it when the process
// dies, so a crashed lb leaves nothing attached and there is no detach call to forget.
#pragma once

#include <napi.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

class BpfObject {
 public:
  // What an attach error says, given the errno and the interface's name.
  using AttachError = std::function<std::string(int err, const std::string& ifname)>;

  explicit BpfObject(std::string who) : who_(std::move(who)) {}
  ~BpfObject() { Close(); }
  BpfObject(const BpfObject&) = delete;
  BpfObject& operator=(const BpfObject&) = delete;

  // Opening and loading are two steps, so that maps can be sized in between.
  void Open(Napi::Env env, const std::string& file);
  void SetMaxEntries(Napi::Env env, const char* map, uint32_t entries);
  // Loads (the verifier's log goes to stderr) and picks the program the object is for.
  void Load(Napi::Env env, const char* program);
  int MapFd(Napi::Env env, const char* map) const;
  size_t Instructions() const;

  void Attach(Napi::Env env, Napi::Value ifname, bpf_attach_type type, const bpf_link_create_opts* opts,
              const AttachError& why);
  void Detach(Napi::Env env, Napi::Value ifname);
  // One run over an Ethernet frame (BPF_PROG_TEST_RUN), so packet fixtures can be checked
  // against the real program: its return value; frame gets what the program wrote into it
  // (when the length stays the same). ctx (ctxSize bytes) is the context the
  // program starts with and gets what the program left in it; none for XDP.
  int TestRun(Napi::Env env, Napi::Value frame, void* ctx, uint32_t ctxSize);

  // Publishes a Maglev table (native/bpf/maglev_table.h) into the map-of-maps `outer`: M
  // entries of entrySize bytes (each beginning with an int32) become a new inner map, entry 0
  // holding M, swapped in with one update. `what` begins the errors ("TcOffload.publish").
  void PublishTable(Napi::Env env, int outer, const std::string& what, const uint8_t* entries, uint32_t M,
                    uint32_t entrySize);
  // A per-CPU array's entries 0..n-1, each summed over the CPUs.
  std::vector<double> SumPerCpu(Napi::Env env, int map, uint32_t n, const std::string& what);

  // VIPs are 16-byte keys, IPv4 as ::ffff:a.b.c.d.
  void AddVip(Napi::Env env, Napi::Value key);
  bool RemoveVip(Napi::Env env, Napi::Value key);
  Napi::Array Vips(Napi::Env env);

  // Throws "<who>: closed" once closed.
  void Check(Napi::Env env) const;
  void Close();

 private:
  const uint8_t* VipKey(Napi::Env env, Napi::Value key, const char* method) const;

  const std::string who_;  // begins every error: "TcOffload", "XdpProgram"

  bpf_object* obj_ = nullptr;
  bpf_program* prog_ = nullptr;
  int vips_ = -1;
  std::map<int, int> links_;  // ifindex -> bpf_link fd
};

// The JS class of a BpfObject; T is the class itself (TcOffload, XdpProgram), which adds what
// is its own: attach, testRun and its maps.
template <typename T>
class BpfObjectWrap : public Napi::ObjectWrap<T> {
 public:
  BpfObjectWrap(const Napi::CallbackInfo& info, const char* who) : Napi::ObjectWrap<T>(info), bpf(who) {}

 protected:
  using Wrap = Napi::ObjectWrap<T>;
  using Methods = std::vector<typename Wrap::PropertyDescriptor>;

  // The JS class: T's own methods, then detach(ifname), addVip(key) and close().
  static Napi::Function Define(Napi::Env env, const char* name, Methods methods) {
    methods.push_back(Wrap::InstanceMethod("detach", &BpfObjectWrap::Detach));
    methods.push_back(Wrap::InstanceMethod("addVip", &BpfObjectWrap::AddVip));
    methods.push_back(Wrap::InstanceMethod("close", &BpfObjectWrap::Close));
    return Wrap::DefineClass(env, name, methods);
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    bpf.Detach(info.Env(), info[0]);
    return info.Env().Undefined();
  }

  Napi::Value AddVip(const Napi::CallbackInfo& info) {
    bpf.AddVip(info.Env(), info[0]);
    return info.Env().Undefined();
  }

  // removeVip(key): whether the VIP was there.
  Napi::Value RemoveVip(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), bpf.RemoveVip(info.Env(), info[0]));
  }

  Napi::Value Vips(const Napi::CallbackInfo& info) { return bpf.Vips(info.Env()); }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    bpf.Close();
    return info.Env().Undefined();
  }

  BpfObject bpf;
};
