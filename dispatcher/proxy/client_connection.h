// One client connection and the exchange in progress on it: the HTTP/1.1
// proxy state machine, driven from a few entry points as memcached's
// drive_machine(), with back-pressure by watermarks as libevent's le-proxy.
#pragma once

#include <event2/event_struct.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "algorithms/picker.h"
#include "dispatcher/loop.h"
#include "dispatcher/proxy/retry_policy.h"
#include "dispatcher/proxy/upstream.h"
#include "net/event_ptr.h"
#include "net/http_parser.h"
#include "net/proxy_protocol.h"

namespace tandem::dispatcher {

class ClientConnection : private net::HttpParser::Handler,
                         private UpstreamUser {
 public:
  // Takes ownership of `fd`, accepted on `listener` of `generation`.
  static void Accept(Loop& loop, Generation& generation,
                     ListenerRuntime& listener, evutil_socket_t fd,
                     const sockaddr* address, int length);

  // The PROXY header of a connection accepted on a proxy_protocol listener
  // has ended: it goes on as accepted from `address` ("ip:port", the first
  // `ip_length` bytes the ip). False (and `fd` closed) when that fails.
  static bool AcceptAfterProxyHeader(Loop& loop, Generation& generation,
                                     ListenerRuntime& listener,
                                     evutil_socket_t fd,
                                     std::string_view address, size_t ip_length,
                                     std::unique_ptr<net::ProxyTlvs> tlvs);

  // A parked connection became readable: a ClientConnection takes `fd`
  // back with a bufferevent from the loop, the timer set to `deadline`, and
  // reads. False (and `fd` closed) when that fails.
  static bool Resume(Loop& loop, Generation& generation,
                     ListenerRuntime& listener, evutil_socket_t fd,
                     std::string_view address, size_t ip_length,
                     std::chrono::steady_clock::time_point deadline,
                     bool first_request, std::unique_ptr<net::ProxyTlvs> tlvs);

  // Shutdown: close now if no request is in progress, else close once the
  // current exchange ends.
  void CloseWhenIdle();
  // Grace period over: close at once.
  void Abort();
  // A queued request tries again to find a backend below its limit; false
  // when it is still queued (every backend still full).
  bool RetryFromQueue();
  // The retry budget has room again: the waiting retry goes now.
  void ResumeRetry();

  // Bytes this connection holds in buffers now (client and backend, both
  // directions, the kept retry body, its parsers' fields).
  uint64_t BufferedBytes() const;

  // Hang detection (dispatcher/hang_watch.cc). The next request awaiting a
  // response head from the same backend, oldest first.
  ClientConnection* next_awaiting() const { return await_next_; }
  // Since when this request, sent whole, awaits its response head; nullopt
  // while it is still being sent.
  std::optional<std::chrono::steady_clock::time_point> AwaitingSince() const;
  // Its backend is suspected hung: the request goes to another backend when
  // a retry is allowed now (true); otherwise it keeps waiting (false).
  bool RetryOffHungBackend();

  // Intrusive list of a loop's connections.
  ClientConnection* next = nullptr;
  ClientConnection* prev = nullptr;

 private:
  enum class State {
    kIdle,        // waiting for a request head (or its rest)
    kQueued,      // every eligible backend is at its max_inflight: waiting
    kRetryWait,   // a retry waits for the retry budget
    kConnecting,  // head parsed, connecting to a backend
    kProxying,    // request sent or streaming; response awaited or streaming
    kTunnel,      // after 101: bytes copied both ways
    kClosing,     // flushing the last bytes, then close
  };

  using Failure = FailureKind;

  // How a connection resumed from parking goes on.
  struct Resumed {
    std::chrono::steady_clock::time_point deadline;
    bool first_request;
    std::unique_ptr<net::ProxyTlvs> proxy_tlvs;  // moved into the connection
  };

  // A newly accepted connection (`resumed` null), or a parked one taken
  // back; `address` is the client's "ip:port", its first `ip_length` bytes
  // the ip. Sets destroy_pending_ when it could not start.
  ClientConnection(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, net::BufferEventPtr bev,
                   std::string_view address, size_t ip_length,
                   Resumed* resumed);
  ~ClientConnection() override;
  static net::BufferEventPtr NewBufferEvent(Loop& loop,
                                            ListenerRuntime& listener,
                                            evutil_socket_t fd);

  // libevent entry points.
  static void ReadCb(bufferevent* bev, void* arg);
  static void WriteCb(bufferevent* bev, void* arg);
  static void EventCb(bufferevent* bev, short events, void* arg);
  static void TimerCb(evutil_socket_t, short, void* arg);
  template <typename Fn>
  static void Enter(ClientConnection* self, Fn&& handler);
  void OnClientDrained();
  // Resume(): the first read, done at once.
  void ReadResumed();
  // Idle with nothing buffered either way: the connection may be parked.
  bool Parkable() const;
  // Hands the socket to a ParkedConnection and destroys this one.
  bool Park();
  void OnClientEvent(short events);
  void OnUpstreamEnded(UpstreamConnection& connection, short events);

  // net::HttpParser::Handler, for both the request and the response parser.
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser& parser) override;
  void OnBody(net::HttpParser& parser, const char* data,
              size_t length) override;
  void OnMessageComplete(net::HttpParser& parser) override;

  // UpstreamUser.
  void OnUpstreamConnected(UpstreamConnection& connection) override;
  void OnUpstreamRead(UpstreamConnection& connection) override;
  void OnUpstreamDrained(UpstreamConnection& connection) override;
  void OnUpstreamClosed(UpstreamConnection& connection, short events) override;

  // The driver.
  void OnClientRead();
  void ParseRequest();
  void OnRequestHead();
  // `retry`: an earlier attempt failed with `status`/`detail`, which the
  // client gets if no backend is left; `other`: a different backend is needed.
  void StartAttempt(bool retry = false, int status = 0,
                    const char* detail = nullptr, bool other = true);
  // Joins / leaves its backend's list of requests awaiting a response head.
  void LinkAwaiting();
  void UnlinkAwaiting();
  // The PROXY header (the cluster's send_proxy version) naming this client;
  // made once per connection and version, kept in proxy_header_out_.
  const std::string& ProxyHeaderOut(int version);
  void SendRequestHead();
  void ParseResponse();
  void OnResponseHead(net::HttpParser& parser);
  void OnResponseComplete();
  void EnterTunnel();
  void PumpTunnel(evbuffer* from, evbuffer* to, bufferevent* from_bev,
                  bufferevent* to_bev);
  // After a tunnel side's end of stream: shuts the other side's writing once
  // its output is flushed, and ends the tunnel when both directions are done.
  void TunnelFlushed();
  void FinishExchange();
  void ResetExchange();
  // Ends the current attempt; `reusable` returns the upstream connection to
  // its pool, else it is closed.
  void EndAttempt(bool reusable);
  // A failed attempt: retry when allowed, else answer `status`.
  void FailAttempt(Failure failure, int status, const char* detail);
  // The retry decision's input after `failure`, with `reached_failures`
  // failed tries that reached a worker (this one included).
  RetryInput RetryFacts(Failure failure, uint32_t reached_failures) const;
  // Whether a try failing now with `failure` would be retried at once.
  bool RetryAllowedNow(Failure failure) const;
  // When request_timeout ends: counted from the end of the request (its start
  // while it is still arriving).
  std::chrono::steady_clock::time_point RequestDeadline() const;
  // When the response head must have come, once the whole request is out.
  std::chrono::steady_clock::time_point ResponseDeadline() const;
  // This try's try_timeout: the configured one, or "auto"'s (which applies
  // only to a try that may be retried when it ends; OnTimer checks that).
  std::chrono::steady_clock::duration TryTimeout() const;
  // Tells health/ how the attempt went.
  void ReportOutcome(bool success, Failure failure);
  // The request's hash for ring-hash and maglev, from hash_key.
  std::optional<uint64_t> RequestHash() const;
  // Writes what the request body has been so far (kept for a retry).
  void ReplayBody();
  // The exchange is over for the cluster's in-flight and retry counts.
  void ReleaseClusterCounts();
  // Takes a slot of a limited backend; false when it is full.
  bool TryAcquire(BackendRuntime& backend);
  void Dequeue();
  // Joins the back of the cluster's queue, waiting at most `timeout`.
  void EnterQueue(ClusterRuntime& runtime,
                  std::chrono::steady_clock::duration timeout);
  // Back to the head of the queue after a turn that found every backend
  // still full; its wait so far and its timer stand.
  void RequeueAtFront(ClusterRuntime& runtime);
  // Answers with tandem's own short response; closes when `close` or the
  // request was not read completely.
  void Respond(int status, const char* detail, bool close,
               std::string_view extra_fields = {});
  // 503 with Retry-After: every backend is at its limit.
  void RespondBusy(const char* detail);
  void CloseAfterFlush();
  void FinishClose();
  void Destroy();
  void DeleteNow();
  // Closes the exchange's upstream side and the client at once (a response
  // cut off mid-body must not look complete).
  void AbortExchange(uint32_t flag);
  void ArmTimer(std::chrono::steady_clock::duration delay);
  // Idle until `deadline`: the timer fires then, or earlier to park.
  void ArmIdleTimer(std::chrono::steady_clock::time_point deadline);
  void OnTimer();
  void LogExchange();
  bool OutputFull(evbuffer* buffer) const;
  void Touch() { last_activity_ = std::chrono::steady_clock::now(); }
  std::string_view FlagsText();
  std::string_view backend_address() const;
  ClusterRuntime& cluster() const { return *listener_->cluster; }

  Loop& loop_;
  Generation* generation_;
  ListenerRuntime* listener_;
  net::BufferEventPtr bev_;
  struct event timer_;
  std::unique_ptr<net::HttpParser> request_;   // lent by the loop
  std::unique_ptr<net::HttpParser> response_;  // while an exchange needs one
  State state_ = State::kIdle;
  std::string client_address_;   // "ip:port"
  size_t client_ip_length_ = 0;  // the "ip" prefix of client_address_
  int callback_depth_ = 0;
  bool destroy_pending_ = false;
  bool close_when_idle_ = false;
  bool first_request_ = true;
  bool header_timer_armed_ = false;

  bool closing_shutdown_ = false;  // write side shut, waiting for the client
  bool reset_on_close_ = false;    // end with an RST, not a FIN
  bool tls_established_ = false;   // the client's TLS handshake completed
  bool client_eof_ = false;        // the client half-closed
  bool parked_ = false;            // the socket went to a ParkedConnection
  std::unique_ptr<net::ProxyTlvs> proxy_tlvs_;  // from a PROXY v2 header
  std::string proxy_header_out_;  // send_proxy's header for this client
  int proxy_header_version_ = 0;  // its version, 0 while none is made
  std::chrono::steady_clock::time_point last_activity_;
  // While idle: when idle_timeout (or, before a first request,
  // client_header_timeout) ends.
  std::chrono::steady_clock::time_point idle_deadline_;
  std::string flags_text_;

  // How HTTP/1.1 carries the current request and its response on this
  // connection; `message_ = {}` when the next request begins.
  struct Message {
    bool head_pending = false;    // a request head awaits OnRequestHead()
    bool paused_at_head = false;  // the request parser waits before the body
    bool request_upgrade_paused = false;  // stopped at an upgrade boundary
    bool continue_sent = false;
    bool expect_continue = false;
    bool upgrade = false;
    bool head_request = false;
    bool client_keep_alive = true;
    bool request_complete = false;
    bool request_blocked = false;   // client reads off: backend output full
    bool response_started = false;  // response head written to the client
    bool response_complete = false;
    bool response_blocked = false;  // backend reads off: client output full
    bool response_close = false;    // close the client after this response
    int status = 0;                 // status sent to the client
    net::Framing response_framing = net::Framing::kNone;
    uint64_t response_body_bytes = 0;
    std::chrono::steady_clock::time_point request_done;
  };

  // One request and its answer, whatever carries it: routing, retries,
  // queueing and the access-log record; `exchange_ = {}` starts the next.
  struct Exchange {
    algorithms::TriedSet tried;
    uint32_t tries = 0;
    uint32_t reached_failures = 0;  // failed tries that reached a worker
    bool pool_race_seen = false;    // a pooled connection failed a try
    uint32_t flags = 0;             // ExchangeFlag bits
    bool logged = false;
    std::string detail;      // a composed 502 detail, kept alive
    int pending_status = 0;  // answer if a waiting retry never goes
    const conf::Backend* last_backend = nullptr;  // for the access log
    size_t last_backend_index = 0;
    std::string_view retry_note;  // why the last failure was not retried
    std::string trail;       // failed tries: "backend:CODE ..." for the log
    std::string retry_body;  // request body kept for a retry
    bool body_kept = true;   // retry_body holds the whole body so far
    bool counted_request = false;  // in cluster().active_requests
    bool counted_retry = false;    // in cluster().active_retries
    bool queued = false;           // in cluster().queue
    bool from_queue = false;       // StartAttempt() called for a queued request
    bool waiting_activation = false;  // queued until a cold backup is up
    std::chrono::steady_clock::time_point queued_since;
    std::chrono::steady_clock::time_point request_start;
    Failure last_failure = Failure::kConnect;  // what the last failed try saw
    bool tunnel_client_shut = false;           // the client was sent our FIN
    bool tunnel_backend_shut = false;          // the backend was sent our FIN
  };

  // One try on one backend connection.
  struct Attempt {
    UpstreamConnection* upstream = nullptr;
    size_t backend = 0;
    bool has_backend = false;
    std::chrono::steady_clock::time_point start;
    bool response_bytes_seen = false;
    bool upstream_eof = false;       // the backend closed its side
    uint32_t interim_responses = 0;  // 1xx heads so far
    int retry_status = 0;            // a 5xx answer being dropped for a retry
    bool holds_slot = false;         // counted in the backend's shared inflight
    bool connection_reserved = false;  // a new connection already counted
  };

  Message message_;
  Exchange exchange_;
  Attempt attempt_;
  // In its backend's awaiting list (BackendRuntime::awaiting_first).
  ClientConnection* await_prev_ = nullptr;
  ClientConnection* await_next_ = nullptr;
  bool awaiting_ = false;
};

}  // namespace tandem::dispatcher
