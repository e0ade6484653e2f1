// Messages from any thread to one event loop: a queue plus an eventfd that
// wakes the loop, drained on the loop's own thread (memcached's
// notify_worker()). The mutex is taken per message posted and once per
// wake-up, never per request.
#pragma once

#include <event2/event.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
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
  MessageQueue(const MessageQueue&) = delete;
  MessageQueue& operator=(const MessageQueue&) = delete;

  // Binds to `base`, which needs no lock of its own (a base made with
  // EVENT_BASE_FLAG_NOLOCK will do: other threads only write the eventfd);
  // messages run on `target`, on the thread that runs `base`. Call once,
  // before any Post. False when the eventfd or its event cannot be made.
  [[nodiscard]] bool Init(event_base* base, Target* target) {
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = target;
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return false;
    event_ = event_new(base, wake_fd_, EV_READ | EV_PERSIST, Drain, this);
    return event_ != nullptr && event_add(event_, nullptr) == 0;
  }

  // Frees the wake-up event and its eventfd; messages not yet run never run.
  // Call before the event base is freed, on the loop's thread or once it
  // has stopped.
  void Reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (event_ != nullptr) event_free(event_);
    event_ = nullptr;
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
  }

  // Thread-safe: `message` runs on the loop's thread, after every message
  // posted before it. Dropped before Init() and after Reset().
  void Post(Message message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (event_ == nullptr) return;
    messages_.push_back(std::move(message));
    uint64_t one = 1;
    // The eventfd counter only grows: a failed write means it is already
    // readable, so the loop wakes anyway.
    (void)!write(wake_fd_, &one, sizeof(one));
  }

 private:
  static void Drain(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<MessageQueue*>(arg);
    uint64_t count = 0;
    // Read before taking the messages: a post that lands in between wakes
    // the loop once more, for nothing, rather than being left behind.
    (void)!read(fd, &count, sizeof(count));
    std::deque<Message> messages;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      messages.swap(self->messages_);
    }
    for (Message& message : messages) message(*self->target_);
  }

  Target* target_ = nullptr;
  int wake_fd_ = -1;
  event* event_ = nullptr;
  std::mutex mutex_;
  std::deque<Message> messages_;
};

}  // namespace tandem::net
