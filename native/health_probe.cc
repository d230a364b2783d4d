// Health probes for `nfqlb health`, whole in C++ on Node's event loop: a non-blocking TCP
// connect from a socket with SO_MARK set to the target's fwmark (Node has no SO_MARK), and for
// http probes a GET and the status line. A probe to VIP:port with the target's fwmark takes the
// target's `ip rule fwmark` route, as balanced packets do, so it proves that the target serves
// the VIP. One probe is a socket, a uv_poll and a uv_timer, and one JS callback at the end: a
// net.Socket per probe cost ten times the CPU. The socket closes with RST (SO_LINGER 0, as
// HAProxy's checks do): a checker that closes first would otherwise collect TIME_WAIT sockets.
// SO_MARK needs CAP_NET_ADMIN.
#include <arpa/inet.h>
#include <napi.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "sys_error.h"

namespace {

enum class Step { connecting, sending, reading };

struct Probe {
  uv_poll_t poll;
  uv_timer_t timer;
  napi_env env;
  int fd;
  int open_handles = 2;
  bool finished = false;
  Step step = Step::connecting;
  Napi::FunctionReference callback;
  std::string request;  // empty: a tcp probe, done once connected
  size_t sent = 0;
  char head[16];  // enough for "HTTP/1.1 200" and a newline
  size_t got = 0;
};

void OnClosed(uv_handle_t* h) {
  auto* p = static_cast<Probe*>(h->data);
  if (--p->open_handles == 0) delete p;
}

// Ends the probe: `why` is null when the target passed, else the reason it failed.
void Finish(Probe* p, const char* why) {
  if (p->finished) return;
  p->finished = true;
  uv_poll_stop(&p->poll);
  uv_timer_stop(&p->timer);
  close(p->fd);  // safe after uv_poll_stop
  Napi::Env env(p->env);
  {
    Napi::HandleScope scope(env);
    napi_value arg = why == nullptr ? env.Null() : Napi::String::New(env, why);
    try {
      p->callback.MakeCallback(env.Global(), {arg});
    } catch (const Napi::Error&) {
      // The callback (a promise's resolve) does not throw; nothing here could report it anyway.
    }
  }
  p->callback.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&p->poll), OnClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&p->timer), OnClosed);
}

const char* ErrName(int err) {
  const char* name = strerrorname_np(err);
  return name ? name : "EUNKNOWN";
}

// "HTTP/1.x NNN": null for 2xx and 3xx, else why not.
const char* Verdict(const Probe* p) {
  static thread_local char why[32];
  if (p->got < 12 || std::strncmp(p->head, "HTTP/1.", 7) != 0 || p->head[8] != ' ') return "no HTTP status line";
  int status = 0;
  for (int i = 9; i < 12; i++) {
    if (p->head[i] < '0' || p->head[i] > '9') return "no HTTP status line";
    status = status * 10 + (p->head[i] - '0');
  }
  if (status >= 200 && status < 400) return nullptr;
  snprintf(why, sizeof(why), "HTTP %d", status);
  return why;
}

void OnPoll(uv_poll_t* h, int status, int /*events*/) {
  auto* p = static_cast<Probe*>(h->data);
  if (status < 0) return Finish(p, uv_err_name(status));
  if (p->step == Step::connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return Finish(p, ErrName(err));
    if (p->request.empty()) return Finish(p, nullptr);
    p->step = Step::sending;
  }
  if (p->step == Step::sending) {
    ssize_t n = send(p->fd, p->request.data() + p->sent, p->request.size() - p->sent, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN ? void() : Finish(p, ErrName(errno));
    p->sent += n;
    if (p->sent < p->request.size()) return;
    p->step = Step::reading;
    uv_poll_start(&p->poll, UV_READABLE, OnPoll);
    return;
  }
  ssize_t n = recv(p->fd, p->head + p->got, sizeof(p->head) - p->got, 0);
  if (n < 0) return errno == EAGAIN ? void() : Finish(p, ErrName(errno));
  if (n == 0) return Finish(p, p->got == 0 ? "closed without a status line" : Verdict(p));
  p->got += n;
  if (p->got >= 12) Finish(p, Verdict(p));
}

void OnTimeout(uv_timer_t* t) { Finish(static_cast<Probe*>(t->data), "timeout"); }

// startProbe(address, port, mark, request, timeoutMs, done): starts a probe of address:port
// (IPv4 or IPv6) from a socket with SO_MARK `mark`; `request` is sent once connected ('' for
// none: the connect is the probe) and then the answer must start with a 2xx or 3xx status line.
// done(why) is called once: why is null when the target passed. A connect that fails at once
// (no route) is returned as the reason instead, and done is never called.
Napi::Value StartProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 6 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsString() ||
      !info[4].IsNumber() || !info[5].IsFunction()) {
    throw Napi::TypeError::New(env, "startProbe(address, port, mark, request, timeoutMs, done)");
  }
  std::string address = info[0].As<Napi::String>();
  int port = info[1].As<Napi::Number>().Int32Value();
  unsigned int mark = info[2].As<Napi::Number>().Uint32Value();
  int64_t timeout = info[4].As<Napi::Number>().Int64Value();
  if (port < 1 || port > 65535 || timeout < 1)
    throw Napi::RangeError::New(env, "startProbe: port or timeout out of range");
  sockaddr_storage sa{};
  socklen_t salen;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&sa);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&sa);
  if (inet_pton(AF_INET, address.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    salen = sizeof(*in4);
  } else if (inet_pton(AF_INET6, address.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    salen = sizeof(*in6);
  } else {
    throw Napi::TypeError::New(env, "startProbe: '" + address + "' is not an IP address");
  }
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw SysError(env, "socket", errno);
  linger rst{1, 0};
  const char* failed = setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0   ? "SO_MARK"
                       : setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst)) != 0 ? "SO_LINGER"
                                                                                       : nullptr;
  if (failed != nullptr) {
    int err = errno;
    close(fd);
    throw SysError(env, failed, err);
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), salen) != 0 && errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    return Napi::String::New(env, ErrName(err));
  }
  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    close(fd);
    throw Napi::Error::New(env, "startProbe: no event loop");
  }
  auto* p = new Probe();
  p->env = env;
  p->fd = fd;
  p->request = info[3].As<Napi::String>();
  p->callback = Napi::Persistent(info[5].As<Napi::Function>());
  p->poll.data = p;
  p->timer.data = p;
  uv_poll_init_socket(loop, &p->poll, fd);
  uv_timer_init(loop, &p->timer);
  uv_poll_start(&p->poll, UV_WRITABLE, OnPoll);
  uv_timer_start(&p->timer, OnTimeout, timeout, 0);
  return env.Undefined();
}

// checkMark(): throws when this process may not set SO_MARK (it lacks CAP_NET_ADMIN), so that
// the checker fails at start instead of seeing every target down.
Napi::Value CheckMark(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw SysError(env, "socket", errno);
  unsigned int mark = 1;
  int rc = setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
  int err = errno;
  close(fd);
  if (rc != 0) throw SysError(env, "SO_MARK", err);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("startProbe", Napi::Function::New(env, StartProbe, "startProbe"));
  exports.Set("checkMark", Napi::Function::New(env, CheckMark, "checkMark"));
  return exports;
}

}  // namespace

NODE_API_MODULE(health_probe, Init)
