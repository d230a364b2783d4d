// The tc ingress program of `nfqlb lb --offload` (native/bpf/tc_offload.bpf.c) loaded,
// attached as tcx bpf_links and fed by TypeScript. No policy lives here: src/nfqlb/offload.ts
// decides what the maps hold.
#include <napi.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "bpf_object.h"
#include "ifindex.h"
#include "sys_error.h"

namespace {

// Linux >= 6.6 (tcx); Debian 12's uapi headers predate it, so the values are spelled here.
constexpr int kTcxIngress = 46;               // enum bpf_attach_type BPF_TCX_INGRESS
constexpr char kProgName[] = "tslb_offload";  // the C function; the kernel keeps 15 chars

// BPF_PROG_QUERY's attr as Linux >= 6.6 lays it out (the kernel writes up to `revision`).
struct QueryAttr {
  uint32_t targetIfindex, attachType, queryFlags, attachFlags;
  uint64_t progIds;
  uint32_t count, pad;
  uint64_t progAttachFlags, linkIds, linkAttachFlags, revision;
};

// tcxIngress(ifname): [{ id, name }] of the programs attached at tcx ingress of the device.
Napi::Value TcxIngress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int ifindex = Ifindex(env, info[0], "TcOffload");
  uint32_t ids[64] = {};
  QueryAttr q{};
  q.targetIfindex = uint32_t(ifindex);
  q.attachType = kTcxIngress;
  q.progIds = uint64_t(uintptr_t(ids));
  q.count = 64;
  if (syscall(__NR_bpf, BPF_PROG_QUERY, &q, sizeof(q)) != 0) throw SysError(env, "TcOffload: query tcx ingress", errno);
  Napi::Array out = Napi::Array::New(env);
  for (uint32_t i = 0; i < q.count && i < 64; i++) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("id", Napi::Number::New(env, ids[i]));
    int fd = bpf_prog_get_fd_by_id(ids[i]);
    bpf_prog_info pi{};
    uint32_t len = sizeof(pi);
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &pi, &len) == 0) p.Set("name", Napi::String::New(env, pi.name));
    if (fd >= 0) close(fd);
    out.Set(i, p);
  }
  return out;
}

class TcOffload : public BpfObjectWrap<TcOffload> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return Define(env, "TcOffload",
                  {InstanceMethod<&TcOffload::Attach>("attach"), InstanceMethod<&TcOffload::Publish>("publish"),
                   InstanceMethod<&TcOffload::Counters>("counters"), InstanceMethod<&TcOffload::TestRun>("testRun")});
  }

  // new TcOffload(objectFile, hashMode, sctpEncap)
  explicit TcOffload(const Napi::CallbackInfo& info) : BpfObjectWrap<TcOffload>(info, "TcOffload") {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber())
      throw Napi::TypeError::New(env, "new TcOffload(objectFile, hashMode, sctpEncap) expected");
    bpf.Open(env, info[0].As<Napi::String>().Utf8Value());
    bpf.Load(env, kProgName);
    configMap = bpf.MapFd(env, "config");
    tableMap = bpf.MapFd(env, "tables");
    counterMap = bpf.MapFd(env, "counters");
    uint32_t config[2] = {info[1].As<Napi::Number>().Uint32Value(), info[2].As<Napi::Number>().Uint32Value()};
    uint32_t zero = 0;
    if (bpf_map_update_elem(configMap, &zero, config, BPF_ANY) != 0) throw SysError(env, "TcOffload: config", errno);
  }

 private:
  // attach(ifname): the program at tc ingress of the device, as a tcx bpf_link.
  Napi::Value Attach(const Napi::CallbackInfo& info) {
    bpf.Attach(info.Env(), info[0], bpf_attach_type(kTcxIngress), nullptr, [](int err, const std::string& name) {
      std::string what = "cannot attach to tc ingress (tcx) of " + name;
      return err == EINVAL ? what + ": the kernel needs tcx (Linux >= 6.6)" : what;
    });
    return info.Env().Undefined();
  }

  // publish(fwmarks: Int32Array): fwmarks[i] is what lookup entry i (hash % M) gives, -1 for
  // none, published whole.
  Napi::Value Publish(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bpf.Check(env);
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "TcOffload.publish(fwmarks: Int32Array) expected");
    Napi::Int32Array fw = info[0].As<Napi::Int32Array>();
    bpf.PublishTable(env, tableMap, "TcOffload.publish", reinterpret_cast<const uint8_t*>(fw.Data()),
                     uint32_t(fw.ElementLength()), sizeof(int32_t));
    return env.Undefined();
  }

  // counters(): { marked, declined } summed over the CPUs.
  Napi::Value Counters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<double> sums = bpf.SumPerCpu(env, counterMap, 2, "TcOffload.counters");
    Napi::Object out = Napi::Object::New(env);
    out.Set("marked", Napi::Number::New(env, sums[0]));
    out.Set("declined", Napi::Number::New(env, sums[1]));
    return out;
  }

  // testRun(frame: Uint8Array): { retval, mark } of one run over an Ethernet frame.
  Napi::Value TestRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    __sk_buff skb{};
    int retval = bpf.TestRun(env, info[0], &skb, sizeof(skb));
    Napi::Object r = Napi::Object::New(env);
    r.Set("retval", Napi::Number::New(env, retval));
    r.Set("mark", Napi::Number::New(env, skb.mark));
    return r;
  }

  int configMap = -1, tableMap = -1, counterMap = -1;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("TcOffload", TcOffload::Init(env));
  exports.Set("tcxIngress", Napi::Function::New(env, TcxIngress, "tcxIngress"));
  return exports;
}

}  // namespace

NODE_API_MODULE(tc_offload, Init)
