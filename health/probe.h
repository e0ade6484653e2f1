// One backend's active health check: a TCP connect, an HTTP request or the
// gRPC health call (health/grpc_check.h) on a fresh connection, bounded by one
// timeout, as HAProxy's tcp-check/httpchk (src/check.c), with agent-check style
// load feedback in the response headers.
#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "conf/config.h"
#include "health/grpc_check.h"
#include "net/http_parser.h"
#include "net/tls_client.h"

namespace tandem::health {

struct ProbeResult {
  enum class Failure {
    kNone,
    kConnect,
    kTimeout,
    kReset,
    kStatus,
    kBody,
    kProtocol
  };
  bool passed = false;
  Failure failure = Failure::kNone;
  // Short, for logs and /status: "HTTP 200", "connected", "connection refused",
  // "timed out after 1s", "HTTP 503 (expected 200-399)", "body lacks \"ok\"",
  // "connection reset", "invalid HTTP response".
  std::string detail;
  int status = 0;  // HTTP status; 0 for TCP checks or when no head arrived
  std::chrono::microseconds duration{0};
  // From "Tandem-Weight: N%" or "N" (0..1000); nullopt when absent or invalid.
  std::optional<uint32_t> weight_percent;
  // "Tandem-State: drain" -> true, "up" -> false (case-insensitive); nullopt
  // when absent or any other value.
  std::optional<bool> drain;
};

// Reads an HTTP check's response with the proxy's codec and judges it as soon
// as enough has arrived: the status first, then `expect_body` within the
// body's first 64 KiB. Feedback headers are read from every head (interim
// ones too) and from a chunked body's trailers. No I/O; one thread.
class ProbeResponse : private net::HttpParser::Handler {
 public:
  // `check` must outlive this object.
  explicit ProbeResponse(const conf::HealthCheck& check);

  ProbeResponse(const ProbeResponse&) = delete;
  ProbeResponse& operator=(const ProbeResponse&) = delete;

  // Forgets the last response, for the next probe.
  void Reset();
  // Feeds the response's bytes in order, in pieces of any size; true once
  // it is judged (then result() holds the verdict and no more bytes are
  // needed).
  bool Feed(const char* data, size_t length);
  // The backend closed the connection: true when that ends a body delimited
  // by close, which judges it; false when the response is incomplete.
  bool FinishAtEof();

  bool decided() const { return decided_; }
  // Bytes fed since Reset().
  uint64_t received_bytes() const { return received_bytes_; }
  // What was read: status (0 until a final head arrived), weight_percent and
  // drain; and once decided(), passed, failure and detail.
  const ProbeResult& result() const { return result_; }

 private:
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser& parser) override;
  void OnBody(net::HttpParser& parser, const char* data,
              size_t length) override;
  void OnMessageComplete(net::HttpParser& parser) override;
  void Decide(ProbeResult::Failure failure, std::string detail);
  void NoteFeedback(const net::HeaderList& fields);

  const conf::HealthCheck& check_;
  net::HttpParser parser_;
  ProbeResult result_;
  bool decided_ = false;
  uint64_t received_bytes_ = 0;
  bool head_complete_ = false;  // the final (non-1xx) head has arrived
  std::string body_;            // its first 64 KiB, while expect_body is due
};

// Probes one backend, at most one probe in flight. Lives on one event loop:
// every member is called on that loop's thread.
class Prober {
 public:
  using Callback = std::function<void(const ProbeResult&)>;

  // `check` is the cluster's check (kind tcp or http; kNone probes as tcp);
  // `backend` the backend's address. Both are copied. The check connects to
  // `check.port` when non-zero, else to the backend's port. The Host header is
  // `check.host`, else the backend address's host part (bracketed for IPv6),
  // with ":port" when the probed port is not 80. `base` must outlive the
  // Prober. Throws std::bad_alloc when libevent cannot allocate its events.
  // With `tls`, the check speaks TLS with the cluster's settings (the
  // backend's certificate verified as on the data path). `preamble` (a
  // PROXY header) is sent first, before any TLS byte.
  Prober(event_base* base, const conf::HealthCheck& check,
         const conf::SocketAddress& backend,
         std::shared_ptr<net::TlsClientContext> tls = nullptr,
         std::string preamble = {});
  // Cancels a probe in flight; its callback is not called.
  ~Prober();

  Prober(const Prober&) = delete;
  Prober& operator=(const Prober&) = delete;

  // Starts a probe; requires !running(). `done` is called exactly once, on
  // the loop, never from Start itself (a failure to even start is delivered
  // on the next loop iteration). From `done`, the caller may Start again or
  // destroy the Prober.
  void Start(Callback done);
  // Stops the probe in flight, if any, and drops its callback uncalled.
  void Cancel();
  // True from Start until `done` has been called or the probe was cancelled.
  bool running() const { return running_; }

 private:
  struct BufferEventDeleter {
    void operator()(bufferevent* bev) const { bufferevent_free(bev); }
  };
  struct EventDeleter {
    void operator()(event* ev) const { event_free(ev); }
  };
  using BufferEventPtr = std::unique_ptr<bufferevent, BufferEventDeleter>;
  using EventPtr = std::unique_ptr<event, EventDeleter>;

  // Opens the connection to `target_` into bev_. The one place a TLS
  // bufferevent will replace the socket one. Returns 0, or an errno.
  int Connect();
  void OnConnected();
  void OnRead();
  void OnEvent(short events);
  // Feeds bytes to the response; true once the probe has a verdict.
  bool Parse(const char* data, size_t length);
  // Records the outcome; the first one wins. Callers then Finish().
  void Decide(ProbeResult::Failure failure, std::string detail);
  // Tears the connection down and calls the callback (which may destroy us).
  void Finish();
  void Close();

  static void ReadCb(bufferevent* bev, void* arg);
  static void EventCb(bufferevent* bev, short events, void* arg);
  static void TimeoutCb(evutil_socket_t fd, short events, void* arg);
  static void DeliverCb(evutil_socket_t fd, short events, void* arg);

  event_base* base_;

  std::shared_ptr<net::TlsClientContext> tls_;
  conf::HealthCheck check_;
  conf::SocketAddress target_;  // the backend's address, check port applied
  std::string preamble_;
  std::string request_;

  EventPtr timer_;    // the whole probe's deadline
  EventPtr deliver_;  // delivers a result decided inside Start
  BufferEventPtr bev_;
  Callback done_;
  bool running_ = false;
  bool connected_ = false;
  std::chrono::steady_clock::time_point started_;
  // The outcome (passed, failure, detail); the rest comes from response_.
  ProbeResult result_;
  bool decided_ = false;             // result_ holds the outcome
  ProbeResponse response_{check_};   // reset by Start
  std::unique_ptr<GrpcCheck> grpc_;  // kind grpc: the call of this probe
};

}  // namespace tandem::health
