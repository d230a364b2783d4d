// NFQUEUE: one netlink socket bound to one queue. Kernel I/O only, no policy: it drains a
// batch of queued packets into JS-owned typed arrays, makes ONE call into JS, and sends
// every verdict JS wrote back in ONE send(). It never looks inside a packet.
// See src/nfqueue.ts for the JS side and the meaning of the arrays.
#include <napi.h>
#include <uv.h>

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

// The kernel's uapi header first: it is newer than the copy inside libnetfilter_queue
// (same include guard), so NFQA_MAX covers every attribute this kernel can send.
#include <linux/netfilter.h>  // NF_DROP, NF_REPEAT
#include <linux/netfilter/nfnetlink_queue.h>

#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sys_error.h"

namespace {

// Per-packet descriptor words; keep in step with DESC in src/nfqueue.ts.
enum Desc { kId, kOffset, kCapLen, kLen, kHwProto, kMark, kIndev, kFlags, kDescWords };

// Room for the netlink and NFQA attribute headers around the copied payload (about 250
// bytes with every optional attribute); a datagram that still does not fit is handled
// as truncated, never lost.
constexpr size_t kMsgOverhead = 1024;
// A verdict message: nlmsghdr 16 + nfgenmsg 4 + NFQA_VERDICT_HDR 12 + NFQA_MARK 8.
constexpr size_t kVerdictMsgMax = 64;
// Batches handled per wake-up before yielding to the event loop (timers, other queues).
constexpr int kMaxBatchesPerWakeup = 8;
constexpr uint32_t kPacketMsgType = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

class NfQueue : public Napi::ObjectWrap<NfQueue> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NfQueue",
                       {InstanceMethod<&NfQueue::Start>("start"), InstanceMethod<&NfQueue::Close>("close"),
                        InstanceMethod<&NfQueue::Stats>("stats")});
  }

  // new NfQueue(queue, copyRange, maxLen, cfgFlags, rcvbuf, errorVerdict, desc, data, verdicts)
  explicit NfQueue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NfQueue>(info), env_(info.Env()) {
    if (info.Length() != 9) throw Napi::TypeError::New(env_, "NfQueue: 9 arguments expected");
    for (size_t i = 0; i < 6; i++) {
      if (!info[i].IsNumber()) throw Napi::TypeError::New(env_, "NfQueue: numeric argument expected");
    }
    queue_ = info[0].As<Napi::Number>().Uint32Value();
    copyRange_ = info[1].As<Napi::Number>().Uint32Value();
    uint32_t maxLen = info[2].As<Napi::Number>().Uint32Value();
    uint32_t cfgFlags = info[3].As<Napi::Number>().Uint32Value();
    int rcvbuf = info[4].As<Napi::Number>().Int32Value();
    errorVerdict_ = info[5].As<Napi::Number>().Int32Value();
    if (queue_ > 65535 || copyRange_ < 1 || copyRange_ > 65535)
      throw Napi::RangeError::New(env_, "NfQueue: bad queue or copyRange");

    // The sizes are checked here, not trusted from JS: they bound every native write.
    auto desc = TypedArray(info[6], napi_uint32_array, "desc");
    auto data = TypedArray(info[7], napi_uint8_array, "data");
    auto verdicts = TypedArray(info[8], napi_int32_array, "verdicts");
    batch_ = verdicts.ElementLength() / 2;
    if (batch_ < 1 || verdicts.ElementLength() != batch_ * 2 || desc.ElementLength() != batch_ * kDescWords ||
        data.ElementLength() != batch_ * copyRange_) {
      throw Napi::RangeError::New(
          env_, "NfQueue: desc, data and verdicts must hold batch*8, batch*copyRange and batch*2 elements");
    }
    desc_ = Napi::Persistent(desc.As<Napi::Object>());
    data_ = Napi::Persistent(data.As<Napi::Object>());
    verdicts_ = Napi::Persistent(verdicts.As<Napi::Object>());

    slot_ = MNL_ALIGN(copyRange_ + kMsgOverhead);
    rx_.resize(batch_ * slot_);
    iov_.resize(batch_);
    msgs_.resize(batch_);
    for (size_t i = 0; i < batch_; i++) {
      iov_[i] = {&rx_[i * slot_], slot_};
      msgs_[i].msg_hdr = {};
      msgs_[i].msg_hdr.msg_iov = &iov_[i];
      msgs_[i].msg_hdr.msg_iovlen = 1;
    }
    tx_.resize(batch_ * kVerdictMsgMax);
    ids_.resize(batch_);

    try {
      Open(maxLen, cfgFlags, rcvbuf);
    } catch (...) {
      CloseSocket(false);
      throw;
    }
    napi_add_env_cleanup_hook(env_, CleanupHook, this);
    hookRegistered_ = true;
  }

  ~NfQueue() override { CloseNow(); }

 private:
  struct Counters {
    double packets = 0, batches = 0, verdicts = 0, sendmsgCalls = 0, recvCalls = 0, enobufs = 0, verdictErrors = 0,
           sendErrors = 0;
  };

  Napi::TypedArray TypedArray(Napi::Value v, napi_typedarray_type type, const char* name) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
      throw Napi::TypeError::New(env_, std::string("NfQueue: bad typed array for ") + name);
    }
    return v.As<Napi::TypedArray>();
  }

  // A system error that also names the queue (.queue), as there is one NfQueue per queue.
  Napi::Error QueueError(const std::string& what, int err) {
    Napi::Error e = SysError(env_, "nfqueue " + std::to_string(queue_) + ": " + what, err);
    e.Set("queue", Napi::Number::New(env_, queue_));
    return e;
  }

  // Binds the queue and sets copy mode, queue length and flags in ONE config message, so
  // the queue never runs with the kernel's defaults (no payload copy).
  void Open(uint32_t maxLen, uint32_t cfgFlags, int rcvbuf) {
    nl_ = mnl_socket_open(NETLINK_NETFILTER);
    if (nl_ == nullptr) throw QueueError("netlink socket", errno);
    if (mnl_socket_bind(nl_, 0, MNL_SOCKET_AUTOPID) < 0) throw QueueError("netlink bind", errno);
    fd_ = mnl_socket_get_fd(nl_);
    portid_ = mnl_socket_get_portid(nl_);
    // A large buffer absorbs bursts while JS is busy. FORCE needs CAP_NET_ADMIN and ignores
    // rmem_max; the fallback is capped by it. Overflow is counted (ENOBUFS), not hidden.
    if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    }

    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, copyRange_);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, maxLen);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(cfgFlags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO));
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = 1;
    if (send(fd_, nlh, nlh->nlmsg_len, 0) < 0) throw QueueError("bind", errno);
    AwaitAck(nlh->nlmsg_seq);
  }

  // The kernel handles a config message inside send(), so the ack is already queued;
  // the poll timeout only guards against an ack lost to a full socket buffer.
  void AwaitAck(uint32_t seq) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    for (;;) {
      int n = static_cast<int>(recv(fd_, buf, sizeof buf, MSG_DONTWAIT));
      if (n < 0) {
        if (errno == EINTR || errno == ENOBUFS) continue;
        if (errno != EAGAIN) throw QueueError("bind", errno);
        struct pollfd pfd = {fd_, POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0) throw QueueError("bind: no acknowledgement from the kernel", ETIMEDOUT);
        continue;
      }
      for (auto* nlh = reinterpret_cast<struct nlmsghdr*>(buf); mnl_nlmsg_ok(nlh, n); nlh = mnl_nlmsg_next(nlh, &n)) {
        if (nlh->nlmsg_type == NLMSG_ERROR && nlh->nlmsg_seq == seq) {
          int err = -static_cast<struct nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
          if (err != 0) throw QueueError("bind", err);
          return;
        }
        if (nlh->nlmsg_type == kPacketMsgType) RepeatEarlyPacket(nlh);
      }
    }
  }

  // A packet queued between the bind and its ack cannot reach JS yet. NF_REPEAT runs the
  // hook again, which queues it again once we are listening.
  void RepeatEarlyPacket(const struct nlmsghdr* pkt) {
    struct nlattr* attr[NFQA_MAX + 1] = {};
    nfq_nlmsg_parse(pkt, attr);
    if (attr[NFQA_PACKET_HDR] == nullptr) return;
    auto* ph = static_cast<struct nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attr[NFQA_PACKET_HDR]));
    char buf[kVerdictMsgMax];
    struct nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, queue_);
    nfq_nlmsg_verdict_put(nlh, ntohl(ph->packet_id), NF_REPEAT);
    send(fd_, nlh, nlh->nlmsg_len, 0);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (fd_ < 0) throw Napi::Error::New(env_, "nfqueue " + std::to_string(queue_) + ": closed");
    if (poll_ != nullptr) throw Napi::Error::New(env_, "nfqueue " + std::to_string(queue_) + ": already started");
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env_, "start(onBatch, onError?)");
    onBatch_ = Napi::Persistent(info[0].As<Napi::Function>());
    if (info.Length() > 1 && info[1].IsFunction()) onError_ = Napi::Persistent(info[1].As<Napi::Function>());
    asyncContext_ = std::make_unique<Napi::AsyncContext>(env_, "NfQueue", Value());

    // The loop of this environment: a worker_thread has its own.
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env_, &loop);
    poll_ = new uv_poll_t;
    int r = uv_poll_init(loop, poll_, fd_);
    if (r == 0) {
      poll_->data = this;
      r = uv_poll_start(poll_, UV_READABLE, OnPoll);
      if (r != 0) StopPolling();
    } else {
      delete poll_;
      poll_ = nullptr;
    }
    if (r != 0) throw QueueError("uv_poll", -r);
    // A started queue is like a listening server: it lives until closed.
    Ref();
    referenced_ = true;
    return env_.Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int) {
    auto* self = static_cast<NfQueue*>(handle->data);
    Napi::HandleScope scope(self->env_);
    if (status < 0 && !self->ClearOverrun()) {
      self->StopPolling();  // before reporting: a poll error would fire again and again
      self->Report(self->QueueError("poll", -status).Value());
      return;
    }
    self->OnReadable();
  }

  // A receive-buffer overrun sets the socket error, so poll says POLLERR, which libuv
  // reports as EBADF after stopping the handle. Reading SO_ERROR clears it; then it is
  // only a count (the kernel counts the lost packets as user_dropped) and we go on.
  bool ClearOverrun() {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != ENOBUFS) return false;
    stats_.enobufs++;
    return uv_poll_start(poll_, UV_READABLE, OnPoll) == 0;
  }

  void OnReadable() {
    inBatch_ = true;
    for (int round = 0; round < kMaxBatchesPerWakeup && fd_ >= 0 && !closeRequested_; round++) {
      Napi::HandleScope scope(env_);
      bool more = false;
      int count = Drain(&more);
      if (count < 0) {
        StopPolling();
        Report(count == -EBADFD
                   ? Napi::Error::New(env_, "nfqueue " + std::to_string(queue_) + ": desc or data was detached").Value()
                   : QueueError("recvmmsg", -count).Value());
        break;
      }
      if (count > 0) Handle(count);
      if (!more) break;
    }
    inBatch_ = false;
    if (closeRequested_) CloseNow();
  }

  // One recvmmsg for up to `batch` datagrams (nfnetlink_queue sends one packet per
  // datagram); fills desc and data. Returns the packet count, or -errno.
  int Drain(bool* more) {
    auto desc = desc_.Value().As<Napi::Uint32Array>();
    auto data = data_.Value().As<Napi::Uint8Array>();
    // JS could have transferred (detached) the buffers: never write through a stale size.
    if (desc.ElementLength() != batch_ * kDescWords || data.ElementLength() != batch_ * copyRange_) return -EBADFD;
    int n;
    for (;;) {
      n = recvmmsg(fd_, msgs_.data(), batch_, MSG_DONTWAIT, nullptr);
      stats_.recvCalls++;
      if (n >= 0) break;
      if (errno == EINTR) continue;
      if (errno == ENOBUFS) {
        stats_.enobufs++;  // the kernel dropped packets for us (user_dropped): keep going
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -errno;
    }
    *more = static_cast<size_t>(n) == batch_;
    size_t count = 0;
    for (int i = 0; i < n; i++) {
      char* buf = &rx_[i * slot_];
      size_t len = msgs_[i].msg_len, off = 0;
      // `off` can step past `len` (the last message need not be padded to 4 bytes), so
      // compare by addition: `len - off` would wrap around and read past the datagram.
      while (off + sizeof(struct nlmsghdr) <= len) {
        auto* nlh = reinterpret_cast<struct nlmsghdr*>(buf + off);
        if (nlh->nlmsg_len < sizeof(struct nlmsghdr)) break;
        // Cut by our buffer (MSG_TRUNC): keep the attributes that arrived, so the packet
        // still gets its verdict.
        if (nlh->nlmsg_len > len - off) nlh->nlmsg_len = len - off;
        if (nlh->nlmsg_type == kPacketMsgType && count < batch_) {
          if (Parse(nlh, count, desc.Data(), data.Data())) count++;
        } else if (nlh->nlmsg_type == NLMSG_ERROR) {
          // We ask for no acks, so every reply is a verdict the kernel refused.
          if (static_cast<struct nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error != 0) stats_.verdictErrors++;
        }
        off += MNL_ALIGN(nlh->nlmsg_len);
      }
    }
    return static_cast<int>(count);
  }

  bool Parse(const struct nlmsghdr* nlh, size_t i, uint32_t* descBase, uint8_t* dataBase) {
    struct nlattr* attr[NFQA_MAX + 1] = {};
    nfq_nlmsg_parse(nlh, attr);  // on a malformed attribute, use those parsed before it
    if (attr[NFQA_PACKET_HDR] == nullptr) return false;
    auto* ph = static_cast<struct nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attr[NFQA_PACKET_HDR]));
    uint32_t* d = descBase + i * kDescWords;
    uint32_t caplen = 0, len = 0;
    if (attr[NFQA_PAYLOAD] != nullptr) {
      len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
      caplen = len < copyRange_ ? len : copyRange_;
      memcpy(dataBase + i * copyRange_, mnl_attr_get_payload(attr[NFQA_PAYLOAD]), caplen);
    }
    ids_[i] = ntohl(ph->packet_id);
    d[kId] = ids_[i];
    d[kOffset] = i * copyRange_;
    d[kCapLen] = caplen;
    d[kLen] = attr[NFQA_CAP_LEN] != nullptr ? ntohl(mnl_attr_get_u32(attr[NFQA_CAP_LEN])) : len;
    d[kHwProto] = ntohs(ph->hw_protocol);
    d[kMark] = attr[NFQA_MARK] != nullptr ? ntohl(mnl_attr_get_u32(attr[NFQA_MARK])) : 0;
    d[kIndev] = attr[NFQA_IFINDEX_INDEV] != nullptr ? ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV])) : 0;
    d[kFlags] = attr[NFQA_SKB_INFO] != nullptr ? ntohl(mnl_attr_get_u32(attr[NFQA_SKB_INFO])) : 0;
    return true;
  }

  // ONE call into JS, then ONE send with a verdict for every packet, whatever JS did.
  void Handle(size_t count) {
    stats_.packets += count;
    stats_.batches++;
    Napi::Value error;
    try {
      onBatch_.MakeCallback(Value(), {Napi::Number::New(env_, static_cast<double>(count))}, *asyncContext_);
    } catch (const Napi::Error& e) {
      error = e.Value();
    }
    auto verdicts = verdicts_.Value().As<Napi::Int32Array>();
    int32_t* v = verdicts.ElementLength() == batch_ * 2 ? verdicts.Data() : nullptr;
    if (!error.IsEmpty() && v != nullptr) {
      for (size_t i = 0; i < count; i++) {
        v[2 * i] = errorVerdict_;
        v[2 * i + 1] = -1;
      }
    }
    SendVerdicts(count, v);
    if (!error.IsEmpty()) Report(error);
  }

  // v == nullptr (the verdict array was detached): the error verdict for all.
  void SendVerdicts(size_t count, const int32_t* v) {
    char* p = tx_.data();
    for (size_t i = 0; i < count; i++) {
      struct nlmsghdr* nlh = nfq_nlmsg_put(p, NFQNL_MSG_VERDICT, queue_);
      nfq_nlmsg_verdict_put(nlh, ids_[i], v != nullptr ? v[2 * i] : errorVerdict_);
      // -1 leaves the mark alone (so mark 0xffffffff cannot be set).
      if (v != nullptr && v[2 * i + 1] != -1) nfq_nlmsg_verdict_put_mark(nlh, static_cast<uint32_t>(v[2 * i + 1]));
      p += nlh->nlmsg_len;
    }
    // nfnetlink processes every message in the buffer, each on its own.
    ssize_t r;
    do {
      r = send(fd_, tx_.data(), p - tx_.data(), 0);
      stats_.sendmsgCalls++;
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      stats_.sendErrors++;
      Report(QueueError("send verdicts", errno).Value());
      return;
    }
    stats_.verdicts += count;
  }

  // To onError, else as an uncaught exception (like an 'error' event without listener).
  void Report(Napi::Value error) {
    if (!onError_.IsEmpty()) {
      try {
        onError_.MakeCallback(Value(), {error}, *asyncContext_);
        return;
      } catch (const Napi::Error& e) {
        error = e.Value();
      }
    }
    napi_fatal_exception(env_, error);
  }

  Napi::Value Close(const Napi::CallbackInfo&) {
    // From inside onBatch: the verdicts of this batch are sent first.
    if (inBatch_) {
      closeRequested_ = true;
    } else {
      CloseNow();
    }
    return env_.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo&) {
    Napi::Object o = Napi::Object::New(env_);
    o.Set("packets", stats_.packets);
    o.Set("batches", stats_.batches);
    o.Set("verdicts", stats_.verdicts);
    o.Set("sendmsgCalls", stats_.sendmsgCalls);
    o.Set("recvCalls", stats_.recvCalls);
    o.Set("enobufs", stats_.enobufs);
    o.Set("verdictErrors", stats_.verdictErrors);
    o.Set("sendErrors", stats_.sendErrors);
    return o;
  }

  void StopPolling() {
    if (poll_ == nullptr) return;
    uv_poll_stop(poll_);
    if (tearingDown_) {
      // A worker's loop runs pending close callbacks only after its addons are unloaded,
      // so no callback of ours may be pending then: the handle (a few dozen bytes) is
      // left behind instead.
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), nullptr);
    } else {
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    }
    poll_ = nullptr;
  }

  // Idempotent; also run by the environment's cleanup hook (worker exit) and the finalizer.
  void CloseNow() {
    if (fd_ < 0 && nl_ == nullptr) return;
    StopPolling();
    CloseSocket(true);
    if (hookRegistered_) {
      napi_remove_env_cleanup_hook(env_, CleanupHook, this);
      hookRegistered_ = false;
    }
    onBatch_.Reset();
    onError_.Reset();
    asyncContext_.reset();
    if (referenced_) {
      referenced_ = false;
      Unref();
    }
  }

  // Closing the socket alone releases the queue; the UNBIND says so explicitly. Packets
  // still waiting for a verdict are dropped by the kernel either way.
  void CloseSocket(bool unbind) {
    if (unbind && fd_ >= 0) {
      char buf[MNL_SOCKET_BUFFER_SIZE];
      struct nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_);
      nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_UNBIND);
      send(fd_, nlh, nlh->nlmsg_len, 0);
    }
    if (nl_ != nullptr) mnl_socket_close(nl_);
    nl_ = nullptr;
    fd_ = -1;
  }

  static void CleanupHook(void* arg) {
    auto* self = static_cast<NfQueue*>(arg);
    self->hookRegistered_ = false;
    self->tearingDown_ = true;
    self->CloseNow();
  }

  Napi::Env env_;
  uint32_t queue_ = 0, copyRange_ = 0, portid_ = 0;
  int32_t errorVerdict_ = NF_DROP;
  size_t batch_ = 0, slot_ = 0;
  struct mnl_socket* nl_ = nullptr;
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  bool inBatch_ = false, closeRequested_ = false, hookRegistered_ = false, referenced_ = false, tearingDown_ = false;
  Napi::ObjectReference desc_, data_, verdicts_;
  Napi::FunctionReference onBatch_, onError_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  std::vector<char> rx_, tx_;
  std::vector<struct iovec> iov_;
  std::vector<struct mmsghdr> msgs_;
  std::vector<uint32_t> ids_;  // our own copy: JS may scribble on desc
  Counters stats_;
};

// No static state: each environment (main thread, worker) gets its own class.
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NfQueue", NfQueue::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(nfqueue, Init)
