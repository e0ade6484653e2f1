// The HTTP/1.1 proxy state machine for one client connection; see
// client_connection.h.
#include "dispatcher/proxy/client_connection.h"

#include <arpa/inet.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "algorithms/hash.h"
#include "dispatcher/proxy/parked_connection.h"
#include "net/http_message.h"
#include "net/posix.h"
#include "net/proxy_protocol.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;
using net::ToTimeval;

// Back-pressure marks (bytes queued for the peer): stop reading the other
// side above the high mark, resume once drained to the low mark.
constexpr size_t kOutputHighWater = 256 * 1024;
constexpr size_t kOutputLowWater = 64 * 1024;
// try_timeout = "auto": this many times the cluster's recent p99, at least
// the floor (docs/retries.md).
constexpr int64_t kAutoTryFactor = 3;
constexpr std::chrono::milliseconds kAutoTryFloor{1000};
// Client input read ahead while the current request is being served
// (pipelined requests wait here).
constexpr size_t kClientReadHighWater = 64 * 1024;
constexpr size_t kMaxSingleRead = 64 * 1024;
// How long a closing connection waits for the client to read the last
// response and close its side (lingering close, as nginx's lingering_time).
constexpr auto kLingerTime = std::chrono::seconds(2);

constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
// Interim (1xx) responses one exchange accepts from a backend; more make the
// response invalid, so a backend cannot keep an exchange busy with them.
constexpr uint32_t kMaxInterimResponses = 16;
// A retry body kept past this capacity is freed when its exchange ends, so
// one large upload does not stay resident on an idle connection.
constexpr size_t kMaxIdleRetryBodyBytes = 16 * 1024;
// The same for the request parser's fields between requests.
constexpr size_t kMaxIdleParserBytes = 16 * 1024;
// A plain connection with no request in progress for this long is parked
// (docs/idle.md): long enough that a client sending request after request
// never pays for it, short enough that a burst of connections going idle
// does not hold their buffers.
constexpr auto kParkAfter = std::chrono::milliseconds(50);

// Defers `delete` until the outermost callback on the connection returns, so
// no member function runs on a freed object.
class DepthGuard {
 public:
  explicit DepthGuard(int* depth) : depth_(depth) { ++*depth_; }
  ~DepthGuard() { --*depth_; }

 private:
  int* depth_;
};

// Runs `parser` over what `input` holds, in place (no copy), draining what it
// consumed, until it needs more or stops at a message boundary, a paused head
// or an error. `*consumed` gets the bytes drained.
net::HttpParser::Result Feed(net::HttpParser& parser, evbuffer* input,
                             size_t* consumed) {
  net::HttpParser::Result result = net::HttpParser::Result::kNeedMore;
  *consumed = 0;
  while (evbuffer_get_length(input) > 0) {
    evbuffer_iovec vec[8];
    int n = evbuffer_peek(input, -1, nullptr, vec, 8);
    size_t used_total = 0;
    for (int i = 0; i < std::min(n, 8); ++i) {
      size_t used = 0;
      result = parser.Execute(static_cast<const char*>(vec[i].iov_base),
                              vec[i].iov_len, &used);
      used_total += used;
      if (result != net::HttpParser::Result::kNeedMore) break;
    }
    evbuffer_drain(input, used_total);
    *consumed += used_total;
    if (result != net::HttpParser::Result::kNeedMore) break;
  }
  return result;
}

}  // namespace

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
  auto* connection = new ClientConnection(
      loop, generation, listener, std::move(bev), text, ip_length, nullptr);
  if (connection->destroy_pending_) connection->DeleteNow();
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
  Resumed resumed{Clock::now() + listener.config->client_header_timeout, true,
                  std::move(tlvs)};
  auto* connection = new ClientConnection(
      loop, generation, listener, std::move(bev), address, ip_length, &resumed);
  if (connection->destroy_pending_) connection->DeleteNow();
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
  auto* connection = new ClientConnection(
      loop, generation, listener, std::move(bev), address, ip_length, &resumed);
  // The socket is readable (or at its end) now: read it here rather than
  // one loop turn later, when the bufferevent's own event would.
  Enter(connection, [connection] { connection->ReadResumed(); });
  return true;
}

void ClientConnection::ReadResumed() {
  evutil_socket_t fd = bufferevent_getfd(bev_.get());
  // A bufferevent's input is frozen at its end except while libevent reads
  // into it; this read stands in for one of those.
  evbuffer* input = bufferevent_get_input(bev_.get());
  evbuffer_unfreeze(input, 0);
  int n = evbuffer_read(input, fd, static_cast<int>(kMaxSingleRead));
  evbuffer_freeze(input, 0);
  if (n > 0) {
    OnClientRead();
  } else if (n == 0) {
    OnClientEvent(BEV_EVENT_READING | BEV_EVENT_EOF);
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    OnClientEvent(BEV_EVENT_READING | BEV_EVENT_ERROR);
  }
}

bool ClientConnection::Parkable() const {
  // Only a plain connection: a TLS one's state lives in its bufferevent.
  if (listener_->tls || state_ != State::kIdle || request_->message_started() ||
      destroy_pending_ || close_when_idle_ || client_eof_ ||
      closing_shutdown_) {
    return false;
  }
  return evbuffer_get_length(bufferevent_get_input(bev_.get())) == 0 &&
         evbuffer_get_length(bufferevent_get_output(bev_.get())) == 0;
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
  Touch();
  if (bufferevent_enable(bev_raw, EV_READ | EV_WRITE) != 0) {
    // The caller deletes it (a constructor cannot).
    destroy_pending_ = true;
    return;
  }
  if (resumed == nullptr) {
    ArmIdleTimer(Clock::now() + listener_->config->client_header_timeout);
  } else {
    // Enabling EV_WRITE adds the write event even with nothing to write;
    // libevent would then call WriteCb once and delete it: two epoll_ctl
    // calls per resumed request for nothing. Its output is empty, so the
    // event goes now, in the same loop turn (no system call), and comes
    // back when the response is written, as on any idle connection.
    event_del(&bev_raw->ev_write);
    ArmIdleTimer(resumed->deadline);
  }
}

ClientConnection::~ClientConnection() {
  event_del(&timer_);
  if (response_) loop_.ReturnParser(std::move(response_));
  loop_.ReturnParser(std::move(request_));
  if (parked_) loop_.ReturnClientBufferEvent(std::move(bev_));
  Dequeue();
  EndAttempt(false);
  ReleaseClusterCounts();
  if (!parked_) listener_->stats->connections_open.Add(-1);
  loop_.Detach(this, generation_);
}

void ClientConnection::Destroy() {
  if (callback_depth_ > 0) {
    destroy_pending_ = true;
    // Stop every event now; the object goes when the callback unwinds.
    bufferevent_disable(bev_.get(), EV_READ | EV_WRITE);
    event_del(&timer_);
    return;
  }
  DeleteNow();
}

// Out of line on purpose: inlined into Enter(), the `delete` would be on a
// path the compiler cannot rule out (callback_depth_ > 0 there) and it would
// warn of a use after free that never happens.
[[gnu::noinline]] void ClientConnection::DeleteNow() { delete this; }

// ---- libevent entry points --------------------------------------------------

// Every entry point runs its handler under the depth guard: Destroy() inside
// only marks the connection, which is deleted when the outermost entry point
// returns (so no member function runs on a freed object).
template <typename Fn>
void ClientConnection::Enter(ClientConnection* self, Fn&& handler) {
  {
    DepthGuard guard(&self->callback_depth_);
    if (!self->destroy_pending_) handler();
  }
  if (self->destroy_pending_ && self->callback_depth_ == 0) self->DeleteNow();
}

void ClientConnection::ReadCb(bufferevent*, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  Enter(self, [self] { self->OnClientRead(); });
}

void ClientConnection::WriteCb(bufferevent*, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  Enter(self, [self] { self->OnClientDrained(); });
}

void ClientConnection::EventCb(bufferevent*, short events, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  Enter(self, [self, events] { self->OnClientEvent(events); });
}

void ClientConnection::TimerCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  Enter(self, [self] { self->OnTimer(); });
}

// The upstream callbacks arrive through UpstreamConnection's trampolines.
void ClientConnection::OnUpstreamConnected(UpstreamConnection&) {
  Enter(this, [this] {
    if (state_ != State::kConnecting) return;
    state_ = State::kProxying;
    SendRequestHead();
  });
}

void ClientConnection::OnUpstreamRead(UpstreamConnection&) {
  Enter(this, [this] {
    Touch();
    if (state_ == State::kTunnel) {
      PumpTunnel(attempt_.upstream->input(), bufferevent_get_output(bev_.get()),
                 attempt_.upstream->bev(), bev_.get());
    } else {
      ParseResponse();
    }
  });
}

void ClientConnection::OnUpstreamDrained(UpstreamConnection&) {
  Enter(this, [this] {
    if (state_ == State::kTunnel) {
      Touch();
      if (client_eof_) {
        TunnelFlushed();
      } else {
        bufferevent_enable(bev_.get(), EV_READ);
      }
    } else if (message_.request_blocked) {
      Touch();
      message_.request_blocked = false;
      bufferevent_enable(bev_.get(), EV_READ);
      ParseRequest();
    }
  });
}

void ClientConnection::OnUpstreamClosed(UpstreamConnection& connection,
                                        short events) {
  Enter(this,
        [this, &connection, events] { OnUpstreamEnded(connection, events); });
}

void ClientConnection::OnClientDrained() {
  if (state_ == State::kClosing) {
    if (evbuffer_get_length(bufferevent_get_output(bev_.get())) == 0)
      FinishClose();
  } else if (state_ == State::kTunnel) {
    Touch();
    if (attempt_.upstream_eof) {
      TunnelFlushed();
    } else if (attempt_.upstream != nullptr) {
      bufferevent_enable(attempt_.upstream->bev(), EV_READ);
    }
  } else if (message_.response_blocked && attempt_.upstream != nullptr) {
    Touch();
    message_.response_blocked = false;
    bufferevent_enable(attempt_.upstream->bev(), EV_READ);
    ParseResponse();
  }
}

void ClientConnection::OnClientEvent(short events) {
  if (events & BEV_EVENT_CONNECTED) {
    // The TLS handshake with the client is done.
    tls_established_ = true;
    listener_->stats->tls_handshakes.Add();
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
    AbortExchange(kFlagClientReset);
  } else if (events & BEV_EVENT_EOF) {
    switch (state_) {
      case State::kIdle:
        if (request_->message_started()) exchange_.flags |= kFlagClientReset;
        Destroy();
        break;
      case State::kQueued:
      case State::kRetryWait:
      case State::kConnecting:
      case State::kProxying:
        if (message_.request_complete) {
          // A half-closed client still gets its response.
          client_eof_ = true;
        } else {
          AbortExchange(kFlagClientReset);
        }
        break;
      case State::kTunnel:
        // Half-closed: pass it on, the other direction may still carry bytes.
        if (attempt_.upstream == nullptr) {
          Destroy();
          break;
        }
        client_eof_ = true;
        bufferevent_setwatermark(attempt_.upstream->bev(), EV_WRITE, 0, 0);
        TunnelFlushed();
        break;
      case State::kClosing:
        Destroy();
        break;
    }
  }
}

void ClientConnection::OnUpstreamEnded(UpstreamConnection& connection,
                                       short events) {
  if (&connection != attempt_.upstream) {
    // An event of a connection this exchange no longer uses.
  } else if (state_ == State::kConnecting) {
    SSL* ssl = bufferevent_openssl_get_ssl(connection.bev());
    unsigned long tls_error =
        ssl != nullptr ? bufferevent_get_openssl_error(connection.bev()) : 0;
    if (ssl != nullptr &&
        (tls_error != 0 || SSL_get_verify_result(ssl) != X509_V_OK)) {
      // A handshake failure says why: a wrong name, an unknown CA...
      exchange_.detail = "TLS handshake with backend failed: " +
                         net::TlsFailureText(ssl, tls_error);
      while (bufferevent_get_openssl_error(connection.bev()) != 0) {
      }
      FailAttempt(Failure::kConnect, 502, exchange_.detail.c_str());
    } else {
      bool refused = connection.connect_error() == ECONNREFUSED;
      FailAttempt(refused ? Failure::kRefused : Failure::kConnect, 502,
                  refused ? "connection to backend refused"
                          : "connection to backend failed");
    }
  } else if (state_ == State::kTunnel) {
    evbuffer_add_buffer(bufferevent_get_output(bev_.get()),
                        attempt_.upstream->input());
    if (events & BEV_EVENT_ERROR) {
      // Reset: deliver what the backend sent, then close.
      EndAttempt(false);
      LogExchange();
      CloseAfterFlush();
      return;
    }
    // Half-closed: pass it on once the client has everything before it.
    attempt_.upstream_eof = true;
    bufferevent_setwatermark(bev_.get(), EV_WRITE, 0, 0);
    TunnelFlushed();
  } else if (state_ == State::kProxying) {
    attempt_.upstream_eof = true;
    if (evbuffer_get_length(attempt_.upstream->input()) > 0 &&
        !message_.response_blocked)
      ParseResponse();
    if (destroy_pending_ || &connection != attempt_.upstream) {
      // ParseResponse finished or failed the exchange.
    } else if (message_.response_started) {
      if ((events & BEV_EVENT_EOF) && !message_.response_blocked &&
          response_->FinishAtEof()) {
        // A close-delimited body ended: complete, but not reusable.
        OnResponseComplete();
      } else if (!message_.response_blocked) {
        ReportOutcome(false, Failure::kReset);
        AbortExchange(kFlagUpstreamReset);
      }
    } else if (!attempt_.response_bytes_seen && attempt_.upstream->reused() &&
               exchange_.tries <=
                   cluster().backends.size() + cluster().config->retries) {
      // A pooled connection the backend had closed while idle: the request
      // never reached it.
      FailAttempt(Failure::kPoolRace, 502, "backend closed the connection");
    } else {
      FailAttempt(Failure::kReset, 502,
                  (events & BEV_EVENT_ERROR) ? "connection to backend reset"
                                             : "backend closed the connection");
    }
  }
}

// ---- the request side -------------------------------------------------------

void ClientConnection::OnClientRead() {
  switch (state_) {
    case State::kIdle:
      ParseRequest();
      break;
    case State::kQueued:
    case State::kRetryWait:
    case State::kConnecting:
      break;  // the body waits until a backend connection is ready
    case State::kProxying:
      // Only request bytes are activity: pipelined requests arriving behind
      // this one do not keep a stalled response alive.
      if (!message_.request_complete && !message_.paused_at_head &&
          !message_.request_blocked) {
        Touch();
        ParseRequest();
      }
      break;
    case State::kTunnel:
      Touch();
      if (attempt_.upstream != nullptr) {
        PumpTunnel(bufferevent_get_input(bev_.get()),
                   attempt_.upstream->output(), bev_.get(),
                   attempt_.upstream->bev());
      }
      break;
    case State::kClosing: {
      evbuffer* input = bufferevent_get_input(bev_.get());
      evbuffer_drain(input, evbuffer_get_length(input));
      break;
    }
  }
  // Input this state cannot consume stays in the kernel: reading stops until
  // a state that consumes it turns reading on again (SendRequestHead,
  // OnUpstreamDrained, FinishExchange, EnterTunnel, FinishClose). Left on,
  // libevent would call this callback again at once for as long as the input
  // sits at its high-water mark: a busy loop.
  if (!destroy_pending_ && evbuffer_get_length(bufferevent_get_input(
                               bev_.get())) >= kClientReadHighWater) {
    bufferevent_disable(bev_.get(), EV_READ);
  }
}

void ClientConnection::ParseRequest() {
  size_t consumed = 0;
  net::HttpParser::Result result =
      Feed(*request_, bufferevent_get_input(bev_.get()), &consumed);
  listener_->stats->bytes_received.Add(consumed);

  switch (result) {
    case net::HttpParser::Result::kNeedMore:
      if (state_ == State::kIdle && request_->message_started() &&
          !header_timer_armed_) {
        // The head has begun: from now on it must be complete in time.
        header_timer_armed_ = true;
        // (Before a first request, the deadline set at the accept holds.)
        ArmTimer(first_request_ ? idle_deadline_ - Clock::now()
                                : listener_->config->client_header_timeout);
      }
      break;
    case net::HttpParser::Result::kPausedHead:
      message_.head_pending = false;
      message_.paused_at_head = true;
      OnRequestHead();
      return;
    case net::HttpParser::Result::kUpgrade:
      message_.request_upgrade_paused = true;
      [[fallthrough]];
    case net::HttpParser::Result::kComplete:
      message_.request_complete = true;
      message_.request_done = Clock::now();
      if (message_.head_pending) {
        message_.head_pending = false;
        OnRequestHead();
        return;
      }
      if (message_.response_complete) {
        FinishExchange();
        return;
      }
      if (!message_.response_started && state_ == State::kProxying) {
        // The whole request is out: the backend's time to answer starts.
        ArmTimer(ResponseDeadline() - Clock::now());
      }
      return;
    case net::HttpParser::Result::kError:
      if (state_ == State::kIdle) {
        Respond(request_->error_status(),
                std::string(request_->error_reason()).c_str(), true);
      } else {
        // The body broke the rules after part of it went to the backend.
        EndAttempt(false);
        if (message_.response_started) {
          Destroy();
        } else {
          Respond(request_->error_status(),
                  std::string(request_->error_reason()).c_str(), true);
        }
      }
      return;
  }
  if (attempt_.upstream != nullptr && state_ == State::kProxying &&
      OutputFull(attempt_.upstream->output())) {
    message_.request_blocked = true;
    bufferevent_disable(bev_.get(), EV_READ);
  }
}

net::HttpParser::HeadAction ClientConnection::OnHeadComplete(
    net::HttpParser& parser) {
  if (&parser == request_.get()) {
    message_.head_pending = true;
    // A request without a body completes at once (an upgrade stops itself);
    // one with a body waits until a backend can take it.
    return request_->framing() == net::Framing::kNone
               ? net::HttpParser::HeadAction::kContinue
               : net::HttpParser::HeadAction::kPause;
  }
  OnResponseHead(parser);
  return message_.head_request ? net::HttpParser::HeadAction::kSkipBody
                               : net::HttpParser::HeadAction::kContinue;
}

void ClientConnection::OnBody(net::HttpParser& parser, const char* data,
                              size_t length) {
  if (&parser == request_.get()) {
    if (exchange_.body_kept) {
      // Keep a small body so the request can go to another backend.
      if (exchange_.retry_body.size() + length <=
          cluster().config->retry_buffer_bytes) {
        exchange_.retry_body.append(data, length);
      } else {
        exchange_.body_kept = false;
        std::string().swap(exchange_.retry_body);
      }
    }
    if (attempt_.upstream == nullptr) return;
    evbuffer* out = attempt_.upstream->output();
    if (request_->framing() == net::Framing::kChunked) {
      std::string& header = loop_.scratch();
      net::AppendChunkHeader(length, &header);
      evbuffer_add(out, header.data(), header.size());
      evbuffer_add(out, data, length);
      evbuffer_add(out, "\r\n", 2);
    } else {
      evbuffer_add(out, data, length);
    }
    return;
  }
  message_.response_body_bytes += length;
  evbuffer* out = bufferevent_get_output(bev_.get());
  switch (message_.response_framing) {
    case net::Framing::kChunked: {
      std::string& header = loop_.scratch();
      net::AppendChunkHeader(length, &header);
      evbuffer_add(out, header.data(), header.size());
      evbuffer_add(out, data, length);
      evbuffer_add(out, "\r\n", 2);
      break;
    }
    case net::Framing::kContentLength:
    case net::Framing::kUntilClose:
      evbuffer_add(out, data, length);
      break;
    case net::Framing::kNone:
      break;
  }
}

void ClientConnection::OnMessageComplete(net::HttpParser& parser) {
  if (&parser == request_.get()) {
    if (attempt_.upstream != nullptr &&
        request_->framing() == net::Framing::kChunked) {
      std::string& tail = loop_.scratch();
      net::AppendLastChunk(request_->trailers(), &tail);
      evbuffer_add(attempt_.upstream->output(), tail.data(), tail.size());
    }
    return;
  }
  int status = response_->status_code();
  if (status >= 100 && status < 200 && status != 101) return;  // interim
  if (message_.response_framing == net::Framing::kChunked) {
    std::string& tail = loop_.scratch();
    net::AppendLastChunk(response_->trailers(), &tail);
    evbuffer_add(bufferevent_get_output(bev_.get()), tail.data(), tail.size());
  }
  message_.response_complete = true;
}

void ClientConnection::OnRequestHead() {
  // A reload since the last request: this one follows the new config.
  ListenerStats* old_stats = listener_->stats;
  loop_.Rebind(this, &generation_, &listener_);
  if (listener_->stats != old_stats) {
    old_stats->connections_open.Add(-1);
    listener_->stats->connections_open.Add(1);
  }
  // A reload's limits apply from this request on (its body, its trailers,
  // and the next head).
  request_->set_max_head_bytes(listener_->config->max_header_size_bytes);
  request_->set_max_body_bytes(listener_->config->max_body_size_bytes);
  exchange_.request_start = Clock::now();
  message_.client_keep_alive = request_->keep_alive();
  message_.head_request = request_->method() == HTTP_HEAD;
  event_del(&timer_);
  if (net::HasUnsupportedExpectation(*request_)) {
    Respond(417, "only 100-continue is supported", true);
    return;
  }
  message_.expect_continue = net::ExpectsContinue(*request_);
  message_.upgrade = net::WantsUpgrade(*request_);
  if (close_when_idle_ || loop_.shutting_down())
    message_.client_keep_alive = false;
  ++cluster().active_requests;
  exchange_.counted_request = true;
  StartAttempt();
}

void ClientConnection::ReleaseClusterCounts() {
  ClusterRuntime& runtime = cluster();
  if (exchange_.counted_request) --runtime.active_requests;
  if (exchange_.counted_retry) --runtime.active_retries;
  exchange_.counted_request = exchange_.counted_retry = false;
}

std::optional<uint64_t> ClientConnection::RequestHash() const {
  const conf::HashKey& key = cluster().config->hash_key;
  std::string_view value;
  switch (key.kind) {
    case conf::HashKey::Kind::kNone:
      return std::nullopt;
    case conf::HashKey::Kind::kHeader: {
      auto header = request_->headers().Find(key.name);
      if (!header) return std::nullopt;
      value = *header;
      break;
    }
    case conf::HashKey::Kind::kCookie: {
      // Cookie: a=1; b=2 (RFC 6265 §4.2); several Cookie fields may exist.
      const net::HeaderList& headers = request_->headers();
      for (size_t i = 0; i < headers.size() && value.empty(); ++i) {
        if (!net::EqualsIgnoreCase(headers.name(i), "cookie")) continue;
        std::string_view rest = headers.value(i);
        while (!rest.empty()) {
          size_t semi = rest.find(';');
          std::string_view pair = rest.substr(0, semi);
          while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
          size_t eq = pair.find('=');
          if (eq != std::string_view::npos && pair.substr(0, eq) == key.name) {
            value = pair.substr(eq + 1);
            break;
          }
          if (semi == std::string_view::npos) break;
          rest.remove_prefix(semi + 1);
        }
      }
      if (value.empty()) return std::nullopt;
      break;
    }
    case conf::HashKey::Kind::kSourceIp:
      value = std::string_view(client_address_).substr(0, client_ip_length_);
      break;
    case conf::HashKey::Kind::kPath: {
      value = request_->target();
      size_t query = value.find('?');
      if (query != std::string_view::npos) value = value.substr(0, query);
      break;
    }
  }
  return algorithms::Hash64(value);
}

void ClientConnection::EnterQueue(ClusterRuntime& runtime,
                                  Clock::duration timeout) {
  state_ = State::kQueued;
  exchange_.queued = true;
  runtime.queue.push_back(this);
  runtime.stats->queued.Add(1);
  exchange_.queued_since = Clock::now();
  loop_.WatchQueue();
  ArmTimer(timeout);
}

void ClientConnection::RequeueAtFront(ClusterRuntime& runtime) {
  state_ = State::kQueued;
  exchange_.queued = true;
  runtime.queue.push_front(this);
}

void ClientConnection::StartAttempt(bool retry, int status, const char* detail,
                                    bool other) {
  ClusterRuntime& runtime = cluster();
  algorithms::PickInput input;
  input.inflight = runtime.inflight;
  input.latency_us = runtime.latency_us;
  input.tried = &exchange_.tried;
  if (runtime.config->hash_key.kind != conf::HashKey::Kind::kNone)
    input.hash = RequestHash();
  constexpr size_t kNone = SIZE_MAX;
  size_t pick = runtime.picker->Pick(input).value_or(kNone);
  if (pick != kNone && retry && other && exchange_.tried.Contains(pick))
    pick = kNone;
  if (pick == kNone && retry && runtime.has_fallback) {
    // Every eligible backend failed this request (typically: refused, before
    // health/ has counted to `fall`): a healthy backup in reserve is better
    // than an error.
    pick = runtime.fallback->Pick(input).value_or(kNone);
    if (pick != kNone && exchange_.tried.Contains(pick)) pick = kNone;
  }
  if (pick != kNone && runtime.has_limits &&
      !TryAcquire(runtime.backends[pick])) {
    // Full: look for another backend below its limit, treating the full ones
    // as tried for this pick only.
    algorithms::TriedSet skip = exchange_.tried;
    size_t full = pick;
    pick = kNone;
    for (size_t attempt = 0; attempt < runtime.backends.size(); ++attempt) {
      skip.Insert(full);
      input.tried = &skip;
      size_t candidate = runtime.picker->Pick(input).value_or(kNone);
      if (candidate == kNone || skip.Contains(candidate)) break;
      if (TryAcquire(runtime.backends[candidate])) {
        pick = candidate;
        break;
      }
      full = candidate;
    }
    if (pick == kNone) {
      exchange_.flags |= kFlagOverflow;
      if (exchange_.from_queue) {
        // Still full: back to the head of the line, the timeout unchanged.
        RequeueAtFront(runtime);
        return;
      }
      const uint32_t queue_size = runtime.config->queue_size;
      if (queue_size > 0 && runtime.queue.size() < queue_size && !retry) {
        EnterQueue(runtime, runtime.config->queue_timeout);
        return;
      }
      RespondBusy("every backend is at its request limit");
      return;
    }
  }
  // A cold backup is starting for want of backends, or every eligible backend
  // failed a retryable request and a cold backup stands by: wait (within
  // request_timeout) for health/ to bring it in rather than failing requests
  // it will serve. (A retry got here only if DecideRetry allowed it.)
  const bool standby_may_come =
      runtime.activating || (retry && runtime.cold_standby);
  if (pick == kNone && standby_may_come) {
    if (exchange_.from_queue) {
      RequeueAtFront(runtime);
      return;
    }
    if (runtime.queue.size() <
        std::max<size_t>(runtime.config->queue_size, 1024)) {
      if (retry) {
        // Resumed as the retry it is (RetryFromQueue): the backends it
        // already failed on stay excluded, and this answer stands if none
        // comes.
        exchange_.pending_status = status;
        if (detail != exchange_.detail.c_str()) exchange_.detail = detail;
      }
      exchange_.waiting_activation = true;
      EnterQueue(runtime, exchange_.request_start +
                              runtime.config->request_timeout - Clock::now());
      return;
    }
  }
  if (pick == kNone) {
    if (retry) {
      exchange_.retry_note = "no other backend";
      Respond(status, detail, !message_.request_complete);
      return;
    }
    exchange_.flags |= kFlagNoBackend;
    runtime.stats->no_backend.Add();
    Respond(503, "no eligible backend", !message_.request_complete);
    return;
  }
  attempt_.backend = pick;
  attempt_.has_backend = true;
  BackendRuntime& backend = runtime.backends[attempt_.backend];
  exchange_.last_backend = backend.config;
  exchange_.last_backend_index = pick;
  if (++exchange_.tries > 1) {
    exchange_.flags |= kFlagRetried;
    runtime.stats->retries[static_cast<size_t>(exchange_.last_failure)].Add();
    if (!exchange_.counted_retry) {
      exchange_.counted_retry = true;
      ++runtime.active_retries;
    }
  }
  ++runtime.inflight[attempt_.backend];
  backend.stats->inflight.Add(1);
  attempt_.start = Clock::now();
  LinkAwaiting();
  if (!response_)
    response_ = loop_.TakeParser(net::HttpParser::Type::kResponse, this);
  response_->Reset();
  attempt_.interim_responses = 0;
  attempt_.response_bytes_seen = false;
  attempt_.upstream_eof = false;

  std::string preamble;
  if (runtime.config->send_proxy != 0)
    preamble = ProxyHeaderOut(runtime.config->send_proxy);
  attempt_.upstream = backend.pool->TakeIdle(this, preamble);
  if (attempt_.upstream != nullptr) {
    state_ = State::kProxying;
    SendRequestHead();
    return;
  }
  // Connect() owns the reservation from here, on failure too.
  attempt_.upstream = backend.pool->Connect(this, attempt_.connection_reserved,
                                            std::move(preamble));
  attempt_.connection_reserved = false;
  if (attempt_.upstream == nullptr) {
    FailAttempt(Failure::kConnect, 502,
                "cannot open a connection to the backend");
    return;
  }
  state_ = State::kConnecting;
  auto deadline = attempt_.start + runtime.config->connect_timeout;
  ArmTimer(deadline - Clock::now());
}

void ClientConnection::LinkAwaiting() {
  BackendRuntime& backend = cluster().backends[attempt_.backend];
  await_prev_ = backend.awaiting_last;
  await_next_ = nullptr;
  if (await_prev_ != nullptr) {
    await_prev_->await_next_ = this;
  } else {
    backend.awaiting_first = this;
  }
  backend.awaiting_last = this;
  awaiting_ = true;
  loop_.WatchHangs();
}

void ClientConnection::UnlinkAwaiting() {
  if (!awaiting_) return;
  BackendRuntime& backend = cluster().backends[attempt_.backend];
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

std::optional<Clock::time_point> ClientConnection::AwaitingSince() const {
  if (!awaiting_ || destroy_pending_ || !message_.request_complete ||
      message_.response_started) {
    return std::nullopt;
  }
  return std::max(attempt_.start, message_.request_done);
}

bool ClientConnection::RetryOffHungBackend() {
  if (state_ != State::kProxying || !AwaitingSince() ||
      !RetryAllowedNow(Failure::kHung)) {
    return false;
  }
  Enter(this,
        [this] { FailAttempt(Failure::kHung, 504, "backend suspected hung"); });
  return true;
}

const std::string& ClientConnection::ProxyHeaderOut(int version) {
  if (proxy_header_version_ == version) return proxy_header_out_;
  // The client as tandem knows it (a PROXY header in front included), and
  // the address it connected to.
  sockaddr_storage source{};
  const std::string ip(client_address_.substr(0, client_ip_length_));
  uint16_t port = 0;
  if (client_ip_length_ + 1 < client_address_.size()) {
    port = static_cast<uint16_t>(std::strtoul(
        client_address_.c_str() + client_ip_length_ + 1, nullptr, 10));
  }
  auto* in = reinterpret_cast<sockaddr_in*>(&source);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&source);
  if (inet_pton(AF_INET, ip.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
  } else if (inet_pton(AF_INET6, ip.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
  }
  sockaddr_storage destination{};
  socklen_t length = sizeof(destination);
  if (getsockname(bufferevent_getfd(bev_.get()),
                  reinterpret_cast<sockaddr*>(&destination), &length) != 0) {
    destination.ss_family = AF_UNSPEC;
  }
  proxy_header_out_ =
      net::BuildProxyHeader(version, reinterpret_cast<sockaddr*>(&source),
                            reinterpret_cast<sockaddr*>(&destination));
  proxy_header_version_ = version;
  return proxy_header_out_;
}

void ClientConnection::SendRequestHead() {
  net::RequestForwarding forwarding;
  forwarding.client_ip =
      std::string_view(client_address_).substr(0, client_ip_length_);
  forwarding.client_tls = listener_->config->tls();
  forwarding.upgrade = message_.upgrade;
  forwarding.default_host =
      cluster().backends[attempt_.backend].config->address.text;
  std::string& head = loop_.scratch();
  net::AppendRequestHead(*request_, forwarding, &head);
  attempt_.upstream->StartRequest();
  evbuffer_add(attempt_.upstream->output(), head.data(), head.size());
  bufferevent_setwatermark(attempt_.upstream->bev(), EV_WRITE, kOutputLowWater,
                           0);
  bufferevent_setwatermark(attempt_.upstream->bev(), EV_READ, 0, 0);
  bufferevent_set_max_single_read(attempt_.upstream->bev(), kMaxSingleRead);
  if (bufferevent_enable(attempt_.upstream->bev(), EV_READ | EV_WRITE) != 0) {
    FailAttempt(Failure::kConnect, 502, "cannot use the backend connection");
    return;
  }
  if (message_.expect_continue && !message_.continue_sent) {
    message_.continue_sent = true;
    evbuffer_add(bufferevent_get_output(bev_.get()), kContinue,
                 sizeof(kContinue) - 1);
  }
  if (exchange_.tries > 1 && request_->body_bytes() > 0) ReplayBody();
  if (message_.request_complete) {
    ArmTimer(ResponseDeadline() - Clock::now());
    return;
  }
  if (message_.paused_at_head) {
    message_.paused_at_head = false;
    request_->Resume();
  }
  ArmTimer(cluster().config->idle_timeout);
  bufferevent_enable(bev_.get(), EV_READ);
  ParseRequest();
}

void ClientConnection::ReplayBody() {
  evbuffer* out = attempt_.upstream->output();
  if (request_->framing() == net::Framing::kChunked) {
    std::string& framed = loop_.scratch();
    if (!exchange_.retry_body.empty())
      net::AppendChunkHeader(exchange_.retry_body.size(), &framed);
    evbuffer_add(out, framed.data(), framed.size());
    evbuffer_add(out, exchange_.retry_body.data(), exchange_.retry_body.size());
    if (!exchange_.retry_body.empty()) evbuffer_add(out, "\r\n", 2);
    if (message_.request_complete) {
      std::string& tail = loop_.scratch();
      net::AppendLastChunk(request_->trailers(), &tail);
      evbuffer_add(out, tail.data(), tail.size());
    }
  } else {
    evbuffer_add(out, exchange_.retry_body.data(), exchange_.retry_body.size());
  }
}

// ---- the response side ------------------------------------------------------

void ClientConnection::ParseResponse() {
  if (attempt_.upstream == nullptr) return;
  if (!attempt_.upstream->request_started() &&
      evbuffer_get_length(attempt_.upstream->input()) > 0) {
    // Bytes that came before any of the request left cannot answer it, and
    // the request never reached the backend: like a pooled connection found
    // closed, it goes on, on a fresh connection.
    FailAttempt(Failure::kPoolRace, 502,
                "backend sent a response before the request");
    return;
  }
  size_t consumed = 0;
  net::HttpParser::Result result =
      Feed(*response_, attempt_.upstream->input(), &consumed);
  if (consumed > 0) attempt_.response_bytes_seen = true;
  switch (result) {
    case net::HttpParser::Result::kNeedMore:
      if (OutputFull(bufferevent_get_output(bev_.get()))) {
        message_.response_blocked = true;
        bufferevent_disable(attempt_.upstream->bev(), EV_READ);
      }
      return;
    case net::HttpParser::Result::kComplete:
    case net::HttpParser::Result::kPausedHead:
      OnResponseComplete();
      return;
    case net::HttpParser::Result::kUpgrade:
      if (response_->status_code() == 101 && message_.upgrade) {
        EnterTunnel();
      } else {
        OnResponseComplete();
      }
      return;
    case net::HttpParser::Result::kError:
      if (attempt_.retry_status != 0) {
        int status = attempt_.retry_status;
        attempt_.retry_status = 0;
        exchange_.flags |= kFlagRetried5xx;
        FailAttempt(Failure::kStatus, status, "backend answered with an error");
      } else if (!message_.response_started) {
        FailAttempt(Failure::kInvalid, 502, "invalid response from backend");
      } else {
        ReportOutcome(false, Failure::kInvalid);
        AbortExchange(kFlagInvalidResponse);
      }
      return;
  }
}

void ClientConnection::OnResponseHead(net::HttpParser& parser) {
  int status = parser.status_code();
  if (awaiting_) {
    // The backend answers: its time to a first head feeds the cluster's p99
    // (and, for p2c-ewma, the backend's latency).
    if (std::optional<Clock::time_point> since = AwaitingSince()) {
      const Clock::time_point now = Clock::now();
      const auto sample =
          std::chrono::duration_cast<std::chrono::microseconds>(now - *since);
      ClusterRuntime& runtime = cluster();
      runtime.head_times.Add(sample);
      Clock::time_point& answered =
          runtime.backends[attempt_.backend].answered_sent_at;
      answered = std::max(answered, *since);
      if (runtime.config->picker.algorithm == algorithms::Algorithm::kP2cEwma) {
        BackendRuntime& backend = runtime.backends[attempt_.backend];
        backend.latency.Observe(sample, now);
        runtime.latency_us[attempt_.backend] =
            static_cast<uint32_t>(std::min(backend.latency.Value(now), 4.0e9));
      }
    }
    UnlinkAwaiting();
  }
  int client_minor = request_->http_minor();
  std::string& head = loop_.scratch();
  if (status >= 100 && status < 200 && status != 101) {
    if (++attempt_.interim_responses > kMaxInterimResponses) {
      parser.Reject(502, "too many interim responses");
      return;
    }
    // Interim responses: tandem sends its own 100 Continue; others (103
    // Early Hints) go to HTTP/1.1 clients.
    if (status != 100 && client_minor >= 1) {
      net::ResponsePlan plan;
      net::AppendResponseHead(parser, plan, client_minor, false, &head);
      evbuffer_add(bufferevent_get_output(bev_.get()), head.data(),
                   head.size());
    }
    return;
  }
  if (status == 101 && !message_.upgrade) {
    parser.Reject(502, "backend switched protocols unasked");
    return;
  }
  if (client_minor == 0 && !parser.transfer_codings().empty()) {
    // A coding such as gzip cannot be labelled for an HTTP/1.0 client (it
    // gets no Transfer-Encoding, RFC 9112 §6.1), and removing it would hand
    // over a body that is not what it claims: nginx, too, answers 502.
    parser.Reject(502, "a transfer coding an HTTP/1.0 client cannot receive");
    return;
  }
  if ((status == 502 || status == 503 || status == 504) &&
      // This answer is a failed try that reached a worker: count it.
      DecideRetry(RetryFacts(Failure::kStatus, exchange_.reached_failures + 1))
              .action != RetryAction::kGiveUp) {
    // Another backend may do better: drop this answer and try there. When
    // no retry is possible the backend's own answer is relayed instead.
    attempt_.retry_status = status;
    parser.Reject(status, "retrying");
    return;
  }
  ReportOutcome(status < 500, Failure::kStatus);
  // Closing for a shutdown: tell the client in this response.
  net::ResponsePlan plan =
      net::PlanResponse(parser, message_.head_request, client_minor,
                        message_.client_keep_alive && !client_eof_ &&
                            !close_when_idle_ && !loop_.shutting_down());
  if (!message_.request_complete)
    plan.close = true;  // the rest of the request can't follow
  if (plan.framing == net::Framing::kUntilClose) plan.close = true;
  message_.response_framing = plan.framing;
  message_.response_close = plan.close;
  message_.status = status;
  net::AppendResponseHead(parser, plan, client_minor, message_.head_request,
                          &head);
  evbuffer_add(bufferevent_get_output(bev_.get()), head.data(), head.size());
  message_.response_started = true;
  // From here on only silence ends the exchange.
  Touch();
  ArmTimer(cluster().config->idle_timeout);
}

void ClientConnection::OnResponseComplete() {
  if (!message_.request_complete) {
    // The backend answered before the request ended (an early 413, say): the
    // backend connection can't be reused and the client's is closed.
    EndAttempt(false);
    LogExchange();
    CloseAfterFlush();
    return;
  }
  FinishExchange();
}

void ClientConnection::EnterTunnel() {
  state_ = State::kTunnel;
  evbuffer* client_out = bufferevent_get_output(bev_.get());
  evbuffer* client_in = bufferevent_get_input(bev_.get());
  // Bytes that followed the 101 belong to the new protocol already.
  PumpTunnel(attempt_.upstream->input(), client_out, attempt_.upstream->bev(),
             bev_.get());
  PumpTunnel(client_in, attempt_.upstream->output(), bev_.get(),
             attempt_.upstream->bev());
  bufferevent_enable(bev_.get(), EV_READ);
  Touch();
  ArmTimer(cluster().config->idle_timeout);
}

void ClientConnection::PumpTunnel(evbuffer* from, evbuffer* to,
                                  bufferevent* from_bev,
                                  bufferevent* /*to_bev*/) {
  evbuffer_add_buffer(to, from);
  if (OutputFull(to)) bufferevent_disable(from_bev, EV_READ);
}

namespace {

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

void ClientConnection::TunnelFlushed() {
  // A side that ended passes its end on once everything it sent is out.
  bool failed = false;
  if (client_eof_ && !exchange_.tunnel_backend_shut &&
      evbuffer_get_length(attempt_.upstream->output()) == 0) {
    exchange_.tunnel_backend_shut = true;
    failed = !ShutdownWrite(attempt_.upstream->bev());
  }
  if (attempt_.upstream_eof && !exchange_.tunnel_client_shut &&
      evbuffer_get_length(bufferevent_get_output(bev_.get())) == 0) {
    exchange_.tunnel_client_shut = true;
    failed = failed || !ShutdownWrite(bev_.get());
  }
  if (failed ||
      (exchange_.tunnel_backend_shut && exchange_.tunnel_client_shut &&
       client_eof_ && attempt_.upstream_eof)) {
    // Both directions are done (or a socket is gone).
    EndAttempt(false);
    LogExchange();
    Destroy();
  }
}

// ---- ending an exchange
// ------------------------------------------------------

void ClientConnection::EndAttempt(bool reusable) {
  if (attempt_.upstream != nullptr) {
    BackendPool& pool = attempt_.upstream->pool();
    if (reusable && attempt_.has_backend) {
      // At a backend's max_connections, an idle connection kept here would
      // starve requests waiting on the other threads: close it instead.
      uint32_t limit =
          cluster().backends[attempt_.backend].config->max_connections;
      if (limit > 0 && pool.shared_connections() >= limit) reusable = false;
    }
    if (reusable) {
      pool.Release(attempt_.upstream, cluster().config->max_idle_connections);
    } else {
      pool.Close(attempt_.upstream);
    }
    attempt_.upstream = nullptr;
  }
  UnlinkAwaiting();
  if (attempt_.has_backend) {
    attempt_.has_backend = false;
    ClusterRuntime& runtime = cluster();
    --runtime.inflight[attempt_.backend];
    runtime.backends[attempt_.backend].stats->inflight.Add(-1);
    if (attempt_.holds_slot) {
      attempt_.holds_slot = false;
      runtime.backends[attempt_.backend].limits->inflight.fetch_sub(
          1, std::memory_order_relaxed);
    }
    // A slot or a connection is free: the oldest queued request may go.
    if (runtime.backends[attempt_.backend].limits && !runtime.queue.empty()) {
      loop_.DrainQueue(runtime);
    }
  }
}

bool ClientConnection::TryAcquire(BackendRuntime& backend) {
  if (!backend.limits) return true;
  const conf::Backend& config = *backend.config;
  // Takes one unit of `counter` below `limit`, atomically across threads.
  auto take = [](std::atomic<uint32_t>& counter, uint32_t limit) {
    uint32_t current = counter.load(std::memory_order_relaxed);
    do {
      if (current >= limit) return false;
    } while (!counter.compare_exchange_weak(current, current + 1,
                                            std::memory_order_relaxed));
    return true;
  };
  if (config.max_inflight > 0 &&
      !take(backend.limits->inflight, config.max_inflight)) {
    return false;
  }
  attempt_.holds_slot = config.max_inflight > 0;
  // Without an idle connection a new one is needed: reserve it now, so two
  // threads cannot both open the last one.
  if (config.max_connections > 0 && backend.pool->idle_count() == 0) {
    if (!take(backend.limits->connections, config.max_connections)) {
      if (attempt_.holds_slot)
        backend.limits->inflight.fetch_sub(1, std::memory_order_relaxed);
      attempt_.holds_slot = false;
      return false;
    }
    attempt_.connection_reserved = true;
  }
  return true;
}

void ClientConnection::ResumeRetry() {
  Enter(this, [this] {
    event_del(&timer_);
    state_ = State::kConnecting;
    StartAttempt(true, exchange_.pending_status, exchange_.detail.c_str(),
                 true);
  });
}

void ClientConnection::Dequeue() {
  if (state_ == State::kRetryWait) {
    auto& waiters = cluster().retry_waiters;
    auto it = std::find(waiters.begin(), waiters.end(), this);
    if (it != waiters.end()) waiters.erase(it);
  }
  if (!exchange_.queued) return;
  exchange_.queued = false;
  cluster().stats->queued.Add(-1);
  cluster().stats->queue_wait.Observe(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(
          Clock::now() - exchange_.queued_since)
          .count()));
  auto& queue = cluster().queue;
  auto it = std::find(queue.begin(), queue.end(), this);
  if (it != queue.end()) queue.erase(it);
}

bool ClientConnection::RetryFromQueue() {
  bool left = false;
  Enter(this, [this, &left] {
    // Leaves the queue for this try; StartAttempt() puts it back at the head
    // when every backend is still full.
    auto& queue = cluster().queue;
    queue.erase(std::find(queue.begin(), queue.end(), this));
    exchange_.queued = false;
    exchange_.from_queue = true;
    state_ = State::kConnecting;
    if (exchange_.tries > 0) {
      StartAttempt(true, exchange_.pending_status, exchange_.detail.c_str());
    } else {
      StartAttempt();
    }
    exchange_.from_queue = false;
    left = !exchange_.queued;
    if (left) {
      exchange_.queued = true;  // account for the wait as Dequeue() does
      Dequeue();
    }
  });
  return left;
}

void ClientConnection::RespondBusy(const char* detail) {
  cluster().stats->no_backend.Add();
  Respond(503, detail, false, "Retry-After: 1\r\n");
}

void ClientConnection::ReportOutcome(bool success, Failure failure) {
  if (!attempt_.has_backend) return;
  loop_.ReportOutcome(cluster(), attempt_.backend, success,
                      Traits(failure).health, failure == Failure::kRefused);
}

Clock::time_point ClientConnection::ResponseDeadline() const {
  // The request is out: the sooner of request_timeout and this try's
  // try_timeout.
  return std::min(
      message_.request_done + cluster().config->request_timeout,
      std::max(attempt_.start, message_.request_done) + TryTimeout());
}

Clock::duration ClientConnection::TryTimeout() const {
  const ClusterRuntime& runtime = cluster();
  const conf::Cluster& config = *runtime.config;
  if (!config.try_timeout_auto) return config.try_timeout;
  // "auto": 3 x the cluster's recent p99 on this loop, at least a second.
  const std::optional<std::chrono::microseconds> p99 = runtime.head_times.p99();
  if (!p99) return config.request_timeout;
  return std::clamp<Clock::duration>(kAutoTryFactor * *p99, kAutoTryFloor,
                                     config.request_timeout);
}

Clock::time_point ClientConnection::RequestDeadline() const {
  return std::max(message_.request_done, exchange_.request_start) +
         cluster().config->request_timeout;
}

bool ClientConnection::RetryAllowedNow(Failure failure) const {
  const bool reached = Traits(failure).reached_worker;
  return DecideRetry(RetryFacts(failure,
                                exchange_.reached_failures + (reached ? 1 : 0)))
             .action == RetryAction::kRetry;
}

RetryInput ClientConnection::RetryFacts(Failure failure,
                                        uint32_t reached_failures) const {
  const ClusterRuntime& runtime = cluster();
  RetryInput input;
  input.failure = failure;
  input.response_started = message_.response_started;
  input.deadline_passed = Clock::now() >= RequestDeadline();
  input.idempotent = net::IsIdempotent(*request_);
  input.reached_failures = reached_failures;
  input.retries = runtime.config->retries;
  input.has_body = request_->body_bytes() > 0;
  input.body_replayable = exchange_.body_kept;
  // Another eligible backend this request has not tried yet? (The set may
  // have changed since the last try: compare backend by backend.)
  input.other_backend = runtime.has_fallback || runtime.cold_standby;
  for (size_t b = 0; b < runtime.backends.size() && !input.other_backend; ++b) {
    input.other_backend = runtime.backends[b].eligible &&
                          !exchange_.tried.Contains(b) &&
                          !(attempt_.has_backend && b == attempt_.backend);
  }
  input.budget_left = exchange_.counted_retry || runtime.RetryBudgetLeft();
  return input;
}

void ClientConnection::FailAttempt(Failure failure, int status,
                                   const char* detail) {
  const FailureTraits& traits = Traits(failure);
  exchange_.flags |= traits.flag;
  if (attempt_.has_backend) {
    if (!exchange_.trail.empty()) exchange_.trail.push_back(',');
    exchange_.trail.append(
        cluster().backends[attempt_.backend].config->address.text);
    exchange_.trail.push_back(':');
    exchange_.trail.append(traits.trail_code);
    BackendStats* stats = cluster().backends[attempt_.backend].stats;
    if (failure == Failure::kConnect || failure == Failure::kRefused) {
      stats->connect_failures.Add();
    } else if (failure == Failure::kReset || failure == Failure::kPoolRace) {
      stats->upstream_resets.Add();
    } else if (failure == Failure::kTimeout) {
      stats->upstream_timeouts.Add();
    }
    // A pooled connection closing under us says nothing about the backend:
    // it is not reported, and the first time not marked tried either, so
    // the retry goes to the same backend on a fresh connection and a keyed
    // request keeps its home. A second race in one exchange does mark it,
    // so a backend that keeps doing this cannot hold the request in a loop.
    if (failure != Failure::kPoolRace) ReportOutcome(false, failure);
    if (failure != Failure::kPoolRace || exchange_.pool_race_seen)
      exchange_.tried.Insert(attempt_.backend);
  }
  if (failure == Failure::kPoolRace) exchange_.pool_race_seen = true;
  exchange_.last_failure = failure;
  if (traits.reached_worker) ++exchange_.reached_failures;
  RetryDecision decision =
      DecideRetry(RetryFacts(failure, exchange_.reached_failures));
  ClusterRuntime& runtime = cluster();
  if (decision.action == RetryAction::kWaitForBudget) {
    // Too many retries in flight: wait for one to finish, within
    // request_timeout, so a burst of timeouts on one frozen worker is not
    // turned into errors while the cluster is not hammered either.
    EndAttempt(false);
    auto deadline = RequestDeadline();
    if (Clock::now() < deadline) {
      exchange_.pending_status = status;
      if (detail != exchange_.detail.c_str()) exchange_.detail = detail;
      state_ = State::kRetryWait;
      runtime.retry_waiters.push_back(this);
      loop_.WatchQueue();
      ArmTimer(deadline - Clock::now());
      return;
    }
    decision = {RetryAction::kGiveUp, "retry budget spent"};
  }
  bool same_backend_ok = failure == Failure::kPoolRace;
  if (failure == Failure::kPoolRace && attempt_.upstream != nullptr) {
    // The backend closed an idle connection under us; its other idle ones
    // (a restart, a crash) are likely gone too: don't try them one by one.
    attempt_.upstream->pool().CloseIdle(
        std::chrono::steady_clock::duration::zero());
  }
  EndAttempt(false);
  if (decision.action == RetryAction::kRetry) {
    StartAttempt(true, status, detail, !same_backend_ok);
    return;
  }
  exchange_.retry_note = decision.reason;
  Respond(status, detail, !message_.request_complete);
}

void ClientConnection::Respond(int status, const char* detail, bool close,
                               std::string_view extra_fields) {
  if (message_.response_started) {
    AbortExchange(0);
    return;
  }
  EndAttempt(false);
  if (!message_.request_complete) close = true;
  if (!message_.client_keep_alive || client_eof_) close = true;
  message_.status = status;
  std::string& out = loop_.scratch();
  net::AppendSimpleResponse(status, detail, close, request_->http_minor(),
                            extra_fields, &out);
  evbuffer_add(bufferevent_get_output(bev_.get()), out.data(), out.size());
  message_.response_body_bytes = out.size() - (out.find("\r\n\r\n") + 4);
  message_.response_started = true;
  message_.response_complete = true;
  message_.response_close = close;
  if (close) {
    LogExchange();
    CloseAfterFlush();
    return;
  }
  FinishExchange();
}

void ClientConnection::FinishExchange() {
  bool reusable = attempt_.upstream != nullptr && !attempt_.upstream_eof &&
                  message_.response_complete && message_.request_complete &&
                  response_->keep_alive() &&
                  response_->framing() != net::Framing::kUntilClose &&
                  !message_.request_upgrade_paused;
  EndAttempt(reusable);
  LogExchange();
  if (message_.response_close || !message_.client_keep_alive || client_eof_ ||
      close_when_idle_ || loop_.shutting_down()) {
    CloseAfterFlush();
    return;
  }
  bool upgrade_paused = message_.request_upgrade_paused;
  ResetExchange();
  // What one large request made the parser hold goes back to the allocator.
  request_->ShrinkIfLarge(kMaxIdleParserBytes);
  state_ = State::kIdle;
  if (upgrade_paused) {
    request_->ResumeAfterUpgrade();
  } else {
    request_->Resume();
  }
  ArmIdleTimer(Clock::now() + listener_->config->idle_timeout);
  bufferevent_enable(bev_.get(), EV_READ);
  ParseRequest();  // a pipelined request may be waiting
}

void ClientConnection::ResetExchange() {
  // The response parser is needed only during an exchange: an idle
  // keep-alive connection gives it back to the loop.
  if (response_) loop_.ReturnParser(std::move(response_));
  // The retry body's buffer is kept when it is of the usual size.
  std::string retry_body = std::move(exchange_.retry_body);
  retry_body.clear();
  if (retry_body.capacity() > kMaxIdleRetryBodyBytes)
    std::string().swap(retry_body);
  message_ = {};
  exchange_ = {};
  attempt_ = {};
  exchange_.retry_body = std::move(retry_body);
  first_request_ = false;
  header_timer_armed_ = false;
}

void ClientConnection::AbortExchange(uint32_t flag) {
  exchange_.flags |= flag;
  EndAttempt(false);
  if (state_ != State::kIdle || request_->message_started()) LogExchange();
  if (message_.response_started && !(flag & kFlagClientReset)) {
    // The backend cut the response: deliver what arrived, then end the
    // connection so the client cannot take it as complete. A close-delimited
    // body would look complete after a clean FIN, so that one is reset.
    reset_on_close_ = message_.response_framing == net::Framing::kUntilClose;
    CloseAfterFlush();
    return;
  }
  Destroy();
}

void ClientConnection::CloseAfterFlush() {
  state_ = State::kClosing;
  bufferevent_setwatermark(bev_.get(), EV_WRITE, 0, 0);
  if (evbuffer_get_length(bufferevent_get_output(bev_.get())) == 0) {
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
  evbuffer* input = bufferevent_get_input(bev_.get());
  evbuffer_drain(input, evbuffer_get_length(input));
  bufferevent_enable(bev_.get(), EV_READ);
  ArmTimer(kLingerTime);
}

void ClientConnection::CloseWhenIdle() {
  close_when_idle_ = true;
  Enter(this, [this] {
    if (state_ == State::kIdle && !request_->message_started()) Destroy();
  });
}

void ClientConnection::Abort() {
  exchange_.flags |= kFlagClientReset;
  if (state_ != State::kIdle && state_ != State::kClosing) LogExchange();
  delete this;
}

uint64_t ClientConnection::BufferedBytes() const {
  uint64_t bytes = evbuffer_get_length(bufferevent_get_input(bev_.get())) +
                   evbuffer_get_length(bufferevent_get_output(bev_.get())) +
                   exchange_.retry_body.capacity() + request_->HeldBytes();
  if (attempt_.upstream != nullptr) {
    bytes += evbuffer_get_length(attempt_.upstream->input()) +
             evbuffer_get_length(attempt_.upstream->output());
  }
  if (response_) bytes += response_->HeldBytes();
  return bytes;
}

// ---- timers ----------------------------------------------------------------

void ClientConnection::ArmIdleTimer(Clock::time_point deadline) {
  idle_deadline_ = deadline;
  Clock::duration left = deadline - Clock::now();
  // A plain connection wakes up early to be parked; a TLS one cannot be.
  ArmTimer(listener_->tls ? left : std::min<Clock::duration>(left, kParkAfter));
}

void ClientConnection::ArmTimer(std::chrono::steady_clock::duration delay) {
  timeval tv = ToTimeval(std::max(delay, Clock::duration::zero()));
  event_add(&timer_, &tv);
}

void ClientConnection::OnTimer() {
  Clock::time_point now = Clock::now();
  const conf::Cluster& config = *cluster().config;
  switch (state_) {
    case State::kIdle:
      if (!request_->message_started() && now < idle_deadline_) {
        // Woken early: quiet for kParkAfter, the connection is parked; if it
        // cannot be yet (output still going out), look again later.
        if (!Parkable() || !Park()) ArmIdleTimer(idle_deadline_);
        return;
      }
      if (request_->message_started() || first_request_) {
        if (request_->message_started()) {
          exchange_.flags |= kFlagClientTimeout;
          Respond(408, "request head not received in time", true);
        } else {
          Destroy();
        }
      } else {
        Destroy();  // keep-alive connection idle too long
      }
      return;
    case State::kRetryWait:
      Dequeue();
      exchange_.retry_note = "retry budget spent until request_timeout";
      Respond(exchange_.pending_status, exchange_.detail.c_str(),
              !message_.request_complete);
      return;
    case State::kQueued:
      Dequeue();
      cluster().stats->queue_timeouts.Add();
      if (exchange_.waiting_activation) {
        exchange_.flags |= kFlagNoBackend;
        Respond(503,
                "no eligible backend (a cold backup did not come up in time)",
                !message_.request_complete);
      } else {
        RespondBusy("no backend slot freed up within queue_timeout");
      }
      return;
    case State::kConnecting:
      exchange_.flags |= kFlagUpstreamTimeout;
      FailAttempt(Failure::kConnect, 502, "connection to backend timed out");
      return;
    case State::kProxying: {
      if (!message_.request_complete || message_.response_started) {
        auto idle_for = now - last_activity_;
        if (idle_for < config.idle_timeout) {
          ArmTimer(config.idle_timeout - idle_for);
          return;
        }
        if (!message_.response_started) {
          exchange_.flags |= kFlagClientTimeout;
          Respond(408, "request body not received in time", true);
        } else {
          AbortExchange(kFlagUpstreamTimeout);
        }
        return;
      }
      auto request_deadline = RequestDeadline();
      if (now >= request_deadline) {
        // The whole budget is spent: DecideRetry allows no retry.
        FailAttempt(Failure::kTimeout, 504,
                    "backend did not answer within request_timeout");
        return;
      }
      auto try_deadline =
          std::max(attempt_.start, message_.request_done) + TryTimeout();
      if (now >= try_deadline) {
        // "auto" cuts only a try that may be retried: a cut could only turn
        // the others into errors, so they wait for request_timeout.
        if (config.try_timeout_auto && !RetryAllowedNow(Failure::kTimeout)) {
          ArmTimer(request_deadline - now);
          return;
        }
        FailAttempt(Failure::kTimeout, 504,
                    "backend did not answer within try_timeout");
        return;
      }
      ArmTimer(std::min(request_deadline, try_deadline) - now);
      return;
    }
    case State::kTunnel: {
      auto idle_for = now - last_activity_;
      if (idle_for < config.idle_timeout) {
        ArmTimer(config.idle_timeout - idle_for);
        return;
      }
      EndAttempt(false);
      LogExchange();
      Destroy();
      return;
    }
    case State::kClosing:
      Destroy();
      return;
  }
}

// ---- accounting ------------------------------------------------------------

bool ClientConnection::OutputFull(evbuffer* buffer) const {
  return evbuffer_get_length(buffer) >= kOutputHighWater;
}

std::string_view ClientConnection::backend_address() const {
  return exchange_.last_backend != nullptr
             ? std::string_view(exchange_.last_backend->address.text)
             : std::string_view();
}

std::string_view ClientConnection::FlagsText() {
  flags_text_.clear();
  for (size_t bit = 0; bit < kExchangeFlagNames.size(); ++bit) {
    if ((exchange_.flags & (1u << bit)) == 0) continue;
    if (!flags_text_.empty()) flags_text_.push_back(',');
    flags_text_.append(kExchangeFlagNames[bit]);
  }
  return flags_text_;
}

void ClientConnection::LogExchange() {
  ReleaseClusterCounts();
  if (exchange_.logged) return;
  exchange_.logged = true;
  auto now = Clock::now();
  if (exchange_.request_start.time_since_epoch().count() == 0)
    exchange_.request_start = now;
  uint64_t micros = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(
          now - exchange_.request_start)
          .count());
  ClusterRuntime& runtime = cluster();
  listener_->stats->requests[StatusClass(message_.status)].Add();
  listener_->stats->bytes_sent.Add(message_.response_body_bytes);
  runtime.stats->request_duration.Observe(micros);
  if (exchange_.last_backend != nullptr) {
    runtime.backends[exchange_.last_backend_index]
        .stats->responses[StatusClass(message_.status)]
        .Add();
  }
  AccessLog& log = loop_.access_log();
  if (!log.enabled()) return;
  AccessLogEntry entry;
  entry.client = client_address_;
  entry.method =
      request_->in_head() ? std::string_view("-") : request_->method_name();
  entry.target =
      request_->in_head() ? std::string_view("-") : request_->target();
  entry.http_minor = request_->http_minor();
  entry.status = message_.status;
  entry.bytes_sent = message_.response_body_bytes;
  entry.bytes_received = request_->body_bytes();
  entry.duration_micros = micros;
  entry.listener = listener_->config->name;
  entry.cluster = runtime.config->name;
  entry.backend = backend_address();
  entry.tries = exchange_.tries;
  entry.flags = FlagsText();
  entry.note = exchange_.retry_note;
  entry.trail = exchange_.trail;
  entry.proxy = proxy_tlvs_.get();
  log.Write(entry);
}

}  // namespace tandem::dispatcher
