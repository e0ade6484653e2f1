// Connections to one backend from one loop thread; see upstream.h.
#include "dispatcher/proxy/upstream.h"

#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "dispatcher/proxy/h2_upstream.h"
#include "dispatcher/proxy/watermarks.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

void SetNoDelay(evutil_socket_t fd) {
  int one = 1;
  // Best effort: a failure only costs latency.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

UpstreamConnection::UpstreamConnection(BackendPool& pool,
                                       net::BufferEventPtr bev)
    : pool_(pool),
      bev_(std::move(bev)),
      input_(bufferevent_get_input(bev_.get())),
      output_(bufferevent_get_output(bev_.get())),
      ssl_(bufferevent_openssl_get_ssl(bev_.get())) {}

UpstreamConnection::UpstreamConnection(BackendPool& pool,
                                       H2UpstreamStream* stream)
    : pool_(pool),
      stream_input_(evbuffer_new()),
      stream_output_(evbuffer_new()),
      input_(stream_input_.get()),
      output_(stream_output_.get()),
      h2_stream_(stream) {}

UpstreamConnection::~UpstreamConnection() {
  // Freed inside one of its own callbacks, libevent keeps the bufferevent
  // until that callback returns and may still drain its output: the watch
  // must not outlive this object.
  if (output_watch_ != nullptr)
    evbuffer_remove_cb_entry(output(), output_watch_);
  pool_.write_behind_.Cancel(&write_slot_);
}

void UpstreamConnection::WriteSoon() {
  if (!connected_) return;
  if (h2_stream_ != nullptr) {
    H2Upstream::Wrote(h2_stream_);
  } else {
    pool_.write_behind_.Add(bev_.get(), &write_slot_);
  }
}

bool UpstreamConnection::Open() {
  if (h2_stream_ != nullptr) {
    H2Upstream::SetReading(h2_stream_, true);
    return true;
  }
  bufferevent* bev = bev_.get();
  bufferevent_setwatermark(bev, EV_WRITE, kOutputLowWater, 0);
  bufferevent_setwatermark(bev, EV_READ, 0, 0);
  bufferevent_set_max_single_read(bev, kMaxSingleRead);
  // A plain socket's writing is turned on only when a write leaves bytes
  // (net::WriteEvent::kOnDemand); a connect or a TLS session needs it on.
  const bool on_demand = connected_ && ssl() == nullptr;
  return bufferevent_enable(bev, on_demand ? EV_READ : EV_READ | EV_WRITE) == 0;
}

void UpstreamConnection::SetReading(bool on) {
  if (h2_stream_ != nullptr) {
    H2Upstream::SetReading(h2_stream_, on);
  } else if (on) {
    bufferevent_enable(bev_.get(), EV_READ);
  } else {
    bufferevent_disable(bev_.get(), EV_READ);
  }
}

std::optional<uint32_t> UpstreamConnection::window_before_heard() const {
  if (h2_stream_ == nullptr) return std::nullopt;
  return H2Upstream::WindowBeforeHeard(h2_stream_);
}

void UpstreamConnection::ReadCb(bufferevent*, void* arg) {
  auto* self = static_cast<UpstreamConnection*>(arg);
  if (self->user_ == nullptr) {
    self->pool_.OnIdleEvent(self);
    return;
  }
  self->user_->OnUpstreamRead(*self);
}

void UpstreamConnection::WriteCb(bufferevent*, void* arg) {
  auto* self = static_cast<UpstreamConnection*>(arg);
  if (self->user_ != nullptr) self->user_->OnUpstreamDrained(*self);
}

void UpstreamConnection::OutputCb(evbuffer*, const evbuffer_cb_info* info,
                                  void* arg) {
  if (info->n_deleted > 0)
    static_cast<UpstreamConnection*>(arg)->request_started_ = true;
}

bool UpstreamConnection::HasUnreadInput() const {
  // Bytes still in the kernel are caught when they arrive before the
  // request's first byte has left (ClientConnection::ParseResponse): no
  // system call per request here.
  return evbuffer_get_length(input()) > 0;
}

void UpstreamConnection::EventCb(bufferevent*, short events, void* arg) {
  auto* self = static_cast<UpstreamConnection*>(arg);
  if (!self->connected_ && (events & BEV_EVENT_ERROR) &&
      self->connect_error_ == 0) {
    // libevent sets the socket error before reporting a failed connect.
    self->connect_error_ = EVUTIL_SOCKET_ERROR();
  }
  if (self->user_ == nullptr) {
    self->pool_.OnIdleEvent(self);
    return;
  }
  if (events & BEV_EVENT_CONNECTED) {
    self->connected_ = true;
    SetNoDelay(bufferevent_getfd(self->bev_.get()));
    net::ReadDirectly(self->bev_.get());
    if (bufferevent_enable(self->bev_.get(), EV_READ | EV_WRITE) != 0) {
      self->user_->OnUpstreamClosed(*self, BEV_EVENT_ERROR);
      return;
    }
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                      net::TurnClock::Now() - self->since_)
                      .count();
    self->pool_.stats_->connect_micros.Add(static_cast<uint64_t>(micros));
    self->user_->OnUpstreamConnected(*self);
    return;
  }
  self->user_->OnUpstreamClosed(*self, events);
}

BackendPool::BackendPool(event_base* base, net::WriteBehind& write_behind,
                         const conf::SocketAddress& address,
                         BackendStats* stats)
    : base_(base),
      write_behind_(write_behind),
      address_(address),
      stats_(stats) {}

BackendPool::~BackendPool() {
  h2_.reset();
  while (head_ != nullptr) CloseSocket(head_);
  if (session_ != nullptr) SSL_SESSION_free(session_);
}

void BackendPool::set_tls(std::shared_ptr<net::TlsClientContext> tls,
                          const std::string& settings) {
  tls_ = std::move(tls);
  if (settings == tls_settings_) return;
  tls_settings_ = settings;
  ++tls_generation_;
  CloseIdle(std::chrono::steady_clock::duration::zero());
  if (session_ != nullptr) SSL_SESSION_free(session_);
  session_ = nullptr;
}

void BackendPool::StoreSession(SSL_SESSION* session) {
  if (session_ != nullptr) SSL_SESSION_free(session_);
  session_ = session;
}

void BackendPool::set_http2(bool tls, uint64_t max_requests_per_connection) {
  if (h2_) {
    h2_->set_max_requests_per_connection(max_requests_per_connection);
  } else {
    h2_ = std::make_unique<H2Upstream>(*this, tls, max_requests_per_connection);
  }
}

size_t BackendPool::idle_count() const {
  return h2_ ? h2_->free_streams() : idle_.size();
}

UpstreamConnection* BackendPool::TakeIdle(UpstreamUser* user,
                                          std::string_view preamble) {
  if (h2_) return h2_->OpenStream(user, std::string(preamble), false);
  while (!idle_.empty()) {
    // Most recently used first; with PROXY headers, the newest of this
    // client's (the list is bounded by max_idle_connections).
    size_t at = idle_.size() - 1;
    while (idle_[at]->preamble_ != preamble) {
      if (at == 0) return nullptr;
      --at;
    }
    UpstreamConnection* connection = idle_[at];
    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(at));
    stats_->idle_connections.Add(-1);
    connection->idle_ = false;
    if (connection->HasUnreadInput()) {
      // Read in this loop turn, the bytes would pass for the answer to the
      // request about to be written.
      stats_->stray_closes.Add();
      Close(connection);
      continue;
    }
    connection->user_ = user;
    connection->reused_ = true;
    return connection;
  }
  return nullptr;
}

UpstreamConnection* BackendPool::Connect(UpstreamUser* user, bool counted,
                                         std::string preamble) {
  if (!h2_) return ConnectSocket(user, counted, std::move(preamble));
  // A stream's session counts its own connection when it makes one.
  if (counted && shared_connections_)
    shared_connections_->fetch_sub(1, std::memory_order_relaxed);
  return h2_->OpenStream(user, preamble, true);
}

UpstreamConnection* BackendPool::ConnectSocket(UpstreamUser* user, bool counted,
                                               std::string preamble) {
  // A connection that never came to be gives back the caller's reservation
  // (one that did gives it back in Close()).
  auto fail = [&]() -> UpstreamConnection* {
    if (counted && shared_connections_)
      shared_connections_->fetch_sub(1, std::memory_order_relaxed);
    return nullptr;
  };
  net::BufferEventPtr bev;
  if (tls_) {
    SSL* ssl = tls_->NewSsl(address_, session_, this);
    if (ssl == nullptr) return fail();
    bev.reset(bufferevent_openssl_socket_new(
        base_, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE));
    if (!bev) {
      SSL_free(ssl);
      return fail();
    }
    // A backend closing without close_notify ends a response like EOF does;
    // the HTTP framing says whether it was complete.
    bufferevent_openssl_set_allow_dirty_shutdown(bev.get(), 1);
  } else {
    bev.reset(bufferevent_socket_new(base_, -1, BEV_OPT_CLOSE_ON_FREE));
  }
  if (!bev) return fail();
  bufferevent_set_max_single_read(bev.get(), kMaxSingleRead);
  auto* connection = new UpstreamConnection(*this, std::move(bev));
  connection->tls_generation_ = tls_generation_;
  connection->preamble_ = std::move(preamble);
  connection->user_ = user;
  connection->since_ = net::TurnClock::Now();
  connection->next_ = head_;
  if (head_ != nullptr) head_->prev_ = connection;
  head_ = connection;
  ++count_;
  stats_->connections_open.Add(1);
  if (shared_connections_ && !counted)
    shared_connections_->fetch_add(1, std::memory_order_relaxed);
  stats_->connections_opened.Add();
  bufferevent* raw = connection->bev_.get();
  bufferevent_setcb(raw, UpstreamConnection::ReadCb,
                    UpstreamConnection::WriteCb, UpstreamConnection::EventCb,
                    connection);
  connection->output_watch_ = evbuffer_add_cb(
      bufferevent_get_output(raw), UpstreamConnection::OutputCb, connection);
  if (connection->output_watch_ == nullptr) {
    Close(connection);
    return nullptr;
  }
  // Refusals and unreachable networks are reported through EventCb (libevent
  // defers an immediate ECONNREFUSED), so the caller sees one path.
  if (bufferevent_socket_connect(raw, const_cast<sockaddr*>(address_.sa()),
                                 static_cast<int>(address_.length)) != 0) {
    Close(connection);
    return nullptr;
  }
  // The PROXY header before anything else: over TLS, before the ClientHello
  // (the handshake starts from the loop, after this); in plain TCP, ahead of
  // the request in the output buffer.
  if (!connection->preamble_.empty()) {
    const bool placed =
        tls_ ? net::SendBeforeHandshake(bufferevent_openssl_get_ssl(raw),
                                        connection->preamble_)
             : evbuffer_add(connection->output(), connection->preamble_.data(),
                            connection->preamble_.size()) == 0;
    if (!placed) {
      Close(connection);
      return nullptr;
    }
  }
  // A connect refused at once (loopback) is reported later without an errno;
  // libevent has then disabled the bufferevent, which tells it apart.
  if (bufferevent_get_enabled(raw) == 0)
    connection->connect_error_ = ECONNREFUSED;
  return connection;
}

void BackendPool::Release(UpstreamConnection* connection, uint32_t max_idle) {
  if (connection->h2_stream_ != nullptr) {
    h2_->CloseStream(connection);  // the stream is over
    return;
  }
  // Beyond max_idle only connections that stay idle are closed (CloseIdle),
  // so a burst of concurrency does not churn connections on every request.
  if (max_idle == 0 || !connection->connected_ ||
      connection->tls_generation_ != tls_generation_ ||
      evbuffer_get_length(connection->input()) > 0) {
    Close(connection);
    return;
  }
  connection->user_ = nullptr;
  connection->since_ = net::TurnClock::Now();
  // Reading stays on while idle so a close by the backend is noticed at once
  // (the callbacks route to OnIdleEvent while user_ is null).
  bufferevent_setwatermark(connection->bev_.get(), EV_WRITE, 0, 0);
  connection->idle_ = true;
  idle_.push_back(connection);
  stats_->idle_connections.Add(1);
}

void BackendPool::Close(UpstreamConnection* connection) {
  if (connection->h2_stream_ != nullptr) {
    h2_->CloseStream(connection);
    return;
  }
  CloseSocket(connection);
}

void BackendPool::CloseSocket(UpstreamConnection* connection) {
  if (connection->idle_) {
    idle_.erase(std::find(idle_.begin(), idle_.end(), connection));
    stats_->idle_connections.Add(-1);
  }
  if (connection->prev_ != nullptr)
    connection->prev_->next_ = connection->next_;
  if (connection->next_ != nullptr)
    connection->next_->prev_ = connection->prev_;
  if (head_ == connection) head_ = connection->next_;
  --count_;
  stats_->connections_open.Add(-1);
  if (shared_connections_)
    shared_connections_->fetch_sub(1, std::memory_order_relaxed);
  if (SSL* ssl = connection->ssl()) {
    // Freed without a TLS shutdown, OpenSSL would mark the session as not
    // resumable and the next connection would pay a full handshake.
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  }
  delete connection;
}

void BackendPool::CloseIdle(std::chrono::steady_clock::duration max_age,
                            size_t keep) {
  if (h2_) h2_->CloseIdle(max_age);
  auto now = net::TurnClock::Now();
  // idle_ is oldest first: stop at the first one young enough.
  while (!idle_.empty()) {
    UpstreamConnection* oldest = idle_.front();
    bool too_old = max_age.count() == 0 || now - oldest->since_ >= max_age;
    // Idle for a whole tick beyond the limit: the burst is over.
    bool surplus =
        idle_.size() > keep && now - oldest->since_ >= std::chrono::seconds(1);
    if (!too_old && !surplus) break;
    CloseSocket(oldest);
  }
}

void BackendPool::OnIdleEvent(UpstreamConnection* connection) {
  // An idle connection has nothing to say: data or EOF both end it.
  CloseSocket(connection);
}

}  // namespace tandem::dispatcher
