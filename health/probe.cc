// One backend's active health check; see probe.h. The response is parsed with
// the proxy's HTTP/1 codec and judged as soon as enough of it has arrived.
#include "health/probe.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

#include "net/posix.h"

namespace tandem::health {
namespace {

using net::EqualsIgnoreCase;
using net::ErrorText;
using net::HttpParser;
using net::ToTimeval;

// A body is searched for `expect_body` within its first 64 KiB, and a response
// head larger than that is refused rather than buffered.
constexpr size_t kMaxBodyBytes = 64 * 1024;
constexpr uint64_t kMaxHeadBytes = 64 * 1024;
// The head's size is bounded, not its number of fields.
constexpr size_t kMaxFields = SIZE_MAX;
constexpr uint32_t kMaxWeightPercent = 1000;
// Longest expected body quoted in a failure's detail.
constexpr size_t kMaxQuotedBody = 40;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// "50%" or "50" -> 50; nullopt for anything else or above 1000.
std::optional<uint32_t> ParseWeight(std::string_view value) {
  value = Trim(value);
  if (!value.empty() && value.back() == '%') value.remove_suffix(1);
  if (value.empty() || value.size() > 4) return std::nullopt;
  uint32_t weight = 0;
  for (char c : value) {
    if (c < '0' || c > '9') return std::nullopt;
    weight = weight * 10 + static_cast<uint32_t>(c - '0');
  }
  if (weight > kMaxWeightPercent) return std::nullopt;
  return weight;
}

std::string ConnectFailureText(int error) {
  switch (error) {
    case ECONNREFUSED:
      return "connection refused";
    case ENETUNREACH:
      return "network unreachable";
    case EHOSTUNREACH:
      return "host unreachable";
    case ETIMEDOUT:
      return "connect timed out";
    case 0:
      return "connect failed";
    default:
      return "connect failed: " + ErrorText(error);
  }
}

std::string FormatDuration(conf::Duration duration) {
  auto ms = duration.count();
  if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// The numeric host of `address`, for an address built without its text.
std::string NumericHost(const conf::SocketAddress& address) {
  char text[INET6_ADDRSTRLEN] = "";
  const void* raw = nullptr;
  if (address.storage.ss_family == AF_INET) {
    raw = &reinterpret_cast<const sockaddr_in*>(&address.storage)->sin_addr;
  } else if (address.storage.ss_family == AF_INET6) {
    raw = &reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_addr;
  }
  if (raw == nullptr || inet_ntop(address.storage.ss_family, raw, text,
                                  sizeof(text)) == nullptr) {
    return "";
  }
  return text;
}

void SetPort(conf::SocketAddress& address, uint16_t port) {
  if (address.storage.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&address.storage)->sin_port = htons(port);
  } else if (address.storage.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&address.storage)->sin6_port = htons(port);
  }
}

std::string HostHeader(const conf::HealthCheck& check,
                       const conf::SocketAddress& target) {
  if (!check.host.empty()) return check.host;
  const std::string name =
      target.host.empty() ? NumericHost(target) : target.host;
  std::string host;
  if (name.find(':') != std::string::npos) {
    host.append("[").append(name).append("]");
  } else {
    host = name;
  }
  if (target.port() != 80)
    host.append(":").append(std::to_string(target.port()));
  return host;
}

std::string QuoteExpected(const std::string& expected) {
  if (expected.size() <= kMaxQuotedBody) return "\"" + expected + "\"";
  return "\"" + expected.substr(0, kMaxQuotedBody) + "...\"";
}

}  // namespace

ProbeResponse::ProbeResponse(const conf::HealthCheck& check)
    : check_(check), parser_(HttpParser::Type::kResponse, this) {
  parser_.set_max_head_bytes(kMaxHeadBytes);
  parser_.set_max_fields(kMaxFields);
}

void ProbeResponse::Reset() {
  parser_.Reset();
  result_ = ProbeResult{};
  decided_ = false;
  received_bytes_ = 0;
  head_complete_ = false;
  body_.clear();
}

bool ProbeResponse::Feed(const char* data, size_t length) {
  if (decided_) return true;
  received_bytes_ += length;
  // Every stop but kNeedMore and kError follows a decision: the handler
  // pauses only once it has decided, and a final message's end decides.
  size_t used = 0;
  if (parser_.Execute(data, length, &used) == HttpParser::Result::kError) {
    Decide(ProbeResult::Failure::kProtocol,
           parser_.error_reason() == "response head too large"
               ? "response head over 64 KiB"
               : "invalid HTTP response");
  }
  // Interim heads count too: a backend cannot keep a probe reading heads.
  if (!head_complete_ && received_bytes_ > kMaxHeadBytes)
    Decide(ProbeResult::Failure::kProtocol, "response head over 64 KiB");
  return decided_;
}

bool ProbeResponse::FinishAtEof() {
  if (!decided_) (void)parser_.FinishAtEof();
  return decided_;
}

HttpParser::HeadAction ProbeResponse::OnHeadComplete(HttpParser& parser) {
  NoteFeedback(parser.headers());
  int status = parser.status_code();
  // 100 Continue and the other interim answers precede the real one; 101 is
  // final (and unasked for), so it is judged like any other status.
  if (status < 200 && status != 101) return HttpParser::HeadAction::kContinue;
  head_complete_ = true;
  result_.status = status;
  if (static_cast<uint32_t>(status) < check_.expect_status_min ||
      static_cast<uint32_t>(status) > check_.expect_status_max) {
    Decide(ProbeResult::Failure::kStatus,
           "HTTP " + std::to_string(status) + " (expected " +
               std::to_string(check_.expect_status_min) + "-" +
               std::to_string(check_.expect_status_max) + ")");
    return HttpParser::HeadAction::kPause;
  }
  if (check_.expect_body.empty()) {
    Decide(ProbeResult::Failure::kNone, "HTTP " + std::to_string(status));
    return HttpParser::HeadAction::kPause;
  }
  // A response to HEAD has no body whatever its Content-Length says.
  return check_.method == "HEAD" ? HttpParser::HeadAction::kSkipBody
                                 : HttpParser::HeadAction::kContinue;
}

void ProbeResponse::OnBody(HttpParser&, const char* data, size_t length) {
  if (decided_) return;
  const std::string& expected = check_.expect_body;
  size_t take = std::min(length, kMaxBodyBytes - body_.size());
  // Search only what is new, plus enough of the old to catch a match that
  // straddles two pieces.
  size_t from =
      body_.size() >= expected.size() ? body_.size() - expected.size() + 1 : 0;
  body_.append(data, take);
  if (body_.find(expected, from) != std::string::npos) {
    Decide(ProbeResult::Failure::kNone,
           "HTTP " + std::to_string(result_.status));
  } else if (body_.size() >= kMaxBodyBytes) {
    Decide(ProbeResult::Failure::kBody,
           "body lacks " + QuoteExpected(expected) + " in its first 64 KiB");
  }
}

void ProbeResponse::OnMessageComplete(HttpParser& parser) {
  if (!head_complete_) return;  // an interim response
  NoteFeedback(parser.trailers());
  // Only a check with an expected body reads on to here, and a match would
  // have decided it already.
  Decide(ProbeResult::Failure::kBody,
         "body lacks " + QuoteExpected(check_.expect_body));
}

void ProbeResponse::Decide(ProbeResult::Failure failure, std::string detail) {
  if (decided_) return;
  decided_ = true;
  result_.passed = failure == ProbeResult::Failure::kNone;
  result_.failure = failure;
  result_.detail = std::move(detail);
}

void ProbeResponse::NoteFeedback(const net::HeaderList& fields) {
  // Field by field, in order: a later valid value overrides an earlier one.
  for (size_t i = 0; i < fields.size(); ++i) {
    if (EqualsIgnoreCase(fields.name(i), "Tandem-Weight")) {
      if (auto weight = ParseWeight(fields.value(i)))
        result_.weight_percent = weight;
    } else if (EqualsIgnoreCase(fields.name(i), "Tandem-State")) {
      std::string_view state = Trim(fields.value(i));
      if (EqualsIgnoreCase(state, "drain")) {
        result_.drain = true;
      } else if (EqualsIgnoreCase(state, "up")) {
        result_.drain = false;
      }
    }
  }
}

Prober::Prober(event_base* base, const conf::HealthCheck& check,
               const conf::SocketAddress& backend,
               std::shared_ptr<net::TlsClientContext> tls, std::string preamble)
    : base_(base),
      tls_(std::move(tls)),
      check_(check),
      target_(backend),
      preamble_(std::move(preamble)) {
  if (check_.port != 0) SetPort(target_, check_.port);
  if (check_.kind == conf::HealthCheck::Kind::kHttp) {
    request_ = check_.method + " " + check_.path +
               " HTTP/1.1\r\nHost: " + HostHeader(check_, target_) +
               "\r\nUser-Agent: tandem-health\r\nAccept: */*\r\n"
               "Connection: close\r\n\r\n";
  }
  timer_.reset(evtimer_new(base_, TimeoutCb, this));
  deliver_.reset(evtimer_new(base_, DeliverCb, this));
  if (!timer_ || !deliver_) throw std::bad_alloc();
}

Prober::~Prober() { Cancel(); }

void Prober::Start(Callback done) {
  assert(!running_ && "Prober::Start while a probe is in flight");
  Close();
  done_ = std::move(done);
  running_ = true;
  connected_ = false;
  decided_ = false;
  result_ = ProbeResult{};
  response_.Reset();
  started_ = std::chrono::steady_clock::now();

  timeval deadline = ToTimeval(check_.timeout);
  int error = 0;
  if (evtimer_add(timer_.get(), &deadline) != 0) {
    Decide(ProbeResult::Failure::kConnect, "cannot arm the check's timer");
  } else if ((error = Connect()) != 0) {
    Decide(ProbeResult::Failure::kConnect, ConnectFailureText(error));
  }
  if (decided_) {
    // The callback must not run inside Start: deliver it from the loop.
    Close();
    event_active(deliver_.get(), EV_TIMEOUT, 1);
  }
}

void Prober::Cancel() {
  Close();
  event_del(deliver_.get());
  done_ = nullptr;
  running_ = false;
}

int Prober::Connect() {
  int fd = socket(target_.storage.ss_family,
                  SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  // Connecting here rather than in bufferevent_socket_connect() keeps the
  // errno of an immediate refusal, which libevent would report without one.
  if (connect(fd, target_.sa(), target_.length) != 0 && errno != EINPROGRESS &&
      errno != EINTR) {
    int error = errno;
    close(fd);
    return error;
  }
  if (tls_) {
    // The handshake starts at once; its first write waits for the connect.
    SSL* ssl = tls_->NewSsl(target_, nullptr, nullptr);
    BufferEventPtr tls_bev(ssl == nullptr
                               ? nullptr
                               : bufferevent_openssl_socket_new(
                                     base_, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                     BEV_OPT_CLOSE_ON_FREE));
    if (!tls_bev) {
      if (ssl != nullptr) SSL_free(ssl);
      close(fd);
      return ENOMEM;
    }
    if (!preamble_.empty() && !net::SendBeforeHandshake(ssl, preamble_)) {
      return ENOMEM;  // tls_bev closes the socket
    }
    bufferevent_openssl_set_allow_dirty_shutdown(tls_bev.get(), 1);
    bufferevent_setcb(tls_bev.get(), ReadCb, nullptr, EventCb, this);
    bev_ = std::move(tls_bev);
    return 0;
  }
  BufferEventPtr bev(bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE));
  if (!bev) {
    close(fd);
    return ENOMEM;
  }
  bufferevent_setcb(bev.get(), ReadCb, nullptr, EventCb, this);
  if (!preamble_.empty() &&
      bufferevent_write(bev.get(), preamble_.data(), preamble_.size()) != 0) {
    return ENOMEM;
  }
  // With a socket already connecting, libevent waits for it to become
  // writable and reports BEV_EVENT_CONNECTED or BEV_EVENT_ERROR.
  if (bufferevent_socket_connect(bev.get(), nullptr, 0) != 0) return ENOMEM;
  bev_ = std::move(bev);
  return 0;
}

void Prober::OnConnected() {
  connected_ = true;
  if (check_.kind == conf::HealthCheck::Kind::kGrpc) {
    grpc_ = std::make_unique<GrpcCheck>();
    std::string out;
    if (!grpc_->Start(HostHeader(check_, target_), tls_ != nullptr,
                      check_.service)) {
      Decide(ProbeResult::Failure::kConnect, "cannot start the gRPC call");
      Finish();
      return;
    }
    grpc_->Output(&out);
    if (bufferevent_write(bev_.get(), out.data(), out.size()) != 0 ||
        bufferevent_enable(bev_.get(), EV_READ | EV_WRITE) != 0) {
      Decide(ProbeResult::Failure::kConnect, "cannot send the request");
      Finish();
    }
    return;
  }
  if (check_.kind != conf::HealthCheck::Kind::kHttp) {
    Decide(ProbeResult::Failure::kNone, "connected");
    Finish();
    return;
  }
  if (bufferevent_write(bev_.get(), request_.data(), request_.size()) != 0 ||
      bufferevent_enable(bev_.get(), EV_READ | EV_WRITE) != 0) {
    Decide(ProbeResult::Failure::kConnect, "cannot send the request");
    Finish();
  }
}

void Prober::OnRead() {
  evbuffer* input = bufferevent_get_input(bev_.get());
  while (evbuffer_get_length(input) > 0) {
    evbuffer_iovec chunk{};
    if (evbuffer_peek(input, -1, nullptr, &chunk, 1) < 1) break;
    if (Parse(static_cast<const char*>(chunk.iov_base), chunk.iov_len)) {
      Finish();
      return;
    }
    if (evbuffer_drain(input, chunk.iov_len) != 0) {
      Decide(ProbeResult::Failure::kProtocol, "cannot read the response");
      Finish();
      return;
    }
  }
}

void Prober::OnEvent(short events) {
  // Read first: libevent leaves the socket's errno in place for this call.
  int error = EVUTIL_SOCKET_ERROR();
  if (events & BEV_EVENT_CONNECTED) {
    OnConnected();
    return;
  }
  if (events & BEV_EVENT_ERROR) {
    SSL* ssl = tls_ ? bufferevent_openssl_get_ssl(bev_.get()) : nullptr;
    unsigned long tls_error =
        ssl != nullptr ? bufferevent_get_openssl_error(bev_.get()) : 0;
    if (!connected_ && ssl != nullptr &&
        (tls_error != 0 || SSL_get_verify_result(ssl) != X509_V_OK)) {
      Decide(ProbeResult::Failure::kConnect,
             "TLS: " + net::TlsFailureText(ssl, tls_error));
    } else if (!connected_) {
      Decide(ProbeResult::Failure::kConnect, ConnectFailureText(error));
    } else if (error == ECONNRESET || error == EPIPE) {
      Decide(ProbeResult::Failure::kReset, "connection reset");
    } else {
      Decide(ProbeResult::Failure::kReset,
             "connection error: " + ErrorText(error));
    }
  } else if (events & BEV_EVENT_EOF) {
    // A body delimited by the connection's end completes here.
    // Otherwise the backend dropped the connection, which is a reset's kin.
    if (response_.FinishAtEof()) {
      Decide(response_.result().failure, response_.result().detail);
    } else {
      Decide(ProbeResult::Failure::kReset,
             response_.received_bytes() == 0
                 ? "connection closed without a response"
                 : "connection closed mid-response");
    }
  } else {
    return;
  }
  Finish();
}

bool Prober::Parse(const char* data, size_t length) {
  if (grpc_) {
    const bool decided =
        grpc_->Feed(reinterpret_cast<const uint8_t*>(data), length);
    std::string out;
    grpc_->Output(&out);  // acknowledgements, window updates
    if (!out.empty()) bufferevent_write(bev_.get(), out.data(), out.size());
    if (!decided) return false;
    result_.status = grpc_->http_status();
    Decide(grpc_->passed() ? ProbeResult::Failure::kNone
                           : ProbeResult::Failure::kStatus,
           "gRPC " + grpc_->detail());
    return true;
  }
  if (!response_.Feed(data, length)) return false;
  Decide(response_.result().failure, response_.result().detail);
  return true;
}

void Prober::Decide(ProbeResult::Failure failure, std::string detail) {
  if (decided_) return;
  decided_ = true;
  result_.passed = failure == ProbeResult::Failure::kNone;
  result_.failure = failure;
  result_.detail = std::move(detail);
}

void Prober::Finish() {
  Close();
  event_del(deliver_.get());
  running_ = false;
  ProbeResult result = std::move(result_);
  const ProbeResult& read = response_.result();
  if (result.status == 0) result.status = read.status;  // (gRPC: set already)
  result.weight_percent = read.weight_percent;
  result.drain = read.drain;
  result.duration = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - started_);
  Callback done = std::move(done_);
  done_ = nullptr;
  // Last: `done` may Start again or destroy this Prober.
  if (done) done(result);
}

void Prober::Close() {
  bev_.reset();
  grpc_.reset();
  event_del(timer_.get());
}

void Prober::ReadCb(bufferevent*, void* arg) {
  static_cast<Prober*>(arg)->OnRead();
}

void Prober::EventCb(bufferevent*, short events, void* arg) {
  static_cast<Prober*>(arg)->OnEvent(events);
}

void Prober::TimeoutCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Prober*>(arg);
  self->Decide(ProbeResult::Failure::kTimeout,
               "timed out after " + FormatDuration(self->check_.timeout));
  self->Finish();
}

void Prober::DeliverCb(evutil_socket_t, short, void* arg) {
  static_cast<Prober*>(arg)->Finish();
}

}  // namespace tandem::health
