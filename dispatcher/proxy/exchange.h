// One request and its response, whatever carries them (Envoy's router
// filter, nginx's ngx_http_upstream_t): routing, the queue and the retry
// budget, deadlines, the retry decision, its tries on backends (Attempt)
// and its access-log record. It talks to the client only through
// Downstream, so an HTTP/1.1 connection (ClientConnection) carries one
// exchange at a time and an HTTP/2 stream (H2Stream) one each.
#pragma once

#include <event2/event_struct.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "algorithms/picker.h"
#include "conf/priority.h"
#include "dispatcher/proxy/attempt.h"
#include "dispatcher/proxy/retry_policy.h"
#include "net/http_parser.h"
#include "net/proxy_protocol.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {

class Loop;
struct ClusterRuntime;
struct ListenerRuntime;

// The client's side of an exchange, as the exchange sees it.
class Downstream {
 public:
  // How an exchange ended, for the side that carries it.
  enum class End : uint8_t {
    kNext,     // answered in full: the next request may follow
    kClose,    // close once what was written has gone out
    kCutOff,   // the response was cut short: close so it cannot look whole
    kDestroy,  // close at once
  };
  // What a local answer became.
  struct LocalReply {
    bool close = false;       // the connection closes after it
    uint64_t body_bytes = 0;  // for the access log
  };

  // Where the request came in (the current config's listener), the request
  // as parsed, and its client.
  virtual ListenerRuntime& listener() const = 0;
  virtual const net::HttpParser& request() const = 0;
  virtual std::string_view client_address() const = 0;  // "ip:port"
  virtual std::string_view client_ip() const = 0;
  // "HTTP/1.1", "HTTP/1.0" or "HTTP/2.0", for the access log.
  virtual std::string_view protocol() const = 0;
  // A gRPC call (HTTP/2, content-type application/grpc...).
  virtual bool grpc() const = 0;
  virtual const net::ProxyTlvs* proxy_tlvs() const = 0;
  // send_proxy's header naming this client (made once, then kept).
  virtual const std::string& ProxyHeader(int version) = 0;

  // A backend takes the request now: its body may come (and a client that
  // expects 100-continue is told to send it).
  virtual void ContinueRequest() = 0;
  // The backend took what was buffered: more of the body may come.
  virtual void RequestDrained() = 0;

  // Why this client cannot be sent `response` (nullptr: it can).
  virtual const char* CannotCarry(const net::HttpParser& response) const = 0;
  virtual void SendInterim(const net::HttpParser& response) = 0;
  virtual void SendResponseHead(const net::HttpParser& response) = 0;
  virtual void SendResponseBody(const char* data, size_t length) = 0;
  virtual void SendResponseEnd(const net::HeaderList& trailers) = 0;
  // The client's side holds as much output as it should.
  virtual bool ResponseOutputFull() const = 0;
  // tandem's own answer; closes when `close` (or when it must).
  virtual LocalReply SendLocalResponse(int status, const char* detail,
                                       bool close,
                                       std::string_view extra_fields) = 0;

  // 101: from here on both sides carry bytes of another protocol, and the
  // backend connection's events go to the Tunnel* calls.
  virtual void StartTunnel() = 0;
  virtual void TunnelBackendRead() = 0;
  virtual void TunnelBackendDrained() = 0;
  virtual void TunnelBackendClosed(short events) = 0;

  // The exchange is over (logged, its try ended).
  virtual void ExchangeEnded(End end) = 0;

 protected:
  ~Downstream() = default;
};

class Exchange {
 public:
  Exchange(Loop& loop, Downstream& downstream);
  ~Exchange();
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // ---- from the downstream --------------------------------------------
  // The request head is complete (and, when `complete`, the whole request;
  // `at_upgrade`: it stopped at a protocol switch): route it.
  void Begin(bool complete, bool at_upgrade);
  // Body bytes of the request, and its end (`at_upgrade`: the request
  // stopped at a protocol switch).
  void OnRequestBody(const char* data, size_t length);
  void OnRequestComplete(bool at_upgrade);
  // The request broke the rules after its head (`status`, `reason`).
  void OnRequestError(int status, const char* reason);
  // Answers before or instead of routing (a bad head, a head too slow),
  // setting `flag`; the connection closes after it.
  void Reject(int status, const char* detail, uint32_t flag);
  // The client side's output drained: the response may flow again.
  void OnDownstreamDrained();
  // Something moved: the exchange's idle clock starts again.
  void Touch() { last_activity_ = net::TurnClock::Now(); }
  // The exchange ends badly with `flag` (DC: the client went away): logged,
  // its try ended, and the downstream told how to close.
  void Abort(uint32_t flag);
  // The tunnel after a 101 has ended (both directions, or a side failed):
  // logged, and the downstream told how to close.
  void EndTunnel(Downstream::End end);
  // The downstream goes away: leave queues and end the try, silently.
  void Cancel();
  // The next request begins: every field back to its start.
  void Reset();

  // ---- from the loop ---------------------------------------------------
  // A queued request tries again; false when it is still queued.
  bool RetryFromQueue();
  // The retry budget has room again: the waiting retry goes now.
  void ResumeRetry();

  // ---- from its attempts -----------------------------------------------
  // (Two tries are out at once only while a hedge races the first one.)
  void OnConnected(Attempt& attempt);
  void FailAttempt(Attempt& attempt, FailureKind failure, int status,
                   const char* detail);
  // A 502/503/504 answer from `attempt`: true when a retry would be made,
  // or another try is still out (the answer is then dropped).
  bool WouldRetryStatus(const Attempt& attempt) const;
  // Whether `attempt` speaks for the exchange now: no other try races it.
  bool Owns(const Attempt& attempt) const {
    return &attempt == attempt_ && !Other(attempt).on();
  }
  // The response head came from `attempt` and passed: it wins any race, and
  // the client is told.
  void OnResponseHead(Attempt& attempt, const net::HttpParser& response);
  void OnResponseBody(const char* data, size_t length);
  void OnResponseEnd(const net::HeaderList& trailers);
  void OnResponseComplete();
  void EnterTunnel();
  // The backend connection drained: more request body may go.
  void OnUpstreamDrained();
  // Retries `attempt` off a backend suspected hung when allowed now.
  bool RetryOffHungBackend(Attempt& attempt);

  // ---- what it is ------------------------------------------------------
  // The request goes to a backend's connection now (its body may flow).
  bool sending() const { return phase_ == Phase::kProxying; }
  bool tunnel() const { return phase_ == Phase::kTunnel; }
  bool request_complete() const { return state_.request_complete; }
  std::chrono::steady_clock::time_point request_done() const {
    return state_.request_done;
  }
  // When a gRPC client's deadline passes (zero: it set none).
  std::chrono::steady_clock::time_point grpc_deadline() const {
    return state_.grpc_deadline;
  }
  bool response_started() const { return state_.response_started; }
  bool head_request() const { return state_.head_request; }
  uint32_t tries() const { return state_.tries; }
  // The request body so far, kept for a retry.
  const std::string& retry_body() const { return state_.retry_body; }
  // Where a composed failure detail is kept alive.
  std::string& detail() { return state_.detail; }
  void AddFlags(uint32_t flags) { state_.flags |= flags; }
  bool upgrade() const { return state_.upgrade; }
  uint8_t priority() const { return state_.priority; }
  // The backend connection holds as much output as it should, or the body
  // is held for a retry (HoldsBody).
  bool UpstreamOutputFull() const {
    return attempt_->upstream() != nullptr &&
           (attempt_->OutputFull() || HoldsBody());
  }
  // The try that carries the request (and, once it started, the response).
  Attempt& attempt() { return *attempt_; }
  const Attempt& attempt() const { return *attempt_; }
  Loop& loop() const { return loop_; }
  // A try's response head came from `backend`, `after` its request was
  // sent. When an earlier try of this request was cut waiting on another
  // backend, that one may be hung (Loop::SuspectUnanswered).
  void HeadArrived(size_t backend, std::chrono::microseconds after);
  Downstream& downstream() const { return downstream_; }
  ClusterRuntime& cluster() const;
  uint64_t BufferedBytes() const;

 private:
  // The try's HTTP/2 worker has not shown it has the stream, and can take
  // `window` body bytes meanwhile: all the body taken stays kept for a
  // retry, however long, as a refusal leaves it never reached. Only while
  // the window is at most kMaxHeldWindow; nullopt otherwise.
  std::optional<uint64_t> BodyKeptForWorker() const;
  // Take no more of the body from the client: what is kept is as much as
  // the worker can take before it shows it has the stream.
  bool HoldsBody() const;

  enum class Phase : uint8_t {
    kIdle,        // no request head yet
    kQueued,      // every eligible backend is at its limit: waiting
    kRetryWait,   // a retry waits for the retry budget
    kConnecting,  // connecting to a backend
    kProxying,    // request sent or streaming; response awaited or streaming
    kTunnel,      // after 101: the downstream copies bytes both ways
    kDone,        // answered and logged
  };

  // A retry: what the client gets if no backend is left, and whether it
  // must go to a backend this request has not failed on.
  struct Retry {
    int status = 0;
    const char* detail = nullptr;
    bool other_backend = true;
  };
  // Picks a backend (or queues, or answers) for the first try, or for a
  // retry when `retry` is set.
  void Route(const Retry* retry = nullptr);
  void StartAttempt(size_t backend);
  // The listener's and the cluster's rate limits: false when one refused
  // the request (it was answered 429 with Retry-After).
  bool PassRateLimits();
  void SendRequest();
  Attempt& Other(const Attempt& attempt) {
    return &attempt == &first_ ? second_ : first_;
  }
  const Attempt& Other(const Attempt& attempt) const {
    return &attempt == &first_ ? second_ : first_;
  }
  // Ends every try (the exchange is over).
  void EndTries();
  // Hedging (docs/retries.md): when the one try out may get a second one,
  // and when that is due (nullopt: never).
  std::optional<std::chrono::steady_clock::time_point> HedgeDue() const;
  void StartHedge();
  // Awaiting a response head: the timer for the nearest deadline of every
  // try out, the request's, and a hedge's.
  void ArmHeadTimer(std::chrono::steady_clock::time_point now);
  // The request's hash for ring-hash and maglev, from hash_key.
  std::optional<uint64_t> RequestHash() const;
  void EnterQueue(ClusterRuntime& runtime,
                  std::chrono::steady_clock::duration timeout);
  void RequeueAtFront(ClusterRuntime& runtime);
  // Every backend (or the cluster's max_requests) is full: wait in the
  // queue when there is room, else 503 with Retry-After.
  void Overflow(ClusterRuntime& runtime, bool retry, const char* detail);
  // A full queue: the newest waiting request of a lower priority than this
  // one is answered 503 and leaves it; false when there is none.
  bool ShedLower(ClusterRuntime& runtime);
  // Where this request stands in the queue: behind every request of its
  // priority or higher (`ahead_of_equals`: in front of its equals).
  void JoinQueue(ClusterRuntime& runtime, bool ahead_of_equals);
  void Dequeue();
  // It is out of the queue (the caller took it out): counts and wait time.
  void LeftQueue(ClusterRuntime& runtime,
                 std::chrono::steady_clock::time_point since);
  // Gives back its place in the cluster's max_pending, if it holds one.
  void ReleasePending(ClusterRuntime& runtime);
  // The retry decision's input after `failure`, with `reached_failures`.
  RetryInput RetryFacts(FailureKind failure, uint32_t reached_failures) const;
  bool RetryAllowedNow(FailureKind failure) const;
  std::chrono::steady_clock::time_point RequestDeadline() const;
  // When `attempt` times out with `try_timeout`.
  std::chrono::steady_clock::time_point TryDeadline(
      const Attempt& attempt,
      std::chrono::steady_clock::duration try_timeout) const;
  // What the picker is asked, with `tried` the backends it must avoid.
  // `pick` is passed over as slow: another backend the picker chooses with
  // the slow ones treated as tried, or `pick` when none is left or a probe
  // is due.
  size_t PassOverSlow(ClusterRuntime& runtime, algorithms::PickInput input,
                      size_t pick);
  algorithms::PickInput PickInputFor(const ClusterRuntime& runtime,
                                     const algorithms::TriedSet* tried) const;
  std::chrono::steady_clock::duration TryTimeout() const;
  // tandem's own answer; closes when `close` or the request is not whole.
  void Respond(int status, const char* detail, bool close,
               std::string_view extra_fields = {});
  void RespondBusy(const char* detail);
  void Finish();
  // Logs once, and leaves the cluster's in-flight and retry counts.
  void Log();
  void ReleaseClusterCounts();
  // The exchange turns into a retry: counted against the retry budget and
  // max_retries_in_flight.
  void CountRetry(ClusterRuntime& runtime);
  std::string_view FlagsText();
  void ArmTimer(std::chrono::steady_clock::duration delay);
  // When silence ends the exchange while a body streams: idle_timeout after
  // the last byte; for a gRPC call its deadline, or never (nullopt).
  std::optional<std::chrono::steady_clock::time_point> IdleDeadline() const;
  void ArmIdleTimer();
  static void TimerCb(evutil_socket_t, short, void* arg);
  void OnTimer();

  Loop& loop_;
  Downstream& downstream_;
  // The listener's cluster as of Begin() (a reload's new one from the next
  // request on); null before the first.
  ClusterRuntime* cluster_ = nullptr;
  struct event timer_;
  std::chrono::steady_clock::time_point
      timer_due_;  // when timer_ fires, while it is pending
  Phase phase_ = Phase::kIdle;
  std::chrono::steady_clock::time_point last_activity_;
  std::string flags_text_;

  // Everything one exchange knows; `state_ = {}` starts the next.
  struct State {
    algorithms::TriedSet tried;
    uint32_t tries = 0;
    uint32_t reached_failures = 0;  // failed tries that reached a worker
    bool pool_race_seen = false;    // a pooled connection failed a try
    // The last try cut by its timeout without a response head: its backend
    // (SIZE_MAX: none) and how long the request had waited on it.
    size_t unanswered_backend = SIZE_MAX;
    std::chrono::steady_clock::duration unanswered_for{};
    uint32_t flags = 0;  // ExchangeFlag bits
    bool logged = false;
    std::string detail;      // a composed 502 detail, kept alive
    int pending_status = 0;  // answer if a waiting retry never goes
    const conf::Backend* last_backend = nullptr;  // for the access log
    size_t last_backend_index = 0;
    std::string_view retry_note;  // why the last failure was not retried
    std::string trail;       // failed tries: "backend:CODE ..." for the log
    std::string retry_body;  // request body kept for a retry
    bool body_kept = true;   // retry_body holds the whole body so far
    bool counted_request = false;     // in cluster().active_requests
    bool counted_retry = false;       // in cluster().active_retries
    bool queued = false;              // in cluster().queue
    bool from_queue = false;          // Route() called for a queued request
    bool waiting_activation = false;  // queued until a cold backup is up
    bool hedged = false;              // a hedge was sent
    uint8_t priority = conf::kNormalPriority;  // listener, priority_header
    bool counted_pending = false;       // in the cluster's shared max_pending
    bool counted_shared_retry = false;  // in its shared max_retries_in_flight
    bool head_request = false;
    bool upgrade = false;             // the request asks for a protocol switch
    bool stopped_at_upgrade = false;  // its parser stopped at the switch
    bool request_complete = false;
    bool response_started = false;  // the client was sent a response head
    bool response_complete = false;
    int status = 0;  // sent to the client
    uint64_t response_body_bytes = 0;
    FailureKind last_failure = FailureKind::kConnect;
    std::chrono::steady_clock::time_point queued_since;
    std::chrono::steady_clock::time_point request_start;
    std::chrono::steady_clock::time_point request_done;
    // A gRPC request's grpc-timeout, capped by request_timeout (zero: none).
    std::chrono::steady_clock::time_point grpc_deadline;
  };
  State state_;
  // Two tries, for a hedge to race the first; attempt_ is the one that
  // carries the request (and the response once it started).
  Attempt first_{*this};
  Attempt second_{*this};
  Attempt* attempt_ = &first_;
};

}  // namespace tandem::dispatcher
