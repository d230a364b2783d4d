// What the addons that talk to the kernel share: system errors shaped like Node's, interface
// names resolved to indexes (with such an error when there is no such device), and bpf_links.
#pragma once

#include <napi.h>

#include <errno.h>
#include <net/if.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>

// An Error with .code (e.g. 'EOPNOTSUPP') and .errno, like Node's system errors.
inline Napi::Error SysError(Napi::Env env, const std::string& what, int err) {
  const char* name = strerrorname_np(err);
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err) + " (" + (name ? name : "?") + ")");
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

// The index of the interface named by `v`; `who` prefixes the error ("XdpProgram", ...).
inline int Ifindex(Napi::Env env, Napi::Value v, const char* who) {
  if (!v.IsString()) throw Napi::TypeError::New(env, std::string(who) + ": interface name expected");
  std::string name = v.As<Napi::String>().Utf8Value();
  int ifindex = int(if_nametoindex(name.c_str()));
  if (ifindex == 0) throw SysError(env, std::string(who) + ": interface " + name, errno);
  return ifindex;
}

// The bpf_links of one program, by interface index. Closing a link's fd detaches the program
// (the kernel does the same when the process dies), so there is no detach call to forget.
class IfLinks {
 public:
  bool Has(int ifindex) const { return links_.count(ifindex) != 0; }
  void Add(int ifindex, int fd) { links_[ifindex] = fd; }
  void Close(int ifindex) {
    auto it = links_.find(ifindex);
    if (it == links_.end()) return;
    close(it->second);
    links_.erase(it);
  }
  void CloseAll() {
    for (auto& [ifindex, fd] : links_) close(fd);
    links_.clear();
  }

 private:
  std::map<int, int> links_;  // ifindex -> bpf_link fd
};
