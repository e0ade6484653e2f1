// Objects that end inside their own callbacks are handed to their loop and
// deleted once the callbacks running now have returned (Envoy's
// Event::DeferredDeletable): no member function ever runs on a freed object.
#pragma once

#include <event2/event.h>

#include <memory>
#include <vector>

#include "net/event_ptr.h"

namespace tandem::net {

class DeferredDeletable {
 public:
  virtual ~DeferredDeletable() = default;
};

// One per event loop; loop thread only.
class DeferredDeleteList {
 public:
  // False when the wake-up event cannot be made (out of memory).
  [[nodiscard]] bool Init(event_base* base);
  // Takes `object`; it is deleted in a later callback of this loop turn.
  void Add(std::unique_ptr<DeferredDeletable> object);
  // Deletes everything pending now (loop teardown, outside callbacks).
  void Clear();
  size_t size() const { return pending_.size(); }

 private:
  static void RunCb(evutil_socket_t, short, void* arg);

  std::vector<std::unique_ptr<DeferredDeletable>> pending_;
  EventPtr event_;
};

}  // namespace tandem::net
