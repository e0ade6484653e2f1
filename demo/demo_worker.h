// The demo compute worker: a small HTTP/1.1 server on one libevent loop, used
// by `tandem --demo` and, as tandem-worker, by the tests and benchmarks. It
// parses with the proxy's HTTP/1 codec and streams bodies both ways with
// back-pressure, as tandem does.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "net/event_ptr.h"

struct event;
struct event_base;
struct evconnlistener;
struct evp_md_st;
struct sockaddr;

namespace tandem::net {
class WriteBehind;
}  // namespace tandem::net

namespace tandem::demo {

// What the workers of one process share: their counters and the status that
// /healthz answers. Several DemoWorkers (one per loop thread) may point at one;
// every field is a relaxed atomic, read only for /stats and tests.
struct DemoWorkerShared {
  std::atomic<uint64_t> connections_accepted{0};
  std::atomic<uint64_t> requests_served{0};
  std::atomic<int> health_status{200};
  // 0, or the status every request but /healthz, /stats and /control/* gets
  // — or fail_percent of them, spread evenly (every fifth for 20).
  std::atomic<int> fail_status{0};
  std::atomic<int> fail_percent{100};
  // What /control/delay set: "/" answers after this many ms (a slow worker).
  std::atomic<int> delay_ms{0};
  // /control/delay: the share of "/" requests delayed, spread evenly.
  std::atomic<int> delay_percent{100};
  std::atomic<uint64_t> delay_counter{0};
  std::atomic<uint64_t> fail_counter{0};
  // What /healthz reports as load feedback: Tandem-Weight (a percentage;
  // -1 = no header) and Tandem-State (0 none, 1 drain, 2 up).
  std::atomic<int> feedback_weight{-1};
  std::atomic<int> feedback_state{0};
  // Requests between their head arriving and their answer being queued, and
  // the most there ever were at once.
  std::atomic<uint64_t> in_flight{0};
  std::atomic<uint64_t> max_concurrent{0};
};

// The outcome of DemoWorker::Start: the bound port, or why it could not bind.
struct DemoWorkerStart {
  uint16_t port = 0;
  std::string error;  // empty on success

  bool ok() const { return error.empty(); }
};

// Endpoints (every response carries `X-Worker: <name>`):
//   GET  /                        200 "hello from <name>\n"
//   GET  /healthz                 200 "ok\n", or the status set below
//   POST /control/health?status=N sets what /healthz answers (200..599)
//   POST /control/feedback?weight=N&state=drain|up|none  load feedback that
//                                 /healthz carries (Tandem-Weight,
//                                 Tandem-State)
//   POST /control/fail?status=N[&percent=P]  answers N (200..599) to every
//                                 request but /healthz, /stats and
//                                 /control/* (or P % of them, 1..100, spread
//                                 evenly); 0 restores
//   POST /control/delay?ms=N      "/" answers after N ms (0..600,000; 0:
//                                 at once), as a slow worker would
//   GET|POST /compute?rounds=N    N rounds of SHA-256 chained over the body
//   (over
//                                 the name when there is none); default 1000,
//                                 at most 10,000,000; JSON with the hex digest
//   GET  /bytes?n=N[&chunked=1]   N bytes of kBytesPattern, streamed
//   POST|PUT /sink                reads any body without keeping it, JSON count
//   GET  /status/CODE             answers CODE (200..599)
//   GET  /sleep?ms=N              answers after N ms (at most 600,000)
//   GET  /stats                   JSON counters (this request included):
//                                 connections, requests, the /healthz and
//                                 fail statuses, requests in flight and the
//                                 most ever in flight at once
//   GET  /echo + Upgrade: websocket   101, then echoes every byte back
// Requests are answered in order on each keep-alive connection (pipelining
// too). The process must ignore SIGPIPE, as tandem does.
class DemoWorker {
 public:
  // /bytes serves this 64-byte period over and over: byte i of a body is
  // kBytesPattern[i % 64].
  static constexpr std::string_view kBytesPattern =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/";
  static constexpr uint64_t kDefaultRounds = 1000;
  static constexpr uint64_t kMaxRounds = 10'000'000;

  // Serves on `base`, which must outlive the worker. `name` ([A-Za-z0-9._-],
  // 1 to 64 characters) goes into X-Worker and the bodies. With `shared` null
  // the worker keeps counters of its own. Every member function runs on the
  // thread that runs `base`, or on any one thread before it runs.
  DemoWorker(event_base* base, std::string name,
             std::shared_ptr<DemoWorkerShared> shared = nullptr);
  // Closes the listener and every connection, answered or not.
  ~DemoWorker();

  DemoWorker(const DemoWorker&) = delete;
  DemoWorker& operator=(const DemoWorker&) = delete;

  // Binds `listen_address` ("127.0.0.1:PORT" or "[::1]:PORT"; port 0 picks a
  // free one) and accepts from then on. With `reuse_port` the socket is bound
  // with SO_REUSEPORT, so workers on other threads can bind the same port and
  // the kernel spreads connections over them. Call once; a second call fails.
  [[nodiscard]] DemoWorkerStart Start(const std::string& listen_address,
                                      bool reuse_port = false);

  // 0 until Start succeeds.
  uint16_t port() const { return port_; }
  const std::string& name() const { return name_; }
  size_t open_connections() const { return connections_.size(); }
  const DemoWorkerShared& shared() const { return *shared_; }

  // Sets the status GET /healthz answers (200 restores), as
  // POST /control/health does. Values outside 200..599 are ignored.
  void SetHealthStatus(int status);
  // Sets the status every request but /healthz, /stats and /control/* gets,
  // as POST /control/fail does; 0 restores normal answers. Other values
  // outside 200..599 are ignored.
  void SetFailStatus(int status);

 private:
  class Connection;

  struct MdDeleter {
    void operator()(evp_md_st* md) const;
  };

  static void OnAccept(evconnlistener* listener, int fd, sockaddr* address,
                       int address_length, void* arg);
  static void OnAcceptError(evconnlistener* listener, void* arg);
  static void OnAcceptRetry(int fd, short what, void* arg);

  void Accept(int fd);
  // Frees `connection`; called last by its own top-level callbacks.
  void Close(Connection* connection);

  event_base* base_;
  std::string name_;
  std::string hello_body_;
  std::shared_ptr<DemoWorkerShared> shared_;
  std::unique_ptr<evp_md_st, MdDeleter> sha256_;
  std::vector<char> pattern_;  // kBytesPattern repeated to one /bytes piece
  uint16_t port_ = 0;
  net::EventPtr accept_retry_;
  net::ListenerPtr listener_;
  // Writes the connections' answers at the end of each turn; outlives them.
  std::unique_ptr<net::WriteBehind> write_behind_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
};

}  // namespace tandem::demo
