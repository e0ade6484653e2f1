// One steady-clock reading per event-loop turn, as HAProxy's `now_ms` and
// nginx's `ngx_current_msec`: the request path asks for the time a dozen
// times per request (its start, activity, timers, the head's latency, the
// pool's idle stamps), and each ask was a clock_gettime.
//
// While a TurnClock lives on a thread, TurnClock::Now() on that thread reads
// the clock at its first call in a turn of the loop and returns that reading
// until the turn ends (an event made active at the first call runs after
// every callback already due, and forgets the reading). A time is then as
// late as the work done earlier in the same turn: well under a millisecond
// at ordinary loads, a few milliseconds in a turn that serves a thousand
// connections. Timeouts and latency samples tolerate that; anything that
// must not (a deadline it spins on) reads std::chrono::steady_clock itself.
//
// On a thread with no TurnClock (the control thread, tests), Now() reads the
// clock every time.
#pragma once

#include <chrono>

#include "net/event_ptr.h"

namespace tandem::net {

class TurnClock {
 public:
  using Clock = std::chrono::steady_clock;

  // Construct it on the thread that runs `base`'s loop; it serves that
  // thread until destroyed.
  explicit TurnClock(event_base* base);
  ~TurnClock();
  TurnClock(const TurnClock&) = delete;
  TurnClock& operator=(const TurnClock&) = delete;

  static Clock::time_point Now();

 private:
  static void ForgetCb(evutil_socket_t, short, void* arg);

  TurnClock* previous_;
  EventPtr forget_;
  Clock::time_point now_{};
  bool fresh_ = false;
};

}  // namespace tandem::net
