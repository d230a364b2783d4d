// An XDP program of xdplb (native/bpf/xdplb.bpf.c: xdplb_vip, or xdplb_forward for --offload)
// loaded with its maps sized by the caller, attached as XDP bpf_links, and its maps filled from
// TypeScript. No policy lives here: src/xdp/ decides what the maps hold.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "bpf_object.h"
#include "ifindex.h"
#include "sys_error.h"
#include "xsk.h"

namespace {

class XdpProgram : public BpfObjectWrap<XdpProgram> {
 public:
  // removeVip and vips are BpfObjectWrap's members, so they are passed at run time: a template
  // argument would have to be a member of XdpProgram itself.
  static Napi::Function Init(Napi::Env env) {
    return Define(
        env, "XdpProgram",
        {InstanceMethod<&XdpProgram::Attach>("attach"), InstanceMethod<&XdpProgram::SetSocket>("setSocket"),
         InstanceMethod("removeVip", &XdpProgram::RemoveVip), InstanceMethod("vips", &XdpProgram::Vips),
         InstanceMethod<&XdpProgram::TestRun>("testRun"), InstanceAccessor<&XdpProgram::Instructions>("instructions"),
         InstanceMethod<&XdpProgram::SetEgress>("setEgress"), InstanceMethod<&XdpProgram::Publish>("publish"),
         InstanceMethod<&XdpProgram::Counters>("counters")});
  }

  // new XdpProgram(objectFile, maxVips = 256, maxQueues = 64, targets = 0): with targets > 0,
  // xdplb_forward counting frames for that many target slots; else xdplb_vip.
  explicit XdpProgram(const Napi::CallbackInfo& info) : BpfObjectWrap<XdpProgram>(info, "XdpProgram") {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString())
      throw Napi::TypeError::New(env, "new XdpProgram(objectFile, maxVips?, maxQueues?, targets?) expected");
    auto arg = [&info](size_t i, uint32_t otherwise) {
      return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().Uint32Value() : otherwise;
    };
    targets = arg(3, 0);
    bpf.Open(env, info[0].As<Napi::String>().Utf8Value());
    bpf.SetMaxEntries(env, "vips", arg(1, 256));
    bpf.SetMaxEntries(env, "xsks", arg(2, 64));
    bpf.SetMaxEntries(env, "target_counters", targets > 0 ? targets : 1);
    bpf.Load(env, targets > 0 ? "xdplb_forward" : "xdplb_vip");
    xskMap = bpf.MapFd(env, "xsks");
    configMap = bpf.MapFd(env, "config");
    egressMap = bpf.MapFd(env, "egress");
    tableMap = bpf.MapFd(env, "tables");
    counterMap = bpf.MapFd(env, "counters");
    targetCounterMap = bpf.MapFd(env, "target_counters");
  }

 private:
  // attach(ifname, mode: 'native' | 'generic')
  Napi::Value Attach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "native";
    if (mode != "native" && mode != "generic")
      throw Napi::TypeError::New(env, "XdpProgram.attach: mode must be 'native' or 'generic'");
    LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = mode == "native" ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE);
    bpf.Attach(env, info[0], BPF_XDP, &opts, [&mode](int err, const std::string& name) {
      if (err == EBUSY || err == EEXIST)
        return name + " already has an XDP program (a leftover? remove it with 'ip link set dev " + name +
               " xdp off', or xdpgeneric off)";
      if (mode == "native" && (err == EOPNOTSUPP || err == EINVAL || err == ERANGE))
        return name +
               " refuses native XDP (no driver support, or MTU too large: veth needs MTU <= ~3500); try --mode=generic";
      return "cannot attach " + mode + " XDP to " + name;
    });
    return env.Undefined();
  }

  // setSocket(queue, fd): frames of rx queue `queue` go to the AF_XDP socket `fd`.
  Napi::Value SetSocket(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bpf.Check(env);
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "XdpProgram.setSocket(queue, fd) expected");
    uint32_t queue = info[0].As<Napi::Number>().Uint32Value();
    uint32_t fd = info[1].As<Napi::Number>().Uint32Value();
    if (bpf_map_update_elem(xskMap, &queue, &fd, BPF_ANY) != 0)
      throw SysError(env, "XdpProgram.setSocket: queue " + std::to_string(queue), errno);
    return env.Undefined();
  }

  // testRun(frame: Uint8Array): the XDP action the program returns for this frame.
  Napi::Value TestRun(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), bpf.TestRun(info.Env(), info[0], nullptr, 0));
  }

  // setEgress(ifname, mac: Uint8Array(6)): xdplb_forward sends out of this device, from this address.
  Napi::Value SetEgress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bpf.Check(env);
    if (info.Length() < 2 || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        info[1].As<Napi::Uint8Array>().ElementLength() != 6)
      throw Napi::TypeError::New(env, "XdpProgram.setEgress(ifname, mac: 6-byte Uint8Array) expected");
    uint32_t ifindex = uint32_t(Ifindex(env, info[0], "XdpProgram.setEgress"));
    uint8_t config[8] = {};
    memcpy(config, info[1].As<Napi::Uint8Array>().Data(), 6);
    uint32_t zero = 0;
    if (bpf_map_update_elem(configMap, &zero, config, BPF_ANY) != 0) throw SysError(env, "XdpProgram.setEgress", errno);
    if (bpf_map_update_elem(egressMap, &zero, &ifindex, BPF_ANY) != 0)
      throw SysError(env, "XdpProgram.setEgress: devmap", errno);
    return env.Undefined();
  }

  // publish(entries: Int32Array): 3 int32s per lookup entry (hash % M): the target slot (-1 for
  // none), then its MAC in the next 6 bytes (struct target_entry); published whole.
  Napi::Value Publish(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        info[0].As<Napi::Int32Array>().ElementLength() % kEntryWords != 0)
      throw Napi::TypeError::New(env, "XdpProgram.publish(entries: Int32Array of 3 per lookup entry) expected");
    Napi::Int32Array e = info[0].As<Napi::Int32Array>();
    bpf.PublishTable(env, tableMap, "XdpProgram.publish", reinterpret_cast<const uint8_t*>(e.Data()),
                     uint32_t(e.ElementLength() / kEntryWords), kEntryWords * 4);
    return env.Undefined();
  }

  // counters(slots = all counted): { forwarded, declined, targets: Float64Array } summed over the
  // CPUs; targets[i] is the frames forwarded to slot i, for the first `slots` slots.
  Napi::Value Counters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t n =
        info.Length() > 0 && info[0].IsNumber() ? std::min(info[0].As<Napi::Number>().Uint32Value(), targets) : targets;
    std::vector<double> sums = bpf.SumPerCpu(env, counterMap, 2, "XdpProgram.counters");
    std::vector<double> perTarget = bpf.SumPerCpu(env, targetCounterMap, n, "XdpProgram.counters");
    Napi::Float64Array t = Napi::Float64Array::New(env, n);
    if (n > 0) memcpy(t.Data(), perTarget.data(), sizeof(double) * n);
    Napi::Object out = Napi::Object::New(env);
    out.Set("forwarded", Napi::Number::New(env, sums[0]));
    out.Set("declined", Napi::Number::New(env, sums[1]));
    out.Set("targets", t);
    return out;
  }

  Napi::Value Instructions(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(bpf.Instructions()));
  }

  static constexpr uint32_t kEntryWords = 3;
  uint32_t targets = 0;
  int xskMap = -1, configMap = -1, egressMap = -1, tableMap = -1, counterMap = -1, targetCounterMap = -1;
};

}  // namespace

Napi::Function InitXdpProgram(Napi::Env env) { return XdpProgram::Init(env); }
