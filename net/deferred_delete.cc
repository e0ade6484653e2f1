// The loop's deferred-delete list; see deferred_delete.h.
#include "net/deferred_delete.h"

namespace tandem::net {

bool DeferredDeleteList::Init(event_base* base) {
  event_.reset(event_new(base, -1, 0, &DeferredDeleteList::RunCb, this));
  return event_ != nullptr;
}

void DeferredDeleteList::Add(std::unique_ptr<DeferredDeletable> object) {
  if (pending_.empty()) event_active(event_.get(), EV_TIMEOUT, 0);
  pending_.push_back(std::move(object));
}

void DeferredDeleteList::Clear() {
  // A destructor may defer more: delete until nothing is left.
  while (!pending_.empty()) {
    std::vector<std::unique_ptr<DeferredDeletable>> batch;
    batch.swap(pending_);
  }
}

void DeferredDeleteList::RunCb(evutil_socket_t, short, void* arg) {
  static_cast<DeferredDeleteList*>(arg)->Clear();
}

}  // namespace tandem::net
