// Tests of the per-turn clock on a real event base: one reading per turn,
// a fresh one in the next, and the plain clock where no loop serves it.
#include "net/turn_clock.h"

#include <doctest/doctest.h>

#include <functional>
#include <thread>
#include <vector>

#include "tests/unit/net/loop_turn.h"

namespace tandem::net {
namespace {

using Clock = TurnClock::Clock;
using std::chrono::milliseconds;

struct Base {
  EventBasePtr base{event_base_new()};
  Base() { REQUIRE(base != nullptr); }
};

// Runs `body` in `turns` loop turns, with `pause` after each.
void InTurns(event_base* base, int turns, milliseconds pause,
             const std::function<void()>& body) {
  for (int i = 0; i < turns; ++i) {
    InTurn(base, body);
    std::this_thread::sleep_for(pause);
  }
}

TEST_CASE("within one turn every reading is the first one") {
  Base b;
  TurnClock clock(b.base.get());
  InTurns(b.base.get(), 1, milliseconds(0), [] {
    const Clock::time_point first = TurnClock::Now();
    std::this_thread::sleep_for(milliseconds(5));
    CHECK(TurnClock::Now() == first);
    CHECK(Clock::now() - first >= milliseconds(5));
  });
}

TEST_CASE("each turn reads the clock again") {
  Base b;
  TurnClock clock(b.base.get());
  std::vector<Clock::time_point> seen;
  InTurns(b.base.get(), 3, milliseconds(3),
          [&] { seen.push_back(TurnClock::Now()); });
  REQUIRE(seen.size() == 3);
  CHECK(seen[1] - seen[0] >= milliseconds(3));
  CHECK(seen[2] - seen[1] >= milliseconds(3));
}

TEST_CASE("a reading outside the loop is forgotten by its next turn") {
  Base b;
  TurnClock clock(b.base.get());
  const Clock::time_point before = TurnClock::Now();
  std::this_thread::sleep_for(milliseconds(3));
  Clock::time_point inside{};
  InTurns(b.base.get(), 1, milliseconds(0), [&] { inside = TurnClock::Now(); });
  CHECK(inside - before >= milliseconds(3));
}

TEST_CASE("without a TurnClock, and after it goes, Now reads the clock") {
  {
    Base b;
    TurnClock clock(b.base.get());
  }
  const Clock::time_point first = TurnClock::Now();
  std::this_thread::sleep_for(milliseconds(2));
  CHECK(TurnClock::Now() - first >= milliseconds(2));
  // Another thread has its own: none.
  Base b;
  TurnClock clock(b.base.get());
  Clock::time_point there{}, again{};
  std::thread([&] {
    there = TurnClock::Now();
    std::this_thread::sleep_for(milliseconds(2));
    again = TurnClock::Now();
  }).join();
  CHECK(again - there >= milliseconds(2));
}

}  // namespace
}  // namespace tandem::net
