// One try of an exchange on one backend connection (Envoy's
// UpstreamRequest): it takes a pooled or new connection, writes the request
// head and body, reads the response with a parser of its own and tells its
// exchange what happened. It speaks HTTP/1.1 to the backend and knows
// nothing of the client's side.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

#include "dispatcher/proxy/retry_policy.h"
#include "dispatcher/proxy/upstream.h"
#include "net/http_parser.h"

namespace tandem::dispatcher {

class Exchange;
struct BackendRuntime;
struct ClusterRuntime;

class Attempt : private UpstreamUser, private net::HttpParser::Handler {
 public:
  explicit Attempt(Exchange& exchange) : exchange_(exchange) {}
  ~Attempt() override;
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  // How Begin() went.
  enum class Start : uint8_t {
    kSending,     // an idle pooled connection took the request at once
    kConnecting,  // a new connection is being made
    kFailed,      // no connection could be made
  };
  // Starts the try on backend `backend` of the exchange's cluster (a slot
  // already taken by Acquire() when the backend has limits).
  Start Begin(size_t backend);
  // Takes a slot of a limited backend (and a connection when none is
  // idle); false when it is full. The next Begin() owns what was taken.
  bool Acquire(BackendRuntime& backend);
  // Takes one of the cluster's max_requests (across threads) for this try;
  // false when they are all taken. End() gives it back.
  bool AcquireRequest(ClusterRuntime& runtime);
  // Gives it back; `drain` lets the oldest queued request try at once.
  void ReleaseRequest(bool drain);
  // Writes the request head (and, for a retry, the body so far); false when
  // the connection cannot be used.
  bool SendHead();
  // Request body bytes, and its end, framed as the request came.
  void SendBody(const char* data, size_t length);
  void SendBodyEnd();
  // The backend connection holds as much output as it should.
  bool OutputFull() const;
  // The client took what was buffered: read the backend again.
  void ResumeResponse();
  // Ends the try: `reusable` gives the connection back to its pool, else it
  // is closed. Safe to call when no try is on.
  void End(bool reusable);
  // End(), and the response parser goes back to the loop: the exchange is
  // over.
  void Reset();

  // Whether the connection may carry another request after this response.
  bool Reusable() const;
  // Tells health/ how the try went.
  void ReportOutcome(bool success, FailureKind failure);

  bool on() const { return has_backend_; }
  bool connecting() const { return connecting_; }
  size_t backend() const { return backend_; }
  UpstreamConnection* upstream() const { return upstream_; }
  std::chrono::steady_clock::time_point start() const { return start_; }
  bool upstream_eof() const { return upstream_eof_; }
  const net::HttpParser* response() const { return response_.get(); }
  // Bytes held by the backend connection's buffers and the parser.
  uint64_t BufferedBytes() const;

  // Hang detection (dispatcher/hang_watch.cc): the next try awaiting a
  // response head from the same backend, oldest first.
  Attempt* next_awaiting() const { return await_next_; }
  // Since when this request, sent whole, awaits its response head; nullopt
  // while it is still being sent or once answered.
  std::optional<std::chrono::steady_clock::time_point> AwaitingSince() const;
  // Its backend is suspected hung: the request goes to another backend when
  // a retry is allowed now (true); otherwise it keeps waiting (false).
  bool RetryOffHungBackend();

 private:
  // UpstreamUser.
  void OnUpstreamConnected(UpstreamConnection& connection) override;
  void OnUpstreamRead(UpstreamConnection& connection) override;
  void OnUpstreamDrained(UpstreamConnection& connection) override;
  void OnUpstreamClosed(UpstreamConnection& connection, short events) override;
  // net::HttpParser::Handler, for the response parser.
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser& parser) override;
  void OnBody(net::HttpParser& parser, const char* data,
              size_t length) override;
  void OnMessageComplete(net::HttpParser& parser) override;

  void ParseResponse();
  void OnResponseHead(net::HttpParser& parser);
  // The response head came: its time feeds the cluster's p99 (and the
  // backend's latency for p2c-ewma).
  void SampleHeadTime();
  void ReplayBody();
  void LinkAwaiting();
  void UnlinkAwaiting();

  Exchange& exchange_;
  UpstreamConnection* upstream_ = nullptr;
  std::unique_ptr<net::HttpParser> response_;  // lent by the loop
  size_t backend_ = 0;
  std::chrono::steady_clock::time_point start_;
  bool has_backend_ = false;
  bool connecting_ = false;
  bool response_bytes_seen_ = false;
  bool response_blocked_ = false;     // backend reads off: client output full
  bool upstream_eof_ = false;         // the backend closed its side
  bool holds_slot_ = false;           // counted in the backend's inflight
  bool connection_reserved_ = false;  // a new connection already counted
  bool holds_request_ = false;        // one of the cluster's max_requests
  uint32_t interim_responses_ = 0;    // 1xx heads so far
  // Bumped whenever a connection is let go: a handler that parsed can tell
  // that the try it ran for has ended (and another may have begun).
  uint32_t releases_ = 0;
  int retry_status_ = 0;  // a 5xx answer being dropped for a retry
  // In its backend's awaiting list (BackendRuntime::awaiting_first).
  Attempt* await_prev_ = nullptr;
  Attempt* await_next_ = nullptr;
  bool awaiting_ = false;
};

}  // namespace tandem::dispatcher
