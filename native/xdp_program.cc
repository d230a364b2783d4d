// The XDP program of xdplb: frames whose IPv4/IPv6 destination is in the VIP map go to
// the AF_XDP socket of their rx queue (XSKMAP); everything else goes to the kernel.
//
// It is assembled here from raw BPF instructions and loaded with bpf_prog_load(), so
// building needs no clang. The program and maps live as long as this object (no bpffs
// pins); attachments are bpf_links, which the kernel removes when the fd is closed,
// also when the process is killed.
#include <bpf/bpf.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "xsk.h"

namespace {

// VIP map key: 16 bytes, an IPv4 address as ::ffff:a.b.c.d (like nfqlb's hash key).
constexpr uint32_t kVipKeySize = 16;

// A tiny assembler: forward jumps to labels are patched when the label is placed.
class Asm {
 public:
  enum Label { kPass, kIpv4, kLookup, kLabels };
  std::vector<bpf_insn> code;

  void Emit(uint8_t op, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    bpf_insn i{};
    i.code = op;
    i.dst_reg = dst;
    i.src_reg = src;
    i.off = off;
    i.imm = imm;
    code.push_back(i);
  }
  void MovReg(uint8_t dst, uint8_t src) { Emit(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0); }
  void MovImm(uint8_t dst, int32_t imm) { Emit(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
  void AddImm(uint8_t dst, int32_t imm) { Emit(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm); }
  void Load(uint8_t size, uint8_t dst, uint8_t src, int16_t off) { Emit(BPF_LDX | size | BPF_MEM, dst, src, off, 0); }
  void Store(uint8_t size, uint8_t dst, int16_t off, uint8_t src) { Emit(BPF_STX | size | BPF_MEM, dst, src, off, 0); }
  void StoreImm(uint8_t size, uint8_t dst, int16_t off, int32_t imm) { Emit(BPF_ST | size | BPF_MEM, dst, 0, off, imm); }
  void LoadMapFd(uint8_t dst, int fd) {
    Emit(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd);
    Emit(0, 0, 0, 0, 0);
  }
  void Call(int32_t helper) { Emit(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
  void Exit() { Emit(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
  void JumpReg(uint8_t op, uint8_t dst, uint8_t src, Label to) {
    fixups.push_back({code.size(), to});
    Emit(BPF_JMP | op | BPF_X, dst, src, 0, 0);
  }
  void JumpImm(uint8_t op, uint8_t dst, int32_t imm, Label to) {
    fixups.push_back({code.size(), to});
    Emit(BPF_JMP | op | BPF_K, dst, 0, 0, imm);
  }
  void Goto(Label to) { JumpImm(BPF_JA, 0, 0, to); }
  void Place(Label l) { at[l] = code.size(); }
  void Resolve() {
    for (auto& [insn, label] : fixups) code[insn].off = int16_t(at[label] - insn - 1);
  }

 private:
  std::vector<std::pair<size_t, Label>> fixups;
  size_t at[kLabels] = {};
};

std::vector<bpf_insn> VipFilterProgram(int vipMapFd, int xskMapFd) {
  // Registers: r1 = ctx on entry, r6 = ctx kept across calls, r2 = data, r3 = data_end, r10 = frame pointer.
  Asm a;
  a.MovReg(BPF_REG_6, BPF_REG_1);
  a.Load(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(xdp_md, data));
  a.Load(BPF_W, BPF_REG_3, BPF_REG_6, offsetof(xdp_md, data_end));
  // Ethernet header (14 bytes); ethertype loaded as a little-endian u16.
  a.MovReg(BPF_REG_4, BPF_REG_2);
  a.AddImm(BPF_REG_4, 14);
  a.JumpReg(BPF_JGT, BPF_REG_4, BPF_REG_3, Asm::kPass);
  a.Load(BPF_H, BPF_REG_5, BPF_REG_2, 12);
  a.JumpImm(BPF_JEQ, BPF_REG_5, 0x0008, Asm::kIpv4);   // ETH_P_IP
  a.JumpImm(BPF_JNE, BPF_REG_5, 0xdd86, Asm::kPass);   // ETH_P_IPV6
  // IPv6: destination at 14 + 24, 16 bytes, copied to the key at fp-16.
  a.MovReg(BPF_REG_4, BPF_REG_2);
  a.AddImm(BPF_REG_4, 14 + 40);
  a.JumpReg(BPF_JGT, BPF_REG_4, BPF_REG_3, Asm::kPass);
  a.Load(BPF_DW, BPF_REG_5, BPF_REG_2, 14 + 24);
  a.Store(BPF_DW, BPF_REG_10, -16, BPF_REG_5);
  a.Load(BPF_DW, BPF_REG_5, BPF_REG_2, 14 + 32);
  a.Store(BPF_DW, BPF_REG_10, -8, BPF_REG_5);
  a.Goto(Asm::kLookup);
  // IPv4: destination at 14 + 16; key = ::ffff:a.b.c.d (bytes 10..11 are 0xff).
  a.Place(Asm::kIpv4);
  a.MovReg(BPF_REG_4, BPF_REG_2);
  a.AddImm(BPF_REG_4, 14 + 20);
  a.JumpReg(BPF_JGT, BPF_REG_4, BPF_REG_3, Asm::kPass);
  a.Load(BPF_W, BPF_REG_5, BPF_REG_2, 14 + 16);
  a.StoreImm(BPF_DW, BPF_REG_10, -16, 0);
  a.StoreImm(BPF_W, BPF_REG_10, -8, int32_t(0xffff0000u));
  a.Store(BPF_W, BPF_REG_10, -4, BPF_REG_5);
  // if (!vips[key]) pass; else redirect to xsks[rx_queue_index], falling back to pass.
  a.Place(Asm::kLookup);
  a.LoadMapFd(BPF_REG_1, vipMapFd);
  a.MovReg(BPF_REG_2, BPF_REG_10);
  a.AddImm(BPF_REG_2, -16);
  a.Call(BPF_FUNC_map_lookup_elem);
  a.JumpImm(BPF_JEQ, BPF_REG_0, 0, Asm::kPass);
  a.Load(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(xdp_md, rx_queue_index));
  a.LoadMapFd(BPF_REG_1, xskMapFd);
  a.MovImm(BPF_REG_3, XDP_PASS);
  a.Call(BPF_FUNC_redirect_map);
  a.Exit();
  a.Place(Asm::kPass);
  a.MovImm(BPF_REG_0, XDP_PASS);
  a.Exit();
  a.Resolve();
  return a.code;
}

class XdpProgram : public Napi::ObjectWrap<XdpProgram> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "XdpProgram",
                       {InstanceMethod<&XdpProgram::Attach>("attach"), InstanceMethod<&XdpProgram::Detach>("detach"),
                        InstanceMethod<&XdpProgram::SetSocket>("setSocket"),
                        InstanceMethod<&XdpProgram::AddVip>("addVip"), InstanceMethod<&XdpProgram::RemoveVip>("removeVip"),
                        InstanceMethod<&XdpProgram::Vips>("vips"), InstanceMethod<&XdpProgram::TestRun>("testRun"),
                        InstanceMethod<&XdpProgram::Close>("close"),
                        InstanceAccessor<&XdpProgram::InsnCount>("instructions")});
  }

  // new XdpProgram(maxVips = 256, maxQueues = 64)
  explicit XdpProgram(const Napi::CallbackInfo& info) : Napi::ObjectWrap<XdpProgram>(info) {
    Napi::Env env = info.Env();
    uint32_t maxVips = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 256;
    uint32_t maxQueues = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 64;
    vipMap = bpf_map_create(BPF_MAP_TYPE_HASH, "xdplb_vips", kVipKeySize, sizeof(uint32_t), maxVips, nullptr);
    if (vipMap < 0) throw Fail(env, "XdpProgram: create VIP map", errno);
    xskMap = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "xdplb_xsks", sizeof(uint32_t), sizeof(uint32_t), maxQueues, nullptr);
    if (xskMap < 0) throw Fail(env, "XdpProgram: create XSKMAP", errno);
    std::vector<bpf_insn> code = VipFilterProgram(vipMap, xskMap);
    insnCount = code.size();
    std::string log(65536, '\0');
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_XDP, .log_level = 1,
                .log_size = uint32_t(log.size()), .log_buf = log.data());
    prog = bpf_prog_load(BPF_PROG_TYPE_XDP, "xdplb_vip", "GPL", code.data(), code.size(), &opts);
    if (prog < 0) {
      int err = errno;
      log.resize(strnlen(log.c_str(), log.size()));
      throw Fail(env, "XdpProgram: load (verifier: " + log + ")", err);
    }
  }
  ~XdpProgram() override { Release(); }

 private:
  Napi::Error Fail(Napi::Env env, const std::string& what, int err) {
    Release();
    return SysError(env, what, err);
  }

  void Release() {
    links.CloseAll();
    for (int* fd : {&prog, &xskMap, &vipMap})
      if (*fd >= 0) {
        close(*fd);
        *fd = -1;
      }
  }

  void Check(Napi::Env env) {
    if (prog < 0) throw Napi::Error::New(env, "XdpProgram: closed");
  }

  static int Ifindex(Napi::Env env, Napi::Value v) { return ::Ifindex(env, v, "XdpProgram"); }

  static void VipKey(Napi::Env env, Napi::Value v, uint8_t key[kVipKeySize]) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        v.As<Napi::Uint8Array>().ElementLength() != kVipKeySize)
      throw Napi::TypeError::New(env, "XdpProgram: a VIP is a 16-byte Uint8Array (IPv4 as ::ffff:a.b.c.d)");
    memcpy(key, v.As<Napi::Uint8Array>().Data(), kVipKeySize);
  }

  // attach(ifname, mode: 'native' | 'generic')
  Napi::Value Attach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    int ifindex = Ifindex(env, info[0]);
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "native";
    if (mode != "native" && mode != "generic")
      throw Napi::TypeError::New(env, "XdpProgram.attach: mode must be 'native' or 'generic'");
    if (links.Has(ifindex)) throw Napi::Error::New(env, "XdpProgram.attach: already attached to " + name);
    LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = mode == "native" ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE);
    int link = bpf_link_create(prog, ifindex, BPF_XDP, &opts);
    if (link < 0) {
      int err = errno;
      std::string why;
      if (err == EBUSY || err == EEXIST)
        why = name + " already has an XDP program (a leftover? remove it with 'ip link set dev " + name + " xdp off', or xdpgeneric off)";
      else if (mode == "native" && (err == EOPNOTSUPP || err == EINVAL || err == ERANGE))
        why = name + " refuses native XDP (no driver support, or MTU too large: veth needs MTU <= ~3500); try --mode=generic";
      else
        why = "cannot attach " + mode + " XDP to " + name;
      throw SysError(env, why, err);
    }
    links.Add(ifindex, link);
    return env.Undefined();
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    links.Close(Ifindex(env, info[0]));
    return env.Undefined();
  }

  // setSocket(queue, fd): frames of rx queue `queue` go to the AF_XDP socket `fd`.
  Napi::Value SetSocket(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "XdpProgram.setSocket(queue, fd) expected");
    uint32_t queue = info[0].As<Napi::Number>().Uint32Value();
    uint32_t fd = info[1].As<Napi::Number>().Uint32Value();
    if (bpf_map_update_elem(xskMap, &queue, &fd, BPF_ANY) != 0)
      throw SysError(env, "XdpProgram.setSocket: queue " + std::to_string(queue), errno);
    return env.Undefined();
  }

  Napi::Value AddVip(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    uint8_t key[kVipKeySize];
    VipKey(env, info[0], key);
    uint32_t one = 1;
    if (bpf_map_update_elem(vipMap, key, &one, BPF_ANY) != 0) throw SysError(env, "XdpProgram.addVip", errno);
    return env.Undefined();
  }

  // Returns true if the VIP was present.
  Napi::Value RemoveVip(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    uint8_t key[kVipKeySize];
    VipKey(env, info[0], key);
    if (bpf_map_delete_elem(vipMap, key) == 0) return Napi::Boolean::New(env, true);
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    throw SysError(env, "XdpProgram.removeVip", errno);
  }

  Napi::Value Vips(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    Napi::Array out = Napi::Array::New(env);
    uint8_t key[kVipKeySize], next[kVipKeySize];
    uint32_t n = 0;
    for (void* prev = nullptr; bpf_map_get_next_key(vipMap, prev, next) == 0; prev = key) {
      Napi::Uint8Array k = Napi::Uint8Array::New(env, kVipKeySize);
      memcpy(k.Data(), next, kVipKeySize);
      out.Set(n++, k);
      memcpy(key, next, kVipKeySize);
    }
    return out;
  }

  // testRun(frame: Uint8Array): the XDP action the program returns for this frame
  // (BPF_PROG_TEST_RUN), so packet fixtures can be checked against the real program.
  Napi::Value TestRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "XdpProgram.testRun(frame: Uint8Array) expected");
    Napi::Uint8Array frame = info[0].As<Napi::Uint8Array>();
    std::vector<uint8_t> out(frame.ElementLength() + 256);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.Data(), .data_out = out.data(),
                .data_size_in = uint32_t(frame.ElementLength()), .data_size_out = uint32_t(out.size()), .repeat = 1);
    if (bpf_prog_test_run_opts(prog, &opts) != 0) throw SysError(env, "XdpProgram.testRun", errno);
    return Napi::Number::New(env, opts.retval);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  Napi::Value InsnCount(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(insnCount)); }

  int vipMap = -1, xskMap = -1, prog = -1;
  size_t insnCount = 0;
  IfLinks links;
};

}  // namespace

Napi::Function InitXdpProgram(Napi::Env env) { return XdpProgram::Init(env); }
