// One try on one backend connection; see attempt.h.
#include "dispatcher/proxy/attempt.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/exchange.h"
#include "dispatcher/proxy/watermarks.h"
#include "net/h2_message.h"
#include "net/http_io.h"
#include "net/http_message.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;

// Interim (1xx) responses one try accepts from a backend; more make the
// response invalid, so a backend cannot keep an exchange busy with them.
constexpr uint32_t kMaxInterimResponses = 16;

}  // namespace

Attempt::~Attempt() { Reset(); }

Attempt::Start Attempt::Begin(size_t backend_index) {
  ClusterRuntime& runtime = exchange_.cluster();
  Loop& loop = exchange_.loop();
  BackendRuntime& backend = runtime.backends[backend_index];
  backend_ = backend_index;
  has_backend_ = true;
  ++runtime.inflight[backend_];
  backend.stats->inflight.Add(1);
  start_ = net::TurnClock::Now();
  LinkAwaiting();
  if (!response_) {
    // The loop's spare parsers are reset when they come back.
    response_ = loop.TakeParser(net::HttpParser::Type::kResponse, this);
  } else {
    response_->Reset();  // an earlier try's
  }
  interim_responses_ = 0;
  response_bytes_seen_ = false;
  response_blocked_ = false;
  upstream_eof_ = false;
  retry_status_ = 0;

  std::string preamble;
  if (runtime.config->send_proxy != 0)
    preamble = exchange_.downstream().ProxyHeader(runtime.config->send_proxy);
  upstream_ = backend.pool->TakeIdle(this, preamble);
  if (upstream_ != nullptr) return Start::kSending;
  // Connect() owns the reservation from here, on failure too.
  upstream_ =
      backend.pool->Connect(this, connection_reserved_, std::move(preamble));
  connection_reserved_ = false;
  if (upstream_ == nullptr) return Start::kFailed;
  connecting_ = true;
  return Start::kConnecting;
}

bool Attempt::Acquire(BackendRuntime& backend) {
  if (!backend.limits) return true;
  const conf::Backend& config = *backend.config;
  if (config.max_inflight > 0 &&
      !TakeShared(backend.limits->inflight, config.max_inflight)) {
    return false;
  }
  holds_slot_ = config.max_inflight > 0;
  // Without an idle connection a new one is needed: reserve it now, so two
  // threads cannot both open the last one.
  if (config.max_connections > 0 && backend.pool->idle_count() == 0) {
    if (!TakeShared(backend.limits->connections, config.max_connections)) {
      if (holds_slot_)
        backend.limits->inflight.fetch_sub(1, std::memory_order_relaxed);
      holds_slot_ = false;
      return false;
    }
    connection_reserved_ = true;
  }
  return true;
}

bool Attempt::SendHead() {
  Downstream& downstream = exchange_.downstream();
  const net::HttpParser& request = downstream.request();
  net::RequestForwarding forwarding;
  forwarding.client_ip = downstream.client_ip();
  forwarding.client_tls = downstream.listener().config->tls();
  forwarding.upgrade = exchange_.upgrade();
  forwarding.default_host =
      exchange_.cluster().backends[backend_].config->address.text;
  std::string grpc_timeout;
  if (exchange_.grpc_deadline() != Clock::time_point{}) {
    // The worker is told the time the client has left.
    grpc_timeout = net::FormatGrpcTimeout(exchange_.grpc_deadline() -
                                          net::TurnClock::Now());
    forwarding.grpc_timeout = grpc_timeout;
  }
  std::string& head = exchange_.loop().scratch();
  net::AppendRequestHead(request, forwarding, &head);
  upstream_->StartRequest();
  evbuffer_add(upstream_->output(), head.data(), head.size());
  if (!upstream_->Open()) return false;
  ReplayBody();
  upstream_->WriteSoon();
  return true;
}

void Attempt::ReplayBody() {
  // A retry: what the body has been so far (kept by the exchange).
  const net::HttpParser& request = exchange_.downstream().request();
  if (exchange_.tries() < 2 || request.body_bytes() == 0) return;
  const std::string& body = exchange_.retry_body();
  net::FrameBody(request.framing(), body.data(), body.size(),
                 upstream_->output());
  if (exchange_.request_complete())
    net::FrameBodyEnd(request.framing(), request.trailers(),
                      upstream_->output());
}

void Attempt::SendBody(const char* data, size_t length) {
  net::FrameBody(exchange_.downstream().request().framing(), data, length,
                 upstream_->output());
  upstream_->WriteSoon();
}

void Attempt::SendBodyEnd() {
  const net::HttpParser& request = exchange_.downstream().request();
  net::FrameBodyEnd(request.framing(), request.trailers(), upstream_->output());
  upstream_->WriteSoon();
}

bool Attempt::OutputFull() const {
  return evbuffer_get_length(upstream_->output()) >= kOutputHighWater;
}

void Attempt::ResumeResponse() {
  if (!response_blocked_ || upstream_ == nullptr) return;
  response_blocked_ = false;
  exchange_.Touch();
  upstream_->SetReading(true);
  ParseResponse();
}

bool Attempt::Reusable() const {
  return upstream_ != nullptr && !upstream_eof_ && response_->keep_alive() &&
         response_->framing() != net::Framing::kUntilClose;
}

bool Attempt::AcquireRequest(ClusterRuntime& runtime) {
  if (holds_request_ || !runtime.breakers) return true;
  const uint32_t limit = runtime.RequestLimit();
  if (limit == 0) return true;
  if (!TakeShared(runtime.breakers->requests, limit)) return false;
  holds_request_ = true;
  return true;
}

void Attempt::ReleaseRequest(bool drain) {
  if (!holds_request_) return;
  holds_request_ = false;
  ClusterRuntime& runtime = exchange_.cluster();
  runtime.breakers->requests.fetch_sub(1, std::memory_order_relaxed);
  // A request slot is free: the oldest queued request may go.
  if (drain && !runtime.queue.empty()) exchange_.loop().DrainQueue(runtime);
}

void Attempt::End(bool reusable) {
  connecting_ = false;
  if (upstream_ != nullptr) {
    BackendPool& pool = upstream_->pool();
    if (reusable && has_backend_) {
      // At a backend's max_connections, an idle connection kept here would
      // starve requests waiting on the other threads: close it instead.
      uint32_t limit =
          exchange_.cluster().backends[backend_].config->max_connections;
      if (limit > 0 && pool.shared_connections() >= limit) reusable = false;
    }
    if (reusable) {
      pool.Release(upstream_, exchange_.cluster().config->max_idle_connections);
    } else {
      pool.Close(upstream_);
    }
    upstream_ = nullptr;
    ++releases_;
  }
  UnlinkAwaiting();
  ReleaseRequest(true);
  if (!has_backend_) return;
  has_backend_ = false;
  ClusterRuntime& runtime = exchange_.cluster();
  BackendRuntime& backend = runtime.backends[backend_];
  --runtime.inflight[backend_];
  backend.stats->inflight.Add(-1);
  if (holds_slot_) {
    holds_slot_ = false;
    backend.limits->inflight.fetch_sub(1, std::memory_order_relaxed);
  }
  // A slot or a connection is free: the oldest queued request may go.
  if (backend.limits && !runtime.queue.empty())
    exchange_.loop().DrainQueue(runtime);
}

void Attempt::Reset() {
  End(false);
  if (response_) exchange_.loop().ReturnParser(std::move(response_));
}

void Attempt::ReportOutcome(bool success, FailureKind failure) {
  if (!has_backend_) return;
  exchange_.loop().ReportOutcome(exchange_.cluster(), backend_, success,
                                 Traits(failure).health,
                                 failure == FailureKind::kRefused);
}

uint64_t Attempt::BufferedBytes() const {
  uint64_t bytes = response_ ? response_->HeldBytes() : 0;
  if (upstream_ != nullptr) {
    bytes += evbuffer_get_length(upstream_->input()) +
             evbuffer_get_length(upstream_->output());
  }
  return bytes;
}

// ---- hang detection
// -----------------------------------------------------------

void Attempt::LinkAwaiting() {
  BackendRuntime& backend = exchange_.cluster().backends[backend_];
  await_prev_ = backend.awaiting_last;
  await_next_ = nullptr;
  if (await_prev_ != nullptr) {
    await_prev_->await_next_ = this;
  } else {
    backend.awaiting_first = this;
  }
  backend.awaiting_last = this;
  awaiting_ = true;
  exchange_.loop().WatchHangs();
}

void Attempt::UnlinkAwaiting() {
  if (!awaiting_) return;
  BackendRuntime& backend = exchange_.cluster().backends[backend_];
  if (await_prev_ != nullptr) {
    await_prev_->await_next_ = await_next_;
  } else {
    backend.awaiting_first = await_next_;
  }
  if (await_next_ != nullptr) {
    await_next_->await_prev_ = await_prev_;
  } else {
    backend.awaiting_last = await_prev_;
  }
  await_prev_ = await_next_ = nullptr;
  awaiting_ = false;
}

std::optional<Clock::time_point> Attempt::AwaitingSince() const {
  if (!awaiting_ || !exchange_.request_complete() ||
      exchange_.response_started()) {
    return std::nullopt;
  }
  return std::max(start_, exchange_.request_done());
}

bool Attempt::RetryOffHungBackend() {
  return exchange_.RetryOffHungBackend(*this);
}

void Attempt::SampleHeadTime() {
  std::optional<Clock::time_point> since = AwaitingSince();
  if (!since) return;
  const Clock::time_point now = net::TurnClock::Now();
  const auto sample =
      std::chrono::duration_cast<std::chrono::microseconds>(now - *since);
  exchange_.HeadArrived(backend_, sample);
  ClusterRuntime& runtime = exchange_.cluster();
  BackendRuntime& backend = runtime.backends[backend_];
  runtime.head_times.Add(sample);
  if (runtime.adaptive != nullptr) {
    // A window at a time to the limiter: one lock per window, not per try.
    runtime.adaptive_samples.push_back(
        static_cast<uint32_t>(std::min<int64_t>(sample.count(), UINT32_MAX)));
    if (runtime.adaptive_samples.size() >= AdaptiveLimiter::kWindowSamples ||
        now - runtime.adaptive_window >= AdaptiveLimiter::kWindow) {
      runtime.adaptive->Update(runtime.adaptive_samples, now);
      runtime.adaptive_samples.clear();
      runtime.adaptive_window = now;
    }
  }
  backend.answered_sent_at = std::max(backend.answered_sent_at, *since);
  if (runtime.avoid_slow) {
    runtime.slow_views[backend_].estimate.Observe(sample,
                                                  runtime.slow[backend_] != 0);
  }
  if (runtime.config->picker.algorithm == algorithms::Algorithm::kP2cEwma) {
    backend.latency.Observe(sample, now);
    runtime.latency_us[backend_] =
        static_cast<uint32_t>(std::min(backend.latency.Value(now), 4.0e9));
  }
}

// ---- the backend connection's events ----------------------------------------

void Attempt::OnUpstreamConnected(UpstreamConnection&) {
  if (!connecting_) return;
  connecting_ = false;
  exchange_.OnConnected(*this);
}

void Attempt::OnUpstreamRead(UpstreamConnection&) {
  exchange_.Touch();
  if (exchange_.tunnel()) {
    exchange_.downstream().TunnelBackendRead();
  } else {
    ParseResponse();
  }
}

void Attempt::OnUpstreamDrained(UpstreamConnection&) {
  if (exchange_.tunnel()) {
    exchange_.Touch();
    exchange_.downstream().TunnelBackendDrained();
  } else {
    exchange_.OnUpstreamDrained();
  }
}

void Attempt::OnUpstreamClosed(UpstreamConnection& connection, short events) {
  if (&connection != upstream_) return;  // no longer this try's
  if (connecting_) {
    connecting_ = false;
    SSL* ssl = connection.ssl();
    unsigned long tls_error =
        ssl != nullptr ? bufferevent_get_openssl_error(connection.bev()) : 0;
    if (ssl != nullptr &&
        (tls_error != 0 || SSL_get_verify_result(ssl) != X509_V_OK)) {
      // A handshake failure says why: a wrong name, an unknown CA...
      std::string& detail = exchange_.detail();
      detail = "TLS handshake with backend failed: " +
               net::TlsFailureText(ssl, tls_error);
      while (bufferevent_get_openssl_error(connection.bev()) != 0) {
      }
      exchange_.FailAttempt(*this, FailureKind::kConnect, 502, detail.c_str());
    } else {
      bool refused = connection.connect_error() == ECONNREFUSED;
      exchange_.FailAttempt(
          *this, refused ? FailureKind::kRefused : FailureKind::kConnect, 502,
          refused ? "connection to backend refused"
                  : "connection to backend failed");
    }
    return;
  }
  if (exchange_.tunnel()) {
    exchange_.downstream().TunnelBackendClosed(events);
    return;
  }
  if (!exchange_.sending()) return;
  upstream_eof_ = true;
  const uint32_t releases = releases_;
  if (evbuffer_get_length(connection.input()) > 0 && !response_blocked_)
    ParseResponse();
  if (releases != releases_) {
    // ParseResponse finished or failed the try.
  } else if (exchange_.response_started()) {
    if ((events & BEV_EVENT_EOF) && !response_blocked_ &&
        response_->FinishAtEof()) {
      // A close-delimited body ended: complete, but not reusable.
      exchange_.OnResponseComplete();
    } else if (!response_blocked_) {
      ReportOutcome(false, FailureKind::kReset);
      exchange_.Abort(kFlagUpstreamReset);
    }
  } else if (!response_bytes_seen_ && connection.reused() &&
             exchange_.tries() <= exchange_.cluster().backends.size() +
                                      exchange_.cluster().config->retries) {
    // A pooled connection the backend had closed while idle: the request
    // never reached it.
    exchange_.FailAttempt(*this, FailureKind::kPoolRace, 502,
                          connection.h2_refused()
                              ? "backend refused the HTTP/2 stream"
                              : "backend closed the connection");
  } else {
    exchange_.FailAttempt(
        *this, FailureKind::kReset, 502,
        connection.h2_refused()      ? "backend refused the HTTP/2 stream"
        : (events & BEV_EVENT_ERROR) ? "connection to backend reset"
                                     : "backend closed the connection");
  }
}

// ---- the response
// ---------------------------------------------------------------

void Attempt::ParseResponse() {
  if (upstream_ == nullptr) return;
  if (!upstream_->request_started() &&
      evbuffer_get_length(upstream_->input()) > 0) {
    // Bytes that came before any of the request left cannot answer it, and
    // the request never reached the backend: like a pooled connection found
    // closed, it goes on, on a fresh connection.
    exchange_.FailAttempt(*this, FailureKind::kPoolRace, 502,
                          "backend sent a response before the request");
    return;
  }
  size_t consumed = 0;
  net::HttpParser::Result result =
      net::Feed(*response_, upstream_->input(), &consumed);
  if (consumed > 0) response_bytes_seen_ = true;
  switch (result) {
    case net::HttpParser::Result::kNeedMore:
      if (exchange_.downstream().ResponseOutputFull()) {
        response_blocked_ = true;
        upstream_->SetReading(false);
      }
      return;
    case net::HttpParser::Result::kComplete:
    case net::HttpParser::Result::kPausedHead:
      exchange_.OnResponseComplete();
      return;
    case net::HttpParser::Result::kUpgrade:
      if (response_->status_code() == 101 && exchange_.upgrade()) {
        exchange_.EnterTunnel();
      } else {
        exchange_.OnResponseComplete();
      }
      return;
    case net::HttpParser::Result::kError:
      if (retry_status_ != 0) {
        int status = retry_status_;
        retry_status_ = 0;
        exchange_.AddFlags(kFlagRetried5xx);
        exchange_.FailAttempt(*this, FailureKind::kStatus, status,
                              "backend answered with an error");
      } else if (!exchange_.response_started()) {
        exchange_.FailAttempt(*this, FailureKind::kInvalid, 502,
                              "invalid response from backend");
      } else {
        ReportOutcome(false, FailureKind::kInvalid);
        exchange_.Abort(kFlagInvalidResponse);
      }
      return;
  }
}

net::HttpParser::HeadAction Attempt::OnHeadComplete(net::HttpParser& parser) {
  OnResponseHead(parser);
  return exchange_.head_request() ? net::HttpParser::HeadAction::kSkipBody
                                  : net::HttpParser::HeadAction::kContinue;
}

void Attempt::OnResponseHead(net::HttpParser& parser) {
  if (awaiting_) {
    SampleHeadTime();
    UnlinkAwaiting();
  }
  const int status = parser.status_code();
  Downstream& downstream = exchange_.downstream();
  if (status >= 100 && status < 200 && status != 101) {
    if (++interim_responses_ > kMaxInterimResponses) {
      parser.Reject(502, "too many interim responses");
      return;
    }
    // (While a hedge races, neither try speaks for the exchange yet.)
    if (exchange_.Owns(*this)) downstream.SendInterim(parser);
    return;
  }
  if (status == 101 && !exchange_.upgrade()) {
    parser.Reject(502, "backend switched protocols unasked");
    return;
  }
  if (const char* why = downstream.CannotCarry(parser)) {
    parser.Reject(502, why);
    return;
  }
  // A gRPC worker's UNAVAILABLE in its response head (Trailers-Only: no
  // message was sent) is its 503.
  const int retry_as =
      status == 200 && downstream.grpc() &&
              parser.headers().Find("grpc-status") == std::string_view("14")
          ? 503
          : status;
  if ((retry_as == 502 || retry_as == 503 || retry_as == 504) &&
      exchange_.WouldRetryStatus(*this)) {
    // Another backend may do better: drop this answer and try there. When
    // no retry is possible the backend's own answer is relayed instead.
    retry_status_ = retry_as;
    parser.Reject(retry_as, "retrying");
    return;
  }
  ReportOutcome(retry_as < 500, FailureKind::kStatus);
  exchange_.OnResponseHead(*this, parser);
}

void Attempt::OnBody(net::HttpParser&, const char* data, size_t length) {
  exchange_.OnResponseBody(data, length);
}

void Attempt::OnMessageComplete(net::HttpParser& parser) {
  const int status = parser.status_code();
  if (status >= 100 && status < 200 && status != 101) return;  // interim
  exchange_.OnResponseEnd(parser.trailers());
}

}  // namespace tandem::dispatcher
