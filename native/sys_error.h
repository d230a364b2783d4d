// The one shape of a failed system call in every addon: an Error like Node's own system
// errors, with .code ('EOPNOTSUPP') and .errno (95), so TypeScript can tell causes apart
// without parsing messages. The message says what failed, then why: "what: strerror (CODE)".
#pragma once

#include <napi.h>

#include <cstring>
#include <string>

inline Napi::Error SysError(Napi::Env env, const std::string& what, int err) {
  const char* name = strerrorname_np(err);
  std::string code = name ? name : "EUNKNOWN";
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err) + " (" + code + ")");
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}
