// A parked client connection; see parked_connection.h.
#include "dispatcher/proxy/parked_connection.h"

#include <event2/event.h>

#include <algorithm>
#include <cstring>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/client_connection.h"
#include "net/posix.h"

namespace tandem::dispatcher {

bool ParkedConnection::Park(Loop& loop, Generation& generation,
                            ListenerRuntime& listener, evutil_socket_t fd,
                            std::string_view address, size_t ip_length,
                            std::chrono::steady_clock::time_point deadline,
                            bool first_request) {
  auto* parked = new ParkedConnection(loop, generation, listener, address,
                                      ip_length, deadline, first_request);
  // Persistent, so that it still holds the socket's read interest when the
  // resumed connection adds its own, and epoll is not told of either.
  event_assign(&parked->event_, loop.base(), fd, EV_READ | EV_PERSIST, EventCb,
               parked);
  auto left = deadline - std::chrono::steady_clock::now();
  timeval tv = net::ToTimeval(std::max(left, decltype(left)::zero()));
  if (event_add(&parked->event_, &tv) != 0) {
    delete parked;
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

ParkedConnection::~ParkedConnection() {
  if (event_initialized(&event_)) event_del(&event_);
  loop_.DetachParked(this, generation_);
}

void ParkedConnection::Close() {
  evutil_socket_t fd = event_get_fd(&event_);
  listener_->stats->connections_open.Add(-1);
  delete this;
  if (fd >= 0) evutil_closesocket(fd);
}

void ParkedConnection::EventCb(evutil_socket_t fd, short what, void* arg) {
  auto* self = static_cast<ParkedConnection*>(arg);
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
          self->ip_length_, self->deadline_, self->first_request_)) {
    self->listener_->stats->connections_open.Add(-1);  // Resume closed fd
  }
  delete self;
}

}  // namespace tandem::dispatcher
