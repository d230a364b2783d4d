#include "bpf_object.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ifindex.h"
#include "sys_error.h"

namespace {

constexpr uint32_t kVipKeySize = 16;

}  // namespace

void BpfObject::Open(Napi::Env env, const std::string& file) {
  obj_ = bpf_object__open_file(file.c_str(), nullptr);
  if (obj_ == nullptr) throw SysError(env, who_ + ": open " + file, errno);
}

void BpfObject::SetMaxEntries(Napi::Env env, const char* map, uint32_t entries) {
  bpf_map* m = bpf_object__find_map_by_name(obj_, map);
  int err = m == nullptr ? ENOENT : -bpf_map__set_max_entries(m, entries);
  if (err != 0) throw SysError(env, who_ + ": size map " + map + " to " + std::to_string(entries), err);
}

void BpfObject::Load(Napi::Env env, const char* program) {
  prog_ = bpf_object__find_program_by_name(obj_, program);
  if (prog_ == nullptr) throw SysError(env, who_ + ": no program " + program, ENOENT);
  // An object may hold several programs (xdplb's): only the one in use goes to the verifier.
  bpf_program* p = nullptr;
  bpf_object__for_each_program(p, obj_) bpf_program__set_autoload(p, p == prog_);
  int err = -bpf_object__load(obj_);
  if (err != 0) {
    prog_ = nullptr;
    throw SysError(env, who_ + ": load (the verifier's log is on stderr)", err);
  }
  vips_ = MapFd(env, "vips");
}

int BpfObject::MapFd(Napi::Env env, const char* map) const {
  int fd = bpf_object__find_map_fd_by_name(obj_, map);
  if (fd < 0) throw SysError(env, who_ + ": no map " + map, ENOENT);
  return fd;
}

size_t BpfObject::Instructions() const { return prog_ ? bpf_program__insn_cnt(prog_) : 0; }

void BpfObject::Attach(Napi::Env env, Napi::Value ifname, bpf_attach_type type, const bpf_link_create_opts* opts,
                       const AttachError& why) {
  Check(env);
  int ifindex = Ifindex(env, ifname, who_);
  std::string name = ifname.As<Napi::String>().Utf8Value();
  if (links_.count(ifindex) != 0) throw Napi::Error::New(env, who_ + ".attach: already attached to " + name);
  int link = bpf_link_create(bpf_program__fd(prog_), ifindex, type, opts);
  if (link < 0) {
    int err = errno;
    throw SysError(env, why(err, name), err);
  }
  links_[ifindex] = link;
}

void BpfObject::Detach(Napi::Env env, Napi::Value ifname) {
  auto it = links_.find(Ifindex(env, ifname, who_));
  if (it == links_.end()) return;
  close(it->second);
  links_.erase(it);
}

int BpfObject::TestRun(Napi::Env env, Napi::Value frame, void* ctx, uint32_t ctxSize) {
  Check(env);
  if (!frame.IsTypedArray() || frame.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, who_ + ".testRun(frame: Uint8Array) expected");
  Napi::Uint8Array in = frame.As<Napi::Uint8Array>();
  // Room for what the program may add in front (XDP head adjustment, tc encapsulation).
  std::vector<uint8_t> out(in.ElementLength() + 256);
  LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.Data(), .data_out = out.data(),
              .data_size_in = uint32_t(in.ElementLength()), .data_size_out = uint32_t(out.size()), .ctx_in = ctx,
              .ctx_out = ctx, .ctx_size_in = ctxSize, .ctx_size_out = ctxSize, .repeat = 1);
  if (bpf_prog_test_run_opts(bpf_program__fd(prog_), &opts) != 0) throw SysError(env, who_ + ".testRun", errno);
  if (opts.data_size_out == in.ElementLength()) memcpy(in.Data(), out.data(), in.ElementLength());
  return int(opts.retval);
}

void BpfObject::PublishTable(Napi::Env env, int outer, const std::string& what, const uint8_t* entries, uint32_t M,
                             uint32_t entrySize) {
  Check(env);
  if (M == 0) throw Napi::RangeError::New(env, what + ": empty table");
  std::vector<uint8_t> values(size_t(M + 1) * entrySize);
  int32_t m = int32_t(M);
  memcpy(values.data(), &m, sizeof(m));
  memcpy(values.data() + entrySize, entries, size_t(M) * entrySize);
  std::vector<uint32_t> keys(M + 1);
  for (uint32_t i = 0; i <= M; i++) keys[i] = i;
  LIBBPF_OPTS(bpf_map_create_opts, copts, .map_flags = BPF_F_INNER_MAP);
  int inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tslb_table", 4, entrySize, M + 1, &copts);
  if (inner < 0) throw SysError(env, what + ": create table map", errno);
  uint32_t count = M + 1;
  uint32_t zero = 0;
  int err = bpf_map_update_batch(inner, keys.data(), values.data(), &count, nullptr) != 0 ? errno : 0;
  if (err == 0 && bpf_map_update_elem(outer, &zero, &inner, BPF_ANY) != 0) err = errno;
  close(inner);  // the outer map holds it now; the replaced one is freed after running programs are done
  if (err != 0) throw SysError(env, what, err);
}

std::vector<double> BpfObject::SumPerCpu(Napi::Env env, int map, uint32_t n, const std::string& what) {
  Check(env);
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) throw SysError(env, what + ": possible CPUs", -ncpu);
  std::vector<uint64_t> v(static_cast<size_t>(ncpu));
  std::vector<double> out(n);
  for (uint32_t k = 0; k < n; k++) {
    if (bpf_map_lookup_elem(map, &k, v.data()) != 0) throw SysError(env, what, errno);
    uint64_t sum = 0;
    for (uint64_t c : v) sum += c;
    out[k] = double(sum);
  }
  return out;
}

const uint8_t* BpfObject::VipKey(Napi::Env env, Napi::Value key, const char* method) const {
  Check(env);
  if (!key.IsTypedArray() || key.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      key.As<Napi::Uint8Array>().ElementLength() != kVipKeySize)
    throw Napi::TypeError::New(env, who_ + "." + method + ": a VIP is a 16-byte Uint8Array (IPv4 as ::ffff:a.b.c.d)");
  return key.As<Napi::Uint8Array>().Data();
}

void BpfObject::AddVip(Napi::Env env, Napi::Value key) {
  uint32_t one = 1;
  if (bpf_map_update_elem(vips_, VipKey(env, key, "addVip"), &one, BPF_ANY) != 0)
    throw SysError(env, who_ + ".addVip", errno);
}

bool BpfObject::RemoveVip(Napi::Env env, Napi::Value key) {
  if (bpf_map_delete_elem(vips_, VipKey(env, key, "removeVip")) == 0) return true;
  if (errno == ENOENT) return false;
  throw SysError(env, who_ + ".removeVip", errno);
}

Napi::Array BpfObject::Vips(Napi::Env env) {
  Check(env);
  Napi::Array out = Napi::Array::New(env);
  uint8_t key[kVipKeySize], next[kVipKeySize];
  uint32_t n = 0;
  for (void* prev = nullptr; bpf_map_get_next_key(vips_, prev, next) == 0; prev = key) {
    Napi::Uint8Array k = Napi::Uint8Array::New(env, kVipKeySize);
    memcpy(k.Data(), next, kVipKeySize);
    out.Set(n++, k);
    memcpy(key, next, kVipKeySize);
  }
  return out;
}

void BpfObject::Check(Napi::Env env) const {
  if (prog_ == nullptr) throw Napi::Error::New(env, who_ + ": closed");
}

void BpfObject::Close() {
  for (auto& [ifindex, fd] : links_) close(fd);
  links_.clear();
  if (obj_ != nullptr) bpf_object__close(obj_);  // closes the program and map fds
  obj_ = nullptr;
  prog_ = nullptr;
  vips_ = -1;
}
