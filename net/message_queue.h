// Messages from any thread to one event loop: a queue plus a wake-up event,
// drained on the loop's own thread (memcached's notify_worker()). The mutex is
// taken per message posted and once per wake-up, never per request.
#pragma once

#include <event2/event.h>

#include <deque>
#include <functional>
#include <mutex>
#include <utility>

namespace tandem::net {

template <typename Target>
class MessageQueue {
 public:
  using Message = std::function<void(Target&)>;

  MessageQueue() = default;
  ~MessageQueue() { Reset(); }

  // Frees the wake-up event; call before its event base is freed.
  void Reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (event_ != nullptr) event_free(event_);
    event_ = nullptr;
  }
  MessageQueue(const MessageQueue&) = delete;
  MessageQueue& operator=(const MessageQueue&) = delete;

  // Binds to `base` (evthread_use_pthreads() must have run); messages run on
  // `target`. False when the event cannot be made.
  bool Init(event_base* base, Target* target) {
    target_ = target;
    event_ = event_new(base, -1, EV_PERSIST, Drain, this);
    return event_ != nullptr && event_add(event_, nullptr) == 0;
  }

  // Thread-safe. Dropped after Reset().
  void Post(Message message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (event_ == nullptr) return;
    messages_.push_back(std::move(message));
    event_active(event_, EV_READ, 0);
  }

 private:
  static void Drain(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<MessageQueue*>(arg);
    std::deque<Message> messages;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      messages.swap(self->messages_);
    }
    for (Message& message : messages) message(*self->target_);
  }

  Target* target_ = nullptr;
  event* event_ = nullptr;
  std::mutex mutex_;
  std::deque<Message> messages_;
};

}  // namespace tandem::net
