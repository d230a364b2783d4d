// The XDP program of xdplb (native/bpf/xsk_redirect.bpf.c) loaded with its maps sized by the
// caller, attached as XDP bpf_links, and its VIP and socket maps filled from TypeScript.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>

#include <cerrno>
#include <string>

#include "bpf_object.h"
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
         InstanceMethod<&XdpProgram::TestRun>("testRun"), InstanceAccessor<&XdpProgram::Instructions>("instructions")});
  }

  // new XdpProgram(objectFile, maxVips = 256, maxQueues = 64)
  explicit XdpProgram(const Napi::CallbackInfo& info) : BpfObjectWrap<XdpProgram>(info, "XdpProgram") {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString())
      throw Napi::TypeError::New(env, "new XdpProgram(objectFile, maxVips?, maxQueues?) expected");
    uint32_t maxVips = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 256;
    uint32_t maxQueues = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Uint32Value() : 64;
    bpf.Open(env, info[0].As<Napi::String>().Utf8Value());
    bpf.SetMaxEntries(env, "vips", maxVips);
    bpf.SetMaxEntries(env, "xsks", maxQueues);
    bpf.Load(env, "xdplb_vip");
    xskMap = bpf.MapFd(env, "xsks");
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

  Napi::Value Instructions(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(bpf.Instructions()));
  }

  int xskMap = -1;
};

}  // namespace

Napi::Function InitXdpProgram(Napi::Env env) { return XdpProgram::Init(env); }
