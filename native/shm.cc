// Shared memory: maps an open file into an ArrayBuffer. TypeScript (src/shm.ts) opens,
// sizes and closes the file and owns the layout; this only does what JS cannot: mmap.
#include <napi.h>

#include <sys/mman.h>

#include <cerrno>

#include "sys_error.h"

namespace {

void Unmap(Napi::Env, void* addr, size_t* length) {
  munmap(addr, *length);
  delete length;
}

// map(fd, length, writable): ArrayBuffer over mmap(MAP_SHARED) of the first `length`
// bytes; the mapping lives as long as the buffer and outlives the fd.
// Hazard: a read-only mapping is still a writable ArrayBuffer to JS, and a write
// through it kills the process with SIGSEGV.
Napi::Value Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsBoolean()) {
    throw Napi::TypeError::New(env, "map(fd: number, length: number, writable: boolean)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  double length = info[1].As<Napi::Number>().DoubleValue();
  bool writable = info[2].As<Napi::Boolean>().Value();
  if (!(length >= 1 && length <= 1e15)) throw Napi::RangeError::New(env, "map: bad length");

  size_t len = static_cast<size_t>(length);
  void* addr = mmap(nullptr, len, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) throw SysError(env, "mmap", errno);
  return Napi::ArrayBuffer::New(env, addr, len, Unmap, new size_t(len));
}

// No per-environment state, so the addon loads in worker_threads as it is.
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("map", Napi::Function::New(env, Map, "map"));
  return exports;
}

}  // namespace

NODE_API_MODULE(shm, Init)
