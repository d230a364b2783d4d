// AF_XDP sockets over one shared UMEM, driven by uv_poll on the environment's loop.
//
// Frame life cycle (all frames start in the ingress fill ring):
//   fill ring -> kernel copies a VIP packet in -> rx ring -> JS batch callback
//   -> verdict 1: tx ring of the egress socket -> completion ring -> fill ring
//   -> verdict 0: straight back to the fill ring.
#include "xsk.h"

#include <errno.h>
#include <linux/if_xdp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "ifindex.h"

// A uv_poll handle whose closing Node waits for when the environment goes away: the close
// callback lives in this addon, which a worker_thread unloads right after its teardown.
struct Poller {
  uv_poll_t handle;  // first member: the callbacks get a pointer to it
  napi_async_cleanup_hook_handle hook = nullptr;
  XskSocket* owner = nullptr;  // null once closing
};

static uint32_t RoundUpPow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// ---------------------------------------------------------------- Umem

Napi::Function Umem::Init(Napi::Env env) { return DefineClass(env, "Umem", {InstanceMethod<&Umem::Close>("close")}); }

// new Umem(frameCount, frameSize): page-aligned memory, visible to JS as `.buffer`.
Umem::Umem(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Umem>(info) {
  Napi::Env env = info.Env();
  addon = env.GetInstanceData<XskAddon>();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "Umem(frameCount, frameSize): numbers expected");
  frameCount = info[0].As<Napi::Number>().Uint32Value();
  frameSize = info[1].As<Napi::Number>().Uint32Value();
  // Aligned mode wants a power-of-two frame size between 2048 and the page size.
  if (frameCount < 64 || frameCount > (1u << 20) || (frameCount & (frameCount - 1)) != 0)
    throw Napi::RangeError::New(env, "Umem: frameCount must be a power of two in [64, 1048576]");
  if (frameSize != 2048 && frameSize != 4096) throw Napi::RangeError::New(env, "Umem: frameSize must be 2048 or 4096");
  size = size_t(frameCount) * frameSize;
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw SysError(env, "Umem: mmap", errno);
  area = mem;

  xsk_umem_config cfg{};
  cfg.fill_size = RoundUpPow2(2 * frameCount);  // room for every frame, twice (NOTES-KERNEL)
  cfg.comp_size = frameCount;
  cfg.frame_size = frameSize;
  cfg.frame_headroom = 0;
  cfg.flags = 0;
  int rc = xsk_umem__create(&umem, area, size, &fill, &comp, &cfg);
  if (rc != 0) {
    munmap(area, size);
    area = nullptr;
    throw SysError(env, "Umem: xsk_umem__create", -rc);
  }
  // Every frame starts in the fill ring: frames are only ever lent to the kernel.
  uint32_t idx = 0;
  if (xsk_ring_prod__reserve(&fill, frameCount, &idx) != frameCount) {
    Release();
    throw Napi::Error::New(env, "Umem: cannot reserve the fill ring");
  }
  for (uint32_t i = 0; i < frameCount; i++) *xsk_ring_prod__fill_addr(&fill, idx + i) = uint64_t(i) * frameSize;
  xsk_ring_prod__submit(&fill, frameCount);

  // The JS view outlives close(): memory is unmapped only when the ArrayBuffer is collected.
  size_t len = size;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, area, size, [len](Napi::Env, void* p) { munmap(p, len); });
  buffer = Napi::Persistent(ab);
  addon->umems.insert(this);
  info.This().As<Napi::Object>().DefineProperty(Napi::PropertyDescriptor::Value("buffer", ab, napi_enumerable));
}

Umem::~Umem() { Release(); }

void Umem::Release() {
  if (umem && users == 0) {
    xsk_umem__delete(umem);
    umem = nullptr;
    if (addon) addon->umems.erase(this);
  }
}

Napi::Value Umem::Close(const Napi::CallbackInfo& info) {
  if (users > 0) throw Napi::Error::New(info.Env(), "Umem: close its sockets first");
  Release();
  return info.Env().Undefined();
}

// ---------------------------------------------------------------- XskSocket

Napi::Function XskSocket::Init(Napi::Env env) {
  return DefineClass(env, "XskSocket",
                     {InstanceMethod<&XskSocket::Start>("start"), InstanceMethod<&XskSocket::Stop>("stop"),
                      InstanceMethod<&XskSocket::Close>("close"), InstanceMethod<&XskSocket::Stats>("stats"),
                      InstanceMethod<&XskSocket::Transmit>("transmit"), InstanceAccessor<&XskSocket::Fd>("fd")});
}

// new XskSocket(umem, ifname, queue, { rx: boolean, tx: boolean, ringSize?: number })
XskSocket::XskSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<XskSocket>(info) {
  Napi::Env env = info.Env();
  addon = env.GetInstanceData<XskAddon>();
  if (info.Length() < 4 || !info[0].IsObject() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsObject())
    throw Napi::TypeError::New(env, "XskSocket(umem, ifname, queue, {rx, tx}) expected");
  Napi::Object uobj = info[0].As<Napi::Object>();
  if (!uobj.InstanceOf(addon->umemCtor.Value())) throw Napi::TypeError::New(env, "XskSocket: umem is not a Umem");
  umem = Umem::Unwrap(uobj);
  if (!umem->umem) throw Napi::Error::New(env, "XskSocket: the Umem is closed");
  std::string ifname = info[1].As<Napi::String>().Utf8Value();
  int ifindex = Ifindex(env, info[1], "XskSocket");
  uint32_t queue = info[2].As<Napi::Number>().Uint32Value();
  Napi::Object opts = info[3].As<Napi::Object>();
  hasRx = opts.Get("rx").ToBoolean();
  hasTx = opts.Get("tx").ToBoolean();
  if (!hasRx && !hasTx) throw Napi::TypeError::New(env, "XskSocket: rx or tx (or both) must be true");
  uint32_t ringSize = umem->frameCount;
  if (opts.Has("ringSize") && opts.Get("ringSize").IsNumber())
    ringSize = RoundUpPow2(opts.Get("ringSize").As<Napi::Number>().Uint32Value());

  xsk_socket_config cfg{};
  cfg.rx_size = hasRx ? ringSize : 0;
  cfg.tx_size = hasTx ? ringSize : 0;
  // Our own XDP program (XdpProgram) owns the device; libxdp must not load its default one.
  cfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
  cfg.xdp_flags = 0;
  cfg.bind_flags = XDP_COPY;  // veth has no zero-copy (NOTES-KERNEL)

  // The first (device, queue) of a UMEM uses the UMEM's own rings; another one gets
  // its own fill/completion pair, as the kernel requires for a shared UMEM.
  bool first = umem->firstIfindex < 0 || (umem->firstIfindex == ifindex && umem->firstQueue == queue);
  fill = first ? &umem->fill : &ownFill;
  comp = first ? &umem->comp : &ownComp;
  int rc = xsk_socket__create_shared(&xsk, ifname.c_str(), queue, umem->umem, hasRx ? &rx : nullptr,
                                     hasTx ? &tx : nullptr, fill, comp, &cfg);
  if (rc != 0) {
    xsk = nullptr;
    throw SysError(env, "XskSocket: bind to " + ifname + " queue " + std::to_string(queue), -rc);
  }
  if (umem->firstIfindex < 0) {
    umem->firstIfindex = ifindex;
    umem->firstQueue = queue;
  }
  umem->users++;
  umemRef = Napi::Persistent(uobj);
  addon->sockets.insert(this);
}

XskSocket::~XskSocket() {
  destroying = true;
  Release();
}

int XskSocket::fd() const { return xsk ? xsk_socket__fd(xsk) : -1; }

Napi::Value XskSocket::Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd()); }

void XskSocket::ClosePoller(Poller* p) {
  p->owner = nullptr;
  uv_poll_stop(&p->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
    Poller* closed = reinterpret_cast<Poller*>(h);
    if (closed->hook) napi_remove_async_cleanup_hook(closed->hook);
    delete closed;
  });
}

void XskSocket::OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
  Poller* p = static_cast<Poller*>(arg);
  if (p->owner) p->owner->Release();  // else its close is already under way
}

void XskSocket::StopPoll() {
  if (poll) {
    ClosePoller(poll);
    poll = nullptr;
  }
  if (!onBatch.IsEmpty()) {
    onBatch.Reset();
    addrRef.Reset();
    lenRef.Reset();
    verdictRef.Reset();
    outRef.Reset();
    out = nullptr;
    delete asyncContext;
    asyncContext = nullptr;
    if (!destroying) Unref();  // taken in Start: a forwarding socket is not collected
  }
}

void XskSocket::Release() {
  StopPoll();
  // A socket forwarding into this one must stop before its tx ring goes away.
  if (addon)
    for (XskSocket* s : addon->sockets)
      if (s != this && s->out == this) s->StopPoll();
  if (xsk) {
    xsk_socket__delete(xsk);
    xsk = nullptr;
    umem->users--;
    umemRef.Reset();
  }
  if (addon) addon->sockets.erase(this);
}

// start(out, addr: Uint32Array, len: Uint32Array, verdict: Uint8Array, onBatch(n))
// For each batch, addr[i]/len[i] describe frame i in the UMEM; onBatch sets verdict[i]
// to 1 (transmit on `out`, possibly rewritten in place) or 0 (drop).
Napi::Value XskSocket::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!xsk) throw Napi::Error::New(env, "XskSocket: closed");
  if (!hasRx) throw Napi::Error::New(env, "XskSocket.start: this socket has no rx ring");
  if (poll) throw Napi::Error::New(env, "XskSocket.start: already started");
  if (info.Length() < 5 || !info[0].IsObject() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsTypedArray() || !info[4].IsFunction())
    throw Napi::TypeError::New(env, "start(out, addr, len, verdict, onBatch) expected");
  Napi::Object oobj = info[0].As<Napi::Object>();
  if (!oobj.InstanceOf(addon->socketCtor.Value())) throw Napi::TypeError::New(env, "start: out is not an XskSocket");
  XskSocket* o = XskSocket::Unwrap(oobj);
  if (!o->xsk || !o->hasTx) throw Napi::Error::New(env, "start: out socket is closed or has no tx ring");
  if (o->umem != umem) throw Napi::Error::New(env, "start: out socket uses another UMEM");
  Napi::TypedArray a = info[1].As<Napi::TypedArray>(), l = info[2].As<Napi::TypedArray>(),
                   v = info[3].As<Napi::TypedArray>();
  if (a.TypedArrayType() != napi_uint32_array || l.TypedArrayType() != napi_uint32_array ||
      v.TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "start: addr and len must be Uint32Array, verdict Uint8Array");
  uint32_t n = std::min({a.ElementLength(), l.ElementLength(), v.ElementLength()});
  if (n == 0) throw Napi::RangeError::New(env, "start: batch arrays are empty");

  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  Poller* p = new Poller;
  int rc = uv_poll_init(loop, &p->handle, fd());
  if (rc != 0) {
    delete p;
    throw SysError(env, "XskSocket.start: uv_poll_init", -rc);
  }
  p->owner = this;
  rc = uv_poll_start(&p->handle, UV_READABLE, &XskSocket::OnPoll);
  if (rc != 0) {
    ClosePoller(p);
    throw SysError(env, "XskSocket.start: uv_poll_start", -rc);
  }
  napi_add_async_cleanup_hook(env, &XskSocket::OnEnvCleanup, p, &p->hook);
  poll = p;
  out = o;
  outRef = Napi::Persistent(oobj);
  auto ua = a.As<Napi::Uint32Array>();
  auto ul = l.As<Napi::Uint32Array>();
  auto uv8 = v.As<Napi::Uint8Array>();
  addrs = ua.Data();
  lens = ul.Data();
  verdicts = uv8.Data();
  addrRef = Napi::Persistent(ua);
  lenRef = Napi::Persistent(ul);
  verdictRef = Napi::Persistent(uv8);
  batch = n;
  onBatch = Napi::Persistent(info[4].As<Napi::Function>());
  asyncContext = new Napi::AsyncContext(env, "XskSocket.batch");
  Ref();
  return env.Undefined();
}

Napi::Value XskSocket::Stop(const Napi::CallbackInfo& info) {
  StopPoll();
  return info.Env().Undefined();
}

Napi::Value XskSocket::Close(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

void XskSocket::OnPoll(uv_poll_t* handle, int status, int) {
  XskSocket* self = reinterpret_cast<Poller*>(handle)->owner;
  if (!self) return;
  if (status < 0) {
    // Stop before reporting, or a broken fd reports forever.
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    self->StopPoll();
    napi_fatal_exception(env, SysError(env, "XskSocket poll", -status).Value());
    return;
  }
  self->Drain();
}

// Returns transmitted frames (egress completion ring) to the ingress fill ring.
void XskSocket::Reclaim() {
  xsk_ring_cons* cq = out->comp;
  uint32_t cidx = 0;
  uint32_t n = xsk_ring_cons__peek(cq, umem->frameCount, &cidx);
  if (n == 0) return;
  uint32_t fidx = 0;
  // The fill ring holds twice the frames, so this reservation cannot fall short.
  n = xsk_ring_prod__reserve(fill, n, &fidx);
  for (uint32_t i = 0; i < n; i++) *xsk_ring_prod__fill_addr(fill, fidx + i) = *xsk_ring_cons__comp_addr(cq, cidx + i);
  xsk_ring_prod__submit(fill, n);
  xsk_ring_cons__release(cq, n);
}

// In copy mode one sendto transmits at most 32 frames: kick until the ring is consumed.
// Completions are recycled into the fill ring while forwarding, else just released.
void XskSocket::Kick(XskSocket* t, bool recycle) {
  int tfd = t->fd();
  for (int tries = 0; tries < 1024; tries++) {
    uint32_t consumer = __atomic_load_n(t->tx.consumer, __ATOMIC_ACQUIRE);
    if (consumer == t->tx.cached_prod) return;
    if (sendto(tfd, nullptr, 0, MSG_DONTWAIT, nullptr, 0) < 0 && errno != EAGAIN && errno != EBUSY &&
        errno != ENOBUFS && errno != EINTR)
      return;  // e.g. ENETDOWN: frames stay queued until the device comes back
    if (recycle)
      Reclaim();
    else
      t->ReleaseCompletions();
  }
}

void XskSocket::ReleaseCompletions() {
  uint32_t idx = 0;
  uint32_t n = xsk_ring_cons__peek(comp, umem->frameCount, &idx);
  if (n > 0) xsk_ring_cons__release(comp, n);
}

// transmit(addr: Uint32Array, len: Uint32Array, n): queues frames the caller wrote into the
// UMEM for sending (a traffic generator); returns how many fit in the tx ring. The frames
// are the caller's again once sent: a sender does not recycle them into the fill ring.
Napi::Value XskSocket::Transmit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!xsk || !hasTx) throw Napi::Error::New(env, "XskSocket.transmit: closed or no tx ring");
  if (poll) throw Napi::Error::New(env, "XskSocket.transmit: the socket is forwarding");
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsNumber())
    throw Napi::TypeError::New(env, "transmit(addr: Uint32Array, len: Uint32Array, n) expected");
  Napi::TypedArray a = info[0].As<Napi::TypedArray>(), l = info[1].As<Napi::TypedArray>();
  if (a.TypedArrayType() != napi_uint32_array || l.TypedArrayType() != napi_uint32_array)
    throw Napi::TypeError::New(env, "transmit: addr and len must be Uint32Array");
  uint32_t n = info[2].As<Napi::Number>().Uint32Value();
  if (n > a.ElementLength() || n > l.ElementLength())
    throw Napi::RangeError::New(env, "transmit: n exceeds the arrays");
  const uint32_t* ad = a.As<Napi::Uint32Array>().Data();
  const uint32_t* ln = l.As<Napi::Uint32Array>().Data();
  ReleaseCompletions();
  uint32_t ntx = std::min(n, xsk_prod_nb_free(&tx, n));
  uint32_t idx = 0;
  if (ntx > 0) {
    xsk_ring_prod__reserve(&tx, ntx, &idx);
    for (uint32_t i = 0; i < ntx; i++) {
      xdp_desc* d = xsk_ring_prod__tx_desc(&tx, idx + i);
      d->addr = ad[i];
      d->len = std::min(ln[i], umem->frameSize);
      d->options = 0;
    }
    xsk_ring_prod__submit(&tx, ntx);
    nTx += ntx;
  }
  Kick(this, false);
  return Napi::Number::New(env, ntx);
}

// Submits the verdicts of a batch of n frames: transmit or recycle.
void XskSocket::Complete(uint32_t n) {
  uint32_t want = 0;
  for (uint32_t i = 0; i < n; i++) want += verdicts[i] == 1;
  uint32_t room = xsk_prod_nb_free(&out->tx, want);
  uint32_t ntx = std::min(want, room);
  uint32_t tidx = 0, fidx = 0;
  if (ntx > 0) xsk_ring_prod__reserve(&out->tx, ntx, &tidx);
  uint32_t nfill = n - ntx;
  if (nfill > 0) xsk_ring_prod__reserve(fill, nfill, &fidx);
  uint32_t t = 0, f = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (verdicts[i] == 1 && t < ntx) {
      xdp_desc* d = xsk_ring_prod__tx_desc(&out->tx, tidx + t++);
      d->addr = addrs[i];
      d->len = std::min(lens[i], umem->frameSize);
      d->options = 0;
    } else {
      *xsk_ring_prod__fill_addr(fill, fidx + f++) = addrs[i];
    }
  }
  nTx += ntx;
  nDrop += nfill - (want - ntx);
  nTxFull += want - ntx;
  if (nfill > 0) xsk_ring_prod__submit(fill, nfill);
  if (ntx > 0) {
    xsk_ring_prod__submit(&out->tx, ntx);
    Kick(out, true);
  }
}

// Drains up to a few batches per wake-up, so other handles on the loop get their turn.
void XskSocket::Drain() {
  Napi::Env env = Env();
  for (int round = 0; round < 16 && poll; round++) {
    Reclaim();
    uint32_t idx = 0;
    uint32_t n = xsk_ring_cons__peek(&rx, batch, &idx);
    if (n == 0) return;
    for (uint32_t i = 0; i < n; i++) {
      const xdp_desc* d = xsk_ring_cons__rx_desc(&rx, idx + i);
      addrs[i] = uint32_t(d->addr);
      lens[i] = d->len;
      verdicts[i] = 0;
    }
    xsk_ring_cons__release(&rx, n);
    nRx += n;
    nBatches++;
    {
      Napi::HandleScope scope(env);
      try {
        onBatch.MakeCallback(Value(), {Napi::Number::New(env, n)}, *asyncContext);
      } catch (const Napi::Error& e) {
        for (uint32_t i = 0; i < n; i++) verdicts[i] = 0;
        if (poll) Complete(n);
        StopPoll();
        napi_fatal_exception(env, e.Value());
        return;
      }
    }
    // The callback may have stopped or closed us; its frames then die with the socket.
    if (!poll) return;
    Complete(n);
  }
}

Napi::Value XskSocket::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("rx", Napi::Number::New(env, double(nRx)));
  o.Set("tx", Napi::Number::New(env, double(nTx)));
  o.Set("dropped", Napi::Number::New(env, double(nDrop)));
  o.Set("txRingFull", Napi::Number::New(env, double(nTxFull)));
  o.Set("batches", Napi::Number::New(env, double(nBatches)));
  // The kernel's own counters: frames it could not hand to us.
  xdp_statistics ks{};
  socklen_t len = sizeof(ks);
  if (xsk && getsockopt(fd(), SOL_XDP, XDP_STATISTICS, &ks, &len) == 0) {
    o.Set("kernelRxDropped", Napi::Number::New(env, double(ks.rx_dropped)));
    o.Set("kernelRxRingFull", Napi::Number::New(env, double(ks.rx_ring_full)));
    o.Set("kernelFillRingEmpty", Napi::Number::New(env, double(ks.rx_fill_ring_empty_descs)));
    o.Set("kernelRxInvalid", Napi::Number::New(env, double(ks.rx_invalid_descs)));
    o.Set("kernelTxInvalid", Napi::Number::New(env, double(ks.tx_invalid_descs)));
  }
  return o;
}

// ---------------------------------------------------------------- addon

XskAddon::XskAddon(Napi::Env env, Napi::Object exports) {
  Napi::Function u = Umem::Init(env);
  Napi::Function s = XskSocket::Init(env);
  umemCtor = Napi::Persistent(u);
  socketCtor = Napi::Persistent(s);
  // uv handles must be closed before this environment's loop goes away (worker exit).
  env.AddCleanupHook([this]() {
    std::set<XskSocket*> open;
    open.swap(sockets);
    for (XskSocket* s : open) {
      s->Release();
      s->addon = nullptr;  // this struct is freed before the sockets' finalizers run
    }
    std::set<Umem*> umemsLeft;
    umemsLeft.swap(umems);
    for (Umem* u : umemsLeft) {
      u->addon = nullptr;
      u->Release();
    }
  });
  DefineAddon(exports, {InstanceValue("Umem", u), InstanceValue("XskSocket", s),
                        InstanceValue("XdpProgram", InitXdpProgram(env))});
}

NODE_API_ADDON(XskAddon)
