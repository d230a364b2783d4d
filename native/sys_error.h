// What every addon that talks to the kernel shares: system errors shaped like Node's, and
// interface names resolved to indexes with such an error when there is no such device.
#pragma once

#include <napi.h>

#include <errno.h>
#include <net/if.h>

#include <cstring>
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
