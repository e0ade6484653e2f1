// Test helper: code run inside a callback of one loop turn, as the proxy
// runs its own.
#pragma once

#include <doctest/doctest.h>

#include <functional>

#include "net/event_ptr.h"

namespace tandem::net {

// Runs `body` inside a callback of one turn of `base`'s loop.
inline void InTurn(event_base* base, std::function<void()> body) {
  EventPtr ev(event_new(
      base, -1, 0,
      [](evutil_socket_t, short, void* arg) {
        (*static_cast<std::function<void()>*>(arg))();
      },
      &body));
  REQUIRE(ev != nullptr);
  event_active(ev.get(), EV_TIMEOUT, 0);
  REQUIRE(event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK) == 0);
}

}  // namespace tandem::net
