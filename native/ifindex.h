// Interface names from JS resolved to the indexes the kernel's interfaces take.
#pragma once

#include <napi.h>

#include <net/if.h>

#include <cerrno>
#include <string>

#include "sys_error.h"

// The index of the interface named by `name`; `who` ("XdpProgram", ...) begins the error
// thrown when it is not a string or there is no such device.
inline int Ifindex(Napi::Env env, Napi::Value name, const std::string& who) {
  if (!name.IsString()) throw Napi::TypeError::New(env, who + ": interface name expected");
  std::string text = name.As<Napi::String>().Utf8Value();
  int ifindex = int(if_nametoindex(text.c_str()));
  if (ifindex == 0) throw SysError(env, who + ": interface " + text, errno);
  return ifindex;
}
