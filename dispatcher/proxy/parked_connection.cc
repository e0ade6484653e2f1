// A parked client connection; see parked_connection.h.
#include "dispatcher/proxy/parked_connection.h"

#include <event2/event.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/client_connection.h"
#include "net/posix.h"
#include "net/proxy_protocol.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {

bool ParkedConnection::Park(Loop& loop, Generation& generation,
                            ListenerRuntime& listener, evutil_socket_t fd,
                            std::string_view address, size_t ip_length,
                            std::chrono::steady_clock::time_point deadline,
                            bool first_request,
                            std::unique_ptr<net::ProxyTlvs>& proxy_tlvs) {
  auto* parked = new ParkedConnection(loop, generation, listener, address,
                                      ip_length, deadline, first_request);
  if (!parked->Wait(fd)) return false;  // (retired)
  parked->proxy_tlvs_ = std::move(proxy_tlvs);
  return true;
}

bool ParkedConnection::AwaitProxyHeader(Loop& loop, Generation& generation,
                                        ListenerRuntime& listener,
                                        evutil_socket_t fd,
                                        std::string_view address,
                                        size_t ip_length) {
  auto* waiting = new ParkedConnection(
      loop, generation, listener, address, ip_length,
      net::TurnClock::Now() + listener.config->proxy_protocol_timeout, true);
  waiting->proxy_header_ = std::make_unique<std::string>();
  if (!waiting->Wait(fd)) return false;
  listener.stats->connections_accepted.Add();
  listener.stats->connections_open.Add(1);
  return true;
}

bool ParkedConnection::Wait(evutil_socket_t fd) {
  // Persistent, so that it still holds the socket's read interest when the
  // resumed connection adds its own, and epoll is not told of either.
  event_assign(&event_, loop_.base(), fd, EV_READ | EV_PERSIST, EventCb, this);
  auto left = deadline_ - net::TurnClock::Now();
  timeval tv = net::ToTimeval(std::max(left, decltype(left)::zero()));
  if (event_add(&event_, &tv) != 0) {
    event_del(&event_);
    loop_.Retire(this);
    return false;
  }
  return true;
}

ParkedConnection::ParkedConnection(
    Loop& loop, Generation& generation, ListenerRuntime& listener,
    std::string_view address, size_t ip_length,
    std::chrono::steady_clock::time_point deadline, bool first_request)
    : loop_(loop),
      generation_(&generation),
      listener_(&listener),
      deadline_(deadline),
      address_length_(
          static_cast<uint8_t>(std::min(address.size(), sizeof(address_)))),
      ip_length_(
          static_cast<uint8_t>(std::min<size_t>(ip_length, address_length_))),
      first_request_(first_request) {
  std::memset(&event_, 0, sizeof(event_));
  std::memcpy(address_, address.data(), address_length_);
  loop_.AttachParked(this, generation_);
}

ParkedConnection::~ParkedConnection() { loop_.Forget(generation_); }

void ParkedConnection::End() {
  if (event_initialized(&event_)) event_del(&event_);
  loop_.Retire(this);
}

void ParkedConnection::Close() {
  evutil_socket_t fd = event_get_fd(&event_);
  listener_->stats->connections_open.Add(-1);
  End();
  if (fd >= 0) evutil_closesocket(fd);
}

void ParkedConnection::EventCb(evutil_socket_t fd, short what, void* arg) {
  auto* self = static_cast<ParkedConnection*>(arg);
  if (self->proxy_header_) {
    if (!(what & EV_READ)) {
      self->listener_->stats->CountProxy(ProxyResult::kTimeout);
      self->Close();
    } else {
      self->ReadProxyHeader(fd);
    }
    return;
  }
  if (!(what & EV_READ)) {
    // Idle past idle_timeout (or, before a first request,
    // client_header_timeout): closed as an idle ClientConnection would be.
    self->Close();
    return;
  }
  // A request (or the client's close) arrived: a ClientConnection takes the
  // socket and reads it. It attaches before this one detaches, so the
  // generation is never left without connections in between.
  if (!ClientConnection::Resume(
          self->loop_, *self->generation_, *self->listener_, fd,
          std::string_view(self->address_, self->address_length_),
          self->ip_length_, self->deadline_, self->first_request_,
          std::move(self->proxy_tlvs_))) {
    self->listener_->stats->connections_open.Add(-1);  // Resume closed fd
  }
  self->End();
}

void ParkedConnection::ReadProxyHeader(evutil_socket_t fd) {
  // Look at what has come without taking it, then take exactly the bytes
  // that are the header's: what follows (a request, a ClientHello) stays in
  // the socket for the connection that reads it next.
  char buffer[net::kMaxProxyHeaderBytes];
  const size_t have = proxy_header_->size();
  ssize_t n = recv(fd, buffer, sizeof(buffer) - have, MSG_PEEK);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    listener_->stats->CountProxy(ProxyResult::kClosed);
    Close();
    return;
  }
  if (n < 0) return;
  std::string data = *proxy_header_;
  data.append(buffer, static_cast<size_t>(n));
  net::ProxyHeader header;
  size_t length = 0;
  std::string error;
  switch (net::ParseProxyHeader(data, &header, &length, &error)) {
    case net::ProxyParse::kNeedMore:
      // Every byte so far is the header's.
      if (recv(fd, buffer, static_cast<size_t>(n), 0) != n) {
        Close();
        return;
      }
      proxy_header_->append(buffer, static_cast<size_t>(n));
      return;
    case net::ProxyParse::kInvalid:
      listener_->stats->CountProxy(ProxyResult::kInvalid);
      Close();
      return;
    case net::ProxyParse::kDone:
      break;
  }
  const ssize_t rest = static_cast<ssize_t>(length - have);
  if (recv(fd, buffer, static_cast<size_t>(rest), 0) != rest) {
    Close();
    return;
  }
  std::string text;
  size_t ip_length = ip_length_;
  if (header.local) {
    listener_->stats->CountProxy(ProxyResult::kLocal);
    text.assign(address_, address_length_);
  } else {
    listener_->stats->CountProxy(ProxyResult::kProxied);
    text = net::AddressText(reinterpret_cast<const sockaddr*>(&header.source),
                            &ip_length);
  }
  std::unique_ptr<net::ProxyTlvs> tlvs;
  if (!header.tlvs.empty())
    tlvs = std::make_unique<net::ProxyTlvs>(std::move(header.tlvs));
  // Goes on as a connection accepted from that address; it attaches before
  // this one detaches.
  event_del(&event_);
  if (!ClientConnection::AcceptAfterProxyHeader(loop_, *generation_, *listener_,
                                                fd, text, ip_length,
                                                std::move(tlvs))) {
    listener_->stats->connections_open.Add(-1);
  }
  End();
}

}  // namespace tandem::dispatcher
