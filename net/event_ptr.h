// RAII owners for libevent handles: each handle is freed in one place, by its
// owner's destructor.
#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <memory>

namespace tandem::net {

struct EventBaseDeleter {
  void operator()(event_base* base) const { event_base_free(base); }
};
struct EventDeleter {
  void operator()(event* ev) const { event_free(ev); }
};
struct BufferEventDeleter {
  void operator()(bufferevent* bev) const { bufferevent_free(bev); }
};
struct ListenerDeleter {
  void operator()(evconnlistener* listener) const {
    evconnlistener_free(listener);
  }
};
struct EvbufferDeleter {
  void operator()(evbuffer* buffer) const { evbuffer_free(buffer); }
};

using EventBasePtr = std::unique_ptr<event_base, EventBaseDeleter>;
using EventPtr = std::unique_ptr<event, EventDeleter>;
using BufferEventPtr = std::unique_ptr<bufferevent, BufferEventDeleter>;
using ListenerPtr = std::unique_ptr<evconnlistener, ListenerDeleter>;
using EvbufferPtr = std::unique_ptr<evbuffer, EvbufferDeleter>;

}  // namespace tandem::net
