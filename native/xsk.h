// AF_XDP for xdplb: one C++ class per kernel object (Umem, XskSocket, XdpProgram).
// No policy lives here: JS decides what happens to every frame.
#pragma once

#include <napi.h>
#include <uv.h>
#include <xdp/xsk.h>

#include <set>
#include <string>

#include "sys_error.h"

class XskSocket;
class Umem;
struct Poller;

// Per-environment state, so the addon loads in worker_threads.
struct XskAddon : public Napi::Addon<XskAddon> {
  XskAddon(Napi::Env env, Napi::Object exports);
  Napi::FunctionReference umemCtor;
  Napi::FunctionReference socketCtor;
  std::set<XskSocket*> sockets;  // open sockets and UMEMs, closed by the cleanup hook
  std::set<Umem*> umems;
};

class Umem : public Napi::ObjectWrap<Umem> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Umem(const Napi::CallbackInfo& info);
  ~Umem() override;

  xsk_umem* umem = nullptr;
  // The first socket bound to the UMEM uses these rings (libxdp's rule).
  xsk_ring_prod fill{};
  xsk_ring_cons comp{};
  int firstIfindex = -1;
  uint32_t firstQueue = 0;
  uint32_t frameSize = 0;
  uint32_t frameCount = 0;
  int users = 0;              // open sockets
  XskAddon* addon = nullptr;  // null once the environment is torn down
  void Release();

 private:
  Napi::Value Close(const Napi::CallbackInfo& info);
  void* area = nullptr;
  size_t size = 0;
  Napi::Reference<Napi::ArrayBuffer> buffer;
};

class XskSocket : public Napi::ObjectWrap<XskSocket> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit XskSocket(const Napi::CallbackInfo& info);
  ~XskSocket() override;
  void Release();  // stops polling, deletes the socket; idempotent

  int fd() const;

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Transmit(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnEnvCleanup(napi_async_cleanup_hook_handle hook, void* arg);
  static void ClosePoller(Poller* p);
  void Drain();
  void Reclaim();
  void Complete(uint32_t n);
  void Kick(XskSocket* t, bool recycle);
  void ReleaseCompletions();
  void StopPoll();

  friend struct XskAddon;
  XskAddon* addon = nullptr;  // null once the environment is torn down
  xsk_socket* xsk = nullptr;
  Umem* umem = nullptr;
  Napi::ObjectReference umemRef;
  xsk_ring_cons rx{};
  xsk_ring_prod tx{};
  xsk_ring_prod ownFill{};
  xsk_ring_cons ownComp{};
  xsk_ring_prod* fill = nullptr;  // this socket's (dev, queue) fill ring
  xsk_ring_cons* comp = nullptr;  // and completion ring
  bool hasRx = false;
  bool hasTx = false;
  bool destroying = false;

  // Set while forwarding (start .. stop): frames arrive here and leave on `out`.
  Poller* poll = nullptr;
  XskSocket* out = nullptr;
  Napi::ObjectReference outRef;
  Napi::FunctionReference onBatch;
  Napi::Reference<Napi::Uint32Array> addrRef, lenRef;
  Napi::Reference<Napi::Uint8Array> verdictRef;
  Napi::AsyncContext* asyncContext = nullptr;
  uint32_t* addrs = nullptr;
  uint32_t* lens = nullptr;
  uint8_t* verdicts = nullptr;
  uint32_t batch = 0;

  // Counters since creation.
  uint64_t nRx = 0, nTx = 0, nDrop = 0, nTxFull = 0, nBatches = 0;
};

// The VIP-filtering XDP program with its maps (see xdp_program.cc).
Napi::Function InitXdpProgram(Napi::Env env);
