// A tun device (IFF_TUN, no packet-info header): nfqlb writes stored IP fragments into it so
// they re-enter the kernel's input path after their first fragment has been seen. Kernel I/O
// only; which fragment to write, and when, is decided in src/.
#include <napi.h>

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sys_error.h"

namespace {

class Tun : public Napi::ObjectWrap<Tun> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tun",
                       {InstanceMethod<&Tun::Write>("write"), InstanceMethod<&Tun::Mtu>("mtu"),
                        InstanceMethod<&Tun::Fd>("fd"), InstanceMethod<&Tun::Close>("close")});
  }

  // new Tun(name): attaches to tun device `name` (creating a non-persistent one if missing).
  // new Tun(name, fd): shares an fd another Tun of this process attached (a worker thread's
  // view of the main thread's device; a single-queue tun takes one fd only). Not closed here.
  explicit Tun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tun>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "Tun(name: string, fd?: number)");
    name_ = info[0].As<Napi::String>().Utf8Value();
    if (name_.empty() || name_.size() >= IFNAMSIZ) throw Napi::RangeError::New(env, "Tun: bad device name");
    if (info.Length() > 1 && info[1].IsNumber()) {
      fd_ = info[1].As<Napi::Number>().Int32Value();
      owner_ = false;
      return;
    }
    fd_ = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) throw SysError(env, "open /dev/net/tun", errno);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name_.c_str(), IFNAMSIZ - 1);
    if (ioctl(fd_, TUNSETIFF, &ifr) != 0) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      throw SysError(env, "tun " + name_ + ": TUNSETIFF", err);
    }
  }

  ~Tun() override {
    if (fd_ >= 0 && owner_) close(fd_);
  }

 private:
  // write(bytes: Uint8Array, offset, length): one IP packet. Returns the bytes written or
  // -errno (never throws on a failed write: a lost fragment is counted, not fatal).
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber()) {
      throw Napi::TypeError::New(env, "write(bytes: Uint8Array, offset: number, length: number)");
    }
    auto arr = info[0].As<Napi::TypedArray>();
    if (arr.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, "write: Uint8Array expected");
    auto bytes = arr.As<Napi::Uint8Array>();
    int64_t off = info[1].As<Napi::Number>().Int64Value();
    int64_t len = info[2].As<Napi::Number>().Int64Value();
    if (off < 0 || len < 1 || off + len > static_cast<int64_t>(bytes.ElementLength())) {
      throw Napi::RangeError::New(env, "write: range outside the array");
    }
    if (fd_ < 0) return Napi::Number::New(env, -EBADF);
    ssize_t n = ::write(fd_, bytes.Data() + off, static_cast<size_t>(len));
    return Napi::Number::New(env, n < 0 ? -errno : static_cast<double>(n));
  }

  Napi::Value Mtu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int sd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sd < 0) throw SysError(env, "socket", errno);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, name_.c_str(), IFNAMSIZ - 1);
    int rc = ioctl(sd, SIOCGIFMTU, &ifr);
    int err = errno;
    close(sd);
    if (rc != 0) throw SysError(env, "tun " + name_ + ": SIOCGIFMTU", err);
    return Napi::Number::New(env, ifr.ifr_mtu);
  }

  Napi::Value Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (fd_ >= 0 && owner_) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }

  std::string name_;
  int fd_ = -1;
  bool owner_ = true;
};

// No per-environment state beyond the class, so the addon loads in worker_threads.
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Tun", Tun::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(tun, Init)
