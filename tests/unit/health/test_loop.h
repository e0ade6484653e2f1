// The health I/O tests' event loop: Run() ends on Stop() or after a bound.
#pragma once

#include <doctest/doctest.h>
#include <event2/event.h>

#include <chrono>

namespace tandem::health::testing {

class Loop {
 public:
  Loop() : base_(event_base_new()) {
    REQUIRE(base_ != nullptr);
    bound_ = evtimer_new(
        base_,
        [](evutil_socket_t, short, void* arg) {
          event_base_loopbreak(static_cast<event_base*>(arg));
        },
        base_);
    REQUIRE(bound_ != nullptr);
  }
  ~Loop() {
    event_free(bound_);
    event_base_free(base_);
  }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  event_base* base() const { return base_; }

  // Runs until Stop() or until `bound` passed; true when stopped.
  bool Run(std::chrono::milliseconds bound = std::chrono::seconds(10)) {
    stopped_ = false;
    timeval tv{static_cast<time_t>(bound.count() / 1000),
               static_cast<suseconds_t>(bound.count() % 1000 * 1000)};
    REQUIRE(evtimer_add(bound_, &tv) == 0);
    REQUIRE(event_base_dispatch(base_) != -1);
    event_del(bound_);
    return stopped_;
  }
  void Stop() {
    stopped_ = true;
    event_base_loopbreak(base_);
  }

 private:
  event_base* base_;
  event* bound_;
  bool stopped_ = false;
};

}  // namespace tandem::health::testing
