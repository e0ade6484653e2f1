// One HTTP/1.1 client connection; see client_connection.h.
#include "dispatcher/proxy/client_connection.h"

#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dispatcher/proxy/h2_connection.h"
#include "dispatcher/proxy/parked_connection.h"
#include "dispatcher/proxy/watermarks.h"
#include "net/http_io.h"
#include "net/http_message.h"
#include "net/posix.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;

// Client input read ahead while the current request is being served
// (pipelined requests wait here).
constexpr size_t kClientReadHighWater = 64 * 1024;
// How long a closing connection waits for the client to read the last
// response and close its side (lingering close, as nginx's lingering_time).
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
// The request parser's fields past this are freed between requests.
constexpr size_t kMaxIdleParserBytes = 16 * 1024;
// A plain connection with no request in progress for this long is parked
// (docs/idle.md): long enough that a client sending request after request
// never pays for it, short enough that a burst of connections going idle
// does not hold their buffers.
constexpr auto kParkAfter = std::chrono::milliseconds(50);
// What an HTTP/2 client sends first (RFC 9113 §3.4).
constexpr char kH2Preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

bool Full(evbuffer* buffer) {
  return evbuffer_get_length(buffer) >= kOutputHighWater;
}

// Sends a FIN (after close_notify on TLS): the peer reads an end of stream
// while it may still send (a half-close, RFC 9293 §3.6).
bool ShutdownWrite(bufferevent* bev) {
  if (SSL* ssl = bufferevent_openssl_get_ssl(bev)) {
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
  }
  evutil_socket_t fd = bufferevent_getfd(bev);
  return fd >= 0 && shutdown(fd, SHUT_WR) == 0;
}

}  // namespace

// ---- making and ending one
// ----------------------------------------------------

// A bufferevent for a client socket: OpenSSL's, accepting, on a TLS
// listener; a plain one from the loop's free list otherwise. Null (and `fd`
// still open) when it cannot be made.
net::BufferEventPtr ClientConnection::NewBufferEvent(Loop& loop,
                                                     ListenerRuntime& listener,
                                                     evutil_socket_t fd) {
  if (!listener.tls) return loop.TakeClientBufferEvent(fd);
  net::BufferEventPtr bev;
  SSL* ssl = listener.tls->NewSsl();
  if (ssl == nullptr) return bev;
  bev.reset(bufferevent_openssl_socket_new(
      loop.base(), fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE));
  if (!bev) {
    SSL_free(ssl);
    return bev;
  }
  // A client closing without close_notify is an ordinary EOF here.
  bufferevent_openssl_set_allow_dirty_shutdown(bev.get(), 1);
  return bev;
}

void ClientConnection::Accept(Loop& loop, Generation& generation,
                              ListenerRuntime& listener, evutil_socket_t fd,
                              const sockaddr* address, int /*length*/) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  size_t ip_length = 0;
  std::string text = net::AddressText(address, &ip_length);
  const conf::Listener& config = *listener.config;
  if (config.proxy_protocol) {
    // The header comes first, and only a trusted proxy may send one
    // (docs/proxy-protocol.md).
    const bool trusted = std::any_of(
        config.trusted_proxies.begin(), config.trusted_proxies.end(),
        [address](const conf::Cidr& block) { return block.Contains(address); });
    if (!trusted) {
      listener.stats->CountProxy(ProxyResult::kUntrusted);
      evutil_closesocket(fd);
    } else if (!ParkedConnection::AwaitProxyHeader(loop, generation, listener,
                                                   fd, text, ip_length)) {
      evutil_closesocket(fd);
    }
    return;
  }
  net::BufferEventPtr bev = NewBufferEvent(loop, listener, fd);
  if (!bev) {
    evutil_closesocket(fd);
    return;
  }
  Create(loop, generation, listener, std::move(bev), text, ip_length, nullptr);
}

bool ClientConnection::AcceptAfterProxyHeader(
    Loop& loop, Generation& generation, ListenerRuntime& listener,
    evutil_socket_t fd, std::string_view address, size_t ip_length,
    std::unique_ptr<net::ProxyTlvs> tlvs) {
  net::BufferEventPtr bev = NewBufferEvent(loop, listener, fd);
  if (!bev) {
    evutil_closesocket(fd);
    return false;
  }
  // Counted as accepted when its header stage began; the head's deadline
  // starts now.
  Resumed resumed{
      net::TurnClock::Now() + listener.config->client_header_timeout, true,
      std::move(tlvs)};
  Create(loop, generation, listener, std::move(bev), address, ip_length,
         &resumed);
  return true;
}

bool ClientConnection::Resume(Loop& loop, Generation& generation,
                              ListenerRuntime& listener, evutil_socket_t fd,
                              std::string_view address, size_t ip_length,
                              Clock::time_point deadline, bool first_request,
                              std::unique_ptr<net::ProxyTlvs> tlvs) {
  net::BufferEventPtr bev = loop.TakeClientBufferEvent(fd);
  if (!bev) {
    evutil_closesocket(fd);
    return false;
  }
  Resumed resumed{deadline, first_request, std::move(tlvs)};
  ClientConnection* connection = Create(
      loop, generation, listener, std::move(bev), address, ip_length, &resumed);
  // The socket is readable (or at its end) now: read it here rather than
  // one loop turn later, when the bufferevent's own event would.
  if (connection != nullptr) connection->ReadResumed();
  return true;
}

ClientConnection* ClientConnection::Create(Loop& loop, Generation& generation,
                                           ListenerRuntime& listener,
                                           net::BufferEventPtr bev,
                                           std::string_view address,
                                           size_t ip_length, Resumed* resumed) {
  auto* connection = new ClientConnection(
      loop, generation, listener, std::move(bev), address, ip_length, resumed);
  if (bufferevent_enable(connection->bev_.get(), EV_READ | EV_WRITE) != 0) {
    connection->Destroy();
    return nullptr;
  }
  if (resumed == nullptr) {
    connection->ArmIdleTimer(net::TurnClock::Now() +
                             listener.config->client_header_timeout);
  } else {
    // Enabling EV_WRITE adds the write event even with nothing to write;
    // libevent would then call WriteCb once and delete it: two epoll_ctl
    // calls per resumed request for nothing. Its output is empty, so the
    // event goes now, in the same loop turn (no system call), and comes
    // back when the response is written, as on any idle connection.
    event_del(&connection->bev_->ev_write);
    connection->ArmIdleTimer(resumed->deadline);
  }
  return connection;
}

ClientConnection::ClientConnection(Loop& loop, Generation& generation,
                                   ListenerRuntime& listener,
                                   net::BufferEventPtr bev,
                                   std::string_view address, size_t ip_length,
                                   Resumed* resumed)
    : loop_(loop),
      generation_(&generation),
      listener_(&listener),
      bev_(std::move(bev)),
      request_(loop.TakeParser(net::HttpParser::Type::kRequest, this)),
      client_address_(address),
      client_ip_length_(ip_length) {
  loop_.Attach(this, generation_);
  if (resumed == nullptr) {
    listener_->stats->connections_accepted.Add();
    listener_->stats->connections_open.Add(1);
  } else {
    first_request_ = resumed->first_request;
    proxy_tlvs_ = std::move(resumed->proxy_tlvs);
  }
  request_->set_max_head_bytes(listener_->config->max_header_size_bytes);
  request_->set_max_body_bytes(listener_->config->max_body_size_bytes);
  evtimer_assign(&timer_, loop_.base(), TimerCb, this);
  bufferevent* bev_raw = bev_.get();
  bufferevent_setcb(bev_raw, ReadCb, WriteCb, EventCb, this);
  bufferevent_setwatermark(bev_raw, EV_READ, 0, kClientReadHighWater);
  bufferevent_setwatermark(bev_raw, EV_WRITE, kOutputLowWater, 0);
  bufferevent_set_max_single_read(bev_raw, kMaxSingleRead);
  if (!listener_->tls) net::ReadDirectly(bev_raw);
}

void ClientConnection::Destroy() {
  if (destroyed_) return;
  destroyed_ = true;
  if (bev_) bufferevent_disable(bev_.get(), EV_READ | EV_WRITE);
  loop_.write_behind().Cancel(&write_slot_);
  event_del(&timer_);
  exchange_.Cancel();
  loop_.Retire(this);
}

ClientConnection::~ClientConnection() {
  loop_.write_behind().Cancel(&write_slot_);
  event_del(&timer_);
  exchange_.Cancel();
  exchange_.Reset();
  loop_.ReturnParser(std::move(request_));
  if (parked_) loop_.ReturnClientBufferEvent(std::move(bev_));
  if (!parked_ && !handed_over_) listener_->stats->connections_open.Add(-1);
  loop_.Forget(generation_);
}

bool ClientConnection::Parkable() const {
  // Only a plain connection: a TLS one's state lives in its bufferevent.
  if (listener_->tls || state_ != State::kIdle || request_->message_started() ||
      destroyed_ || close_when_idle_ || client_eof_ || closing_shutdown_) {
    return false;
  }
  return evbuffer_get_length(input()) == 0 &&
         evbuffer_get_length(output()) == 0;
}

ClientConnection::Protocol ClientConnection::ProtocolOf() {
  const conf::Listener& config = *listener_->config;
  if (listener_->tls) {
    // ALPN chose (h2 only when the listener serves it).
    const unsigned char* alpn = nullptr;
    unsigned int length = 0;
    if (SSL* ssl = bufferevent_openssl_get_ssl(bev_.get()))
      SSL_get0_alpn_selected(ssl, &alpn, &length);
    if (length == 2 && std::memcmp(alpn, "h2", 2) == 0) return Protocol::kHttp2;
    return config.http1 ? Protocol::kHttp1 : Protocol::kNone;
  }
  if (!config.http2) return Protocol::kHttp1;
  // HTTP/2 by prior knowledge: the preface comes first (never looked for on
  // TLS, where only ALPN says h2).
  const size_t length =
      std::min(evbuffer_get_length(input()), sizeof(kH2Preface) - 1);
  if (length == 0) return Protocol::kUnknown;
  const auto* data =
      reinterpret_cast<const char*>(evbuffer_pullup(input(), length));
  if (std::memcmp(data, kH2Preface, length) != 0)
    return config.http1 ? Protocol::kHttp1 : Protocol::kNone;
  return length == sizeof(kH2Preface) - 1 ? Protocol::kHttp2
                                          : Protocol::kUnknown;
}

void ClientConnection::HandToHttp2() {
  // The H2Connection takes the socket, its buffers and the counts.
  event_del(&timer_);
  bufferevent_setcb(bev_.get(), nullptr, nullptr, nullptr, nullptr);
  handed_over_ = true;
  H2Connection::Start(loop_, *generation_, *listener_, std::move(bev_),
                      client_address_, client_ip_length_,
                      std::move(proxy_tlvs_));
  Destroy();
}

bool ClientConnection::Park() {
  evutil_socket_t fd = bufferevent_getfd(bev_.get());
  if (fd < 0 ||
      !ParkedConnection::Park(loop_, *generation_, *listener_, fd,
                              client_address_, client_ip_length_,
                              idle_deadline_, first_request_, proxy_tlvs_)) {
    return false;
  }
  // The socket is the parked connection's now; the listener still counts it,
  // and the bufferevent goes back to the loop for the next one.
  bufferevent_disable(bev_.get(), EV_READ | EV_WRITE);
  bufferevent_setfd(bev_.get(), -1);
  parked_ = true;
  Destroy();
  return true;
}

void ClientConnection::ReadResumed() {
  evutil_socket_t fd = bufferevent_getfd(bev_.get());
  // A bufferevent's input is frozen at its end except while libevent reads
  // into it; this read stands in for one of those.
  evbuffer_unfreeze(input(), 0);
  int n = evbuffer_read(input(), fd, static_cast<int>(kMaxSingleRead));
  evbuffer_freeze(input(), 0);
  if (n > 0) {
    OnClientRead();
  } else if (n == 0) {
    OnClientEvent(BEV_EVENT_READING | BEV_EVENT_EOF);
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    OnClientEvent(BEV_EVENT_READING | BEV_EVENT_ERROR);
  }
}

void ClientConnection::CloseWhenIdle() {
  close_when_idle_ = true;
  if (state_ == State::kIdle && !request_->message_started()) Destroy();
}

void ClientConnection::Abort() {
  if (state_ == State::kExchange || state_ == State::kTunnel) {
    exchange_.Abort(kFlagClientReset);  // logs, then Destroy()
  }
  Destroy();
}

uint64_t ClientConnection::BufferedBytes() const {
  return evbuffer_get_length(input()) + evbuffer_get_length(output()) +
         request_->HeldBytes() + exchange_.BufferedBytes();
}

// ---- libevent entry points --------------------------------------------------

void ClientConnection::ReadCb(bufferevent*, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  if (!self->destroyed_) self->OnClientRead();
}

void ClientConnection::WriteCb(bufferevent*, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  if (!self->destroyed_) self->OnClientDrained();
}

void ClientConnection::EventCb(bufferevent*, short events, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  if (!self->destroyed_) self->OnClientEvent(events);
}

void ClientConnection::TimerCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  if (!self->destroyed_) self->OnTimer();
}

void ClientConnection::OnClientRead() {
  switch (state_) {
    case State::kIdle:
      ParseRequest();
      break;
    case State::kExchange:
      // Only request bytes are activity, and only once a backend takes them
      // (until then the body waits): pipelined requests arriving behind
      // this one do not keep a stalled response alive.
      if (exchange_.sending() && !exchange_.request_complete() &&
          !message_.paused_at_head && !message_.request_blocked) {
        exchange_.Touch();
        ParseRequest();
      }
      break;
    case State::kTunnel:
      exchange_.Touch();
      if (exchange_.attempt().upstream() != nullptr) {
        UpstreamConnection& backend = *exchange_.attempt().upstream();
        PumpTunnel(input(), backend.output(), bev_.get());
        backend.WriteSoon();
      }
      break;
    case State::kClosing:
      evbuffer_drain(input(), evbuffer_get_length(input()));
      break;
  }
  // Input this state cannot consume stays in the kernel: reading stops until
  // a state that consumes it turns reading on again (ContinueRequest,
  // RequestDrained, NextRequest, StartTunnel, FinishClose). Left on,
  // libevent would call this callback again at once for as long as the input
  // sits at its high-water mark: a busy loop.
  if (!destroyed_ && evbuffer_get_length(input()) >= kClientReadHighWater)
    bufferevent_disable(bev_.get(), EV_READ);
}

void ClientConnection::OnClientDrained() {
  switch (state_) {
    case State::kClosing:
      if (evbuffer_get_length(output()) == 0) FinishClose();
      break;
    case State::kTunnel: {
      exchange_.Touch();
      UpstreamConnection* backend = exchange_.attempt().upstream();
      if (message_.tunnel_backend_eof) {
        TunnelFlushed();
      } else if (backend != nullptr) {
        bufferevent_enable(backend->bev(), EV_READ);
      }
      break;
    }
    case State::kExchange:
      exchange_.OnDownstreamDrained();
      break;
    case State::kIdle:
      break;
  }
}

void ClientConnection::OnClientEvent(short events) {
  if (events & BEV_EVENT_CONNECTED) {
    // The TLS handshake with the client is done.
    tls_established_ = true;
    listener_->stats->tls_handshakes.Add();
    if (ProtocolOf() == Protocol::kHttp2) {
      HandToHttp2();
    } else if (ProtocolOf() == Protocol::kNone) {
      Destroy();
    }
  } else if (listener_->tls && !tls_established_ &&
             (events & (BEV_EVENT_ERROR | BEV_EVENT_EOF))) {
    // A failed handshake (old protocol, plain HTTP, no shared cipher...):
    // counted, and the connection just closes.
    unsigned long error = bufferevent_get_openssl_error(bev_.get());
    std::string_view reason = net::HandshakeFailureReason(error);
    for (size_t i = 0; i < std::size(kHandshakeFailures); ++i) {
      if (reason == kHandshakeFailures[i])
        listener_->stats->tls_handshake_failures[i].Add();
    }
    while (bufferevent_get_openssl_error(bev_.get()) != 0) {
    }
    Destroy();
  } else if (events & BEV_EVENT_ERROR) {
    if (state_ == State::kClosing) {
      Destroy();
    } else {
      exchange_.Abort(kFlagClientReset);
    }
  } else if (events & BEV_EVENT_EOF) {
    switch (state_) {
      case State::kIdle:
      case State::kClosing:
        Destroy();
        break;
      case State::kExchange:
        if (exchange_.request_complete()) {
          // A half-closed client still gets its response.
          client_eof_ = true;
        } else {
          exchange_.Abort(kFlagClientReset);
        }
        break;
      case State::kTunnel:
        // Half-closed: pass it on, the other direction may still carry bytes.
        if (exchange_.attempt().upstream() == nullptr) {
          Destroy();
          break;
        }
        client_eof_ = true;
        bufferevent_setwatermark(exchange_.attempt().upstream()->bev(),
                                 EV_WRITE, 0, 0);
        TunnelFlushed();
        break;
    }
  }
}

// ---- the request codec -----------------------------------------------------

void ClientConnection::ParseRequest() {
  if (first_request_ && state_ == State::kIdle &&
      !request_->message_started()) {
    switch (ProtocolOf()) {
      case Protocol::kHttp1:
        break;
      case Protocol::kUnknown:
        return;  // more bytes will tell
      case Protocol::kHttp2:
        HandToHttp2();
        return;
      case Protocol::kNone:
        Destroy();  // a protocol the listener does not serve
        return;
    }
  }
  size_t consumed = 0;
  net::HttpParser::Result result = net::Feed(*request_, input(), &consumed);
  listener_->stats->bytes_received.Add(consumed);

  switch (result) {
    case net::HttpParser::Result::kNeedMore:
      if (state_ == State::kIdle && request_->message_started() &&
          !header_timer_armed_) {
        // The head has begun: from now on it must be complete in time.
        header_timer_armed_ = true;
        // (Before a first request, the deadline set at the accept holds.)
        ArmTimer(first_request_ ? idle_deadline_ - net::TurnClock::Now()
                                : listener_->config->client_header_timeout);
      }
      break;
    case net::HttpParser::Result::kPausedHead:
      message_.head_pending = false;
      message_.paused_at_head = true;
      OnRequestHead(false);
      return;
    case net::HttpParser::Result::kUpgrade:
      message_.request_upgrade_paused = true;
      [[fallthrough]];
    case net::HttpParser::Result::kComplete:
      if (message_.head_pending) {
        message_.head_pending = false;
        OnRequestHead(true);
        return;
      }
      exchange_.OnRequestComplete(message_.request_upgrade_paused);
      return;
    case net::HttpParser::Result::kError:
      if (state_ == State::kIdle) {
        exchange_.Reject(request_->error_status(),
                         std::string(request_->error_reason()).c_str(), 0);
      } else {
        exchange_.OnRequestError(request_->error_status(),
                                 std::string(request_->error_reason()).c_str());
      }
      return;
  }
  if (state_ == State::kExchange && exchange_.sending() &&
      exchange_.UpstreamOutputFull()) {
    message_.request_blocked = true;
    bufferevent_disable(bev_.get(), EV_READ);
  }
}

net::HttpParser::HeadAction ClientConnection::OnHeadComplete(net::HttpParser&) {
  message_.head_pending = true;
  // A request without a body completes at once (an upgrade stops itself);
  // one with a body waits until a backend can take it.
  return request_->framing() == net::Framing::kNone
             ? net::HttpParser::HeadAction::kContinue
             : net::HttpParser::HeadAction::kPause;
}

void ClientConnection::OnBody(net::HttpParser&, const char* data,
                              size_t length) {
  exchange_.OnRequestBody(data, length);
}

void ClientConnection::OnMessageComplete(net::HttpParser&) {
  // The end of the body goes out with the exchange's OnRequestComplete.
}

void ClientConnection::OnRequestHead(bool complete) {
  // A reload since the last request: this one follows the new config.
  ListenerStats* old_stats = listener_->stats;
  loop_.Rebind(&generation_, &listener_);
  if (listener_->stats != old_stats) {
    old_stats->connections_open.Add(-1);
    listener_->stats->connections_open.Add(1);
  }
  // A reload's limits apply from this request on (its body, its trailers,
  // and the next head).
  request_->set_max_head_bytes(listener_->config->max_header_size_bytes);
  request_->set_max_body_bytes(listener_->config->max_body_size_bytes);
  message_.client_keep_alive = request_->keep_alive();
  message_.expect_continue = net::ExpectsContinue(*request_);
  if (close_when_idle_ || loop_.shutting_down())
    message_.client_keep_alive = false;
  event_del(&timer_);
  state_ = State::kExchange;
  exchange_.Begin(complete, message_.request_upgrade_paused);
}

void ClientConnection::ContinueRequest() {
  if (message_.expect_continue && !message_.continue_sent) {
    message_.continue_sent = true;
    evbuffer_add(output(), kContinue, sizeof(kContinue) - 1);
    WriteSoon();
  }
  if (exchange_.request_complete()) return;
  if (message_.paused_at_head) {
    message_.paused_at_head = false;
    request_->Resume();
  }
  bufferevent_enable(bev_.get(), EV_READ);
  ParseRequest();
}

void ClientConnection::RequestDrained() {
  if (!message_.request_blocked) return;
  exchange_.Touch();
  message_.request_blocked = false;
  bufferevent_enable(bev_.get(), EV_READ);
  ParseRequest();
}

// ---- the response codec ----------------------------------------------------

const char* ClientConnection::CannotCarry(
    const net::HttpParser& response) const {
  if (request_->http_minor() == 0 && !response.transfer_codings().empty()) {
    // A coding such as gzip cannot be labelled for an HTTP/1.0 client (it
    // gets no Transfer-Encoding, RFC 9112 §6.1), and removing it would hand
    // over a body that is not what it claims: nginx, too, answers 502.
    return "a transfer coding an HTTP/1.0 client cannot receive";
  }
  return nullptr;
}

void ClientConnection::SendInterim(const net::HttpParser& response) {
  // tandem sends its own 100 Continue; others (103 Early Hints) go to
  // HTTP/1.1 clients.
  const int client_minor = request_->http_minor();
  if (response.status_code() == 100 || client_minor < 1) return;
  std::string& head = loop_.scratch();
  net::AppendResponseHead(response, net::ResponsePlan{}, client_minor, false,
                          &head);
  evbuffer_add(output(), head.data(), head.size());
  WriteSoon();
}

void ClientConnection::SendResponseHead(const net::HttpParser& response) {
  const int client_minor = request_->http_minor();
  const bool head_request = exchange_.head_request();
  // Closing for a shutdown: tell the client in this response.
  net::ResponsePlan plan =
      net::PlanResponse(response, head_request, client_minor,
                        message_.client_keep_alive && !client_eof_ &&
                            !close_when_idle_ && !loop_.shutting_down());
  if (!exchange_.request_complete())
    plan.close = true;  // the rest of the request can't follow
  if (plan.framing == net::Framing::kUntilClose) plan.close = true;
  message_.response_framing = plan.framing;
  message_.response_close = plan.close;
  std::string& head = loop_.scratch();
  net::AppendResponseHead(response, plan, client_minor, head_request, &head);
  evbuffer_add(output(), head.data(), head.size());
  WriteSoon();
}

void ClientConnection::SendResponseBody(const char* data, size_t length) {
  net::FrameBody(message_.response_framing, data, length, output());
  WriteSoon();
}

void ClientConnection::SendResponseEnd(const net::HeaderList& trailers) {
  net::FrameBodyEnd(message_.response_framing, trailers, output());
  WriteSoon();
}

bool ClientConnection::ResponseOutputFull() const { return Full(output()); }

Downstream::LocalReply ClientConnection::SendLocalResponse(
    int status, const char* detail, bool close, std::string_view extra_fields) {
  if (!message_.client_keep_alive || client_eof_) close = true;
  std::string& out = loop_.scratch();
  net::AppendSimpleResponse(status, detail, close, request_->http_minor(),
                            extra_fields, &out);
  evbuffer_add(output(), out.data(), out.size());
  WriteSoon();
  message_.response_close = close;
  return {close, out.size() - (out.find("\r\n\r\n") + 4)};
}

const std::string& ClientConnection::ProxyHeader(int version) {
  if (proxy_header_version_ != version) {
    proxy_header_out_ =
        net::BuildProxyHeaderFor(version, client_address_, client_ip_length_,
                                 bufferevent_getfd(bev_.get()));
    proxy_header_version_ = version;
  }
  return proxy_header_out_;
}

// ---- the end of an exchange ----------------------------------------------

void ClientConnection::ExchangeEnded(End end) {
  switch (end) {
    case End::kNext:
      if (message_.response_close || !message_.client_keep_alive ||
          client_eof_ || close_when_idle_ || loop_.shutting_down()) {
        CloseAfterFlush();
      } else {
        NextRequest();
      }
      return;
    case End::kClose:
      CloseAfterFlush();
      return;
    case End::kCutOff:
      // A close-delimited body would look complete after a clean FIN, so
      // that one is reset.
      reset_on_close_ = message_.response_framing == net::Framing::kUntilClose;
      CloseAfterFlush();
      return;
    case End::kDestroy:
      Destroy();
      return;
  }
}

void ClientConnection::NextRequest() {
  const bool upgrade_paused = message_.request_upgrade_paused;
  exchange_.Reset();
  message_ = {};
  first_request_ = false;
  header_timer_armed_ = false;
  // What one large request made the parser hold goes back to the allocator.
  request_->ShrinkIfLarge(kMaxIdleParserBytes);
  state_ = State::kIdle;
  if (upgrade_paused) {
    request_->ResumeAfterUpgrade();
  } else {
    request_->Resume();
  }
  ArmIdleTimer(net::TurnClock::Now() + listener_->config->idle_timeout);
  bufferevent_enable(bev_.get(), EV_READ);
  ParseRequest();  // a pipelined request may be waiting
}

// ---- the tunnel after a 101 ------------------------------------------------

void ClientConnection::StartTunnel() {
  state_ = State::kTunnel;
  UpstreamConnection& backend = *exchange_.attempt().upstream();
  // Bytes that followed the 101 belong to the new protocol already.
  PumpTunnel(backend.input(), output(), backend.bev());
  PumpTunnel(input(), backend.output(), bev_.get());
  WriteSoon();
  backend.WriteSoon();
  bufferevent_enable(bev_.get(), EV_READ);
}

void ClientConnection::TunnelBackendRead() {
  UpstreamConnection& backend = *exchange_.attempt().upstream();
  PumpTunnel(backend.input(), output(), backend.bev());
  WriteSoon();
}

void ClientConnection::TunnelBackendDrained() {
  if (client_eof_) {
    TunnelFlushed();
  } else {
    bufferevent_enable(bev_.get(), EV_READ);
  }
}

void ClientConnection::TunnelBackendClosed(short events) {
  UpstreamConnection& backend = *exchange_.attempt().upstream();
  evbuffer_add_buffer(output(), backend.input());
  WriteSoon();
  if (events & BEV_EVENT_ERROR) {
    // Reset: deliver what the backend sent, then close.
    exchange_.EndTunnel(End::kClose);
    return;
  }
  // Half-closed: pass it on once the client has everything before it.
  message_.tunnel_backend_eof = true;
  bufferevent_setwatermark(bev_.get(), EV_WRITE, 0, 0);
  TunnelFlushed();
}

void ClientConnection::PumpTunnel(evbuffer* from, evbuffer* to,
                                  bufferevent* from_bev) {
  evbuffer_add_buffer(to, from);
  if (Full(to)) bufferevent_disable(from_bev, EV_READ);
}

void ClientConnection::TunnelFlushed() {
  // A side that ended passes its end on once everything it sent is out.
  UpstreamConnection& backend = *exchange_.attempt().upstream();
  bool failed = false;
  if (client_eof_ && !message_.tunnel_backend_shut &&
      evbuffer_get_length(backend.output()) == 0) {
    message_.tunnel_backend_shut = true;
    failed = !ShutdownWrite(backend.bev());
  }
  if (message_.tunnel_backend_eof && !message_.tunnel_client_shut &&
      evbuffer_get_length(output()) == 0) {
    message_.tunnel_client_shut = true;
    failed = failed || !ShutdownWrite(bev_.get());
  }
  if (failed || (message_.tunnel_backend_shut && message_.tunnel_client_shut &&
                 client_eof_ && message_.tunnel_backend_eof)) {
    // Both directions are done (or a socket is gone).
    exchange_.EndTunnel(End::kDestroy);
  }
}

void ClientConnection::WriteSoon() {
  loop_.write_behind().Add(bev_.get(), &write_slot_);
}

// ---- closing
// -----------------------------------------------------------------

void ClientConnection::CloseAfterFlush() {
  state_ = State::kClosing;
  bufferevent_setwatermark(bev_.get(), EV_WRITE, 0, 0);
  if (evbuffer_get_length(output()) == 0) {
    FinishClose();
    return;
  }
  ArmTimer(listener_->config->idle_timeout);
}

void ClientConnection::FinishClose() {
  if (closing_shutdown_) return;
  closing_shutdown_ = true;
  if (reset_on_close_) {
    evutil_socket_t fd = bufferevent_getfd(bev_.get());
    linger hard = {1, 0};
    if (fd >= 0)
      (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    Destroy();
    return;
  }
  // Lingering close: shut our side, keep reading (and discarding) for a
  // moment so unread request bytes do not turn into an RST that destroys
  // the response before the client has read it.
  if (SSL* ssl = bufferevent_openssl_get_ssl(bev_.get())) {
    // close_notify first, so a TLS client knows the end is genuine.
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
  }
  evutil_socket_t fd = bufferevent_getfd(bev_.get());
  if (fd < 0 || shutdown(fd, SHUT_WR) != 0) {
    Destroy();
    return;
  }
  evbuffer_drain(input(), evbuffer_get_length(input()));
  bufferevent_enable(bev_.get(), EV_READ);
  ArmTimer(kLingerTime);
}

// ---- timers ----------------------------------------------------------------

void ClientConnection::ArmIdleTimer(Clock::time_point deadline) {
  idle_deadline_ = deadline;
  Clock::duration left = deadline - net::TurnClock::Now();
  // A plain connection wakes up early to be parked; a TLS one cannot be.
  ArmTimer(listener_->tls ? left : std::min<Clock::duration>(left, kParkAfter));
}

void ClientConnection::ArmTimer(Clock::duration delay) {
  timeval tv = net::ToTimeval(std::max(delay, Clock::duration::zero()));
  event_add(&timer_, &tv);
}

void ClientConnection::OnTimer() {
  switch (state_) {
    case State::kIdle:
      if (!request_->message_started() &&
          net::TurnClock::Now() < idle_deadline_) {
        // Woken early: quiet for kParkAfter, the connection is parked; if it
        // cannot be yet (output still going out), look again later.
        if (!Parkable() || !Park()) ArmIdleTimer(idle_deadline_);
        return;
      }
      if (request_->message_started()) {
        exchange_.Reject(408, "request head not received in time",
                         kFlagClientTimeout);
      } else {
        Destroy();  // silent, or a keep-alive connection idle too long
      }
      return;
    case State::kClosing:
      Destroy();
      return;
    case State::kExchange:
    case State::kTunnel:
      return;  // the exchange's own timer runs these
  }
}

}  // namespace tandem::dispatcher
