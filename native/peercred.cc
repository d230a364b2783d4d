// SO_PEERCRED for a connected unix socket: the flow control channel admits only root, and
// Node has no API for the peer's credentials. The fd comes from the socket's libuv handle.
#include <napi.h>

#include <sys/socket.h>

#include <cerrno>

#include "sys_error.h"

namespace {

// peerCredentials(fd): { pid, uid, gid } of the process at the other end.
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "peerCredentials(fd: number)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) throw SysError(env, "SO_PEERCRED", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  return exports;
}

}  // namespace

NODE_API_MODULE(peercred, Init)
