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

// Every event base tandem runs: epoll's changelist folds the add and the
// removal of a write interest made within one loop turn (what direct_io's
// writes do on every answer) into no epoll_ctl at all. `locked`: whether
// other threads call into the base (event_base_loopexit, event_active);
// a base only its own thread touches needs no lock. Null when libevent fails.
enum class BaseLocking : bool { kUnlocked, kLocked };
inline EventBasePtr NewEventBase(BaseLocking locking) {
  event_config* config = event_config_new();
  if (config == nullptr) return nullptr;
  if (locking == BaseLocking::kUnlocked) {
    event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
  }
  event_config_set_flag(config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  EventBasePtr base(event_base_new_with_config(config));
  event_config_free(config);
  return base;
}

}  // namespace tandem::net
