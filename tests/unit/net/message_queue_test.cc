// Tests of the cross-thread post queue on a real event base made without
// locks, as the proxy's loops are.
#include "net/message_queue.h"

#include <doctest/doctest.h>
#include <event2/event.h>

#include <memory>
#include <thread>
#include <vector>

namespace tandem::net {
namespace {

struct BaseDeleter {
  void operator()(event_base* base) const { event_base_free(base); }
};

std::unique_ptr<event_base, BaseDeleter> NoLockBase() {
  event_config* config = event_config_new();
  REQUIRE(config != nullptr);
  event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
  std::unique_ptr<event_base, BaseDeleter> base(
      event_base_new_with_config(config));
  event_config_free(config);
  REQUIRE(base != nullptr);
  return base;
}

// What the messages act on: only the loop's thread touches it.
struct Target {
  event_base* base = nullptr;
  std::thread::id loop_thread;
  std::vector<std::vector<int>> seen;  // per poster, in the order run
  int total = 0;
  bool wrong_thread = false;
};

// Runs `base` until a message breaks the loop, or for at most 10 s; true
// when a message did.
bool RunBounded(event_base* base) {
  timeval bound{10, 0};
  REQUIRE(event_base_loopexit(base, &bound) == 0);
  REQUIRE(event_base_dispatch(base) != -1);
  return event_base_got_break(base) != 0;
}

TEST_CASE("messages from other threads run on the loop's thread, in order") {
  auto base = NoLockBase();
  Target target;
  target.base = base.get();
  target.loop_thread = std::this_thread::get_id();
  constexpr int kPosters = 3;
  constexpr int kEach = 2000;
  target.seen.resize(kPosters);
  MessageQueue<Target> queue;
  REQUIRE(queue.Init(base.get(), &target));

  std::vector<std::thread> posters;
  for (int poster = 0; poster < kPosters; ++poster) {
    posters.emplace_back([&queue, poster] {
      for (int i = 0; i < kEach; ++i) {
        queue.Post([poster, i](Target& t) {
          if (std::this_thread::get_id() != t.loop_thread)
            t.wrong_thread = true;
          t.seen[poster].push_back(i);
          if (++t.total == kPosters * kEach) event_base_loopbreak(t.base);
        });
      }
    });
  }
  bool done = RunBounded(base.get());
  for (std::thread& poster : posters) poster.join();
  REQUIRE(done);
  CHECK_FALSE(target.wrong_thread);
  for (const std::vector<int>& seen : target.seen) {
    REQUIRE(seen.size() == kEach);
    for (int i = 0; i < kEach; ++i) CHECK(seen[i] == i);
  }
}

TEST_CASE("a message posted before Init() or after Reset() never runs") {
  auto base = NoLockBase();
  Target target;
  target.base = base.get();
  MessageQueue<Target> queue;
  queue.Post([](Target& t) { ++t.total; });
  REQUIRE(queue.Init(base.get(), &target));
  queue.Post([](Target& t) {
    t.total += 10;
    event_base_loopbreak(t.base);
  });
  REQUIRE(RunBounded(base.get()));
  CHECK(target.total == 10);

  queue.Reset();
  queue.Post([](Target& t) { ++t.total; });
  // Nothing is left to wake the loop: it ends at its bound.
  timeval soon{0, 50'000};
  REQUIRE(event_base_loopexit(base.get(), &soon) == 0);
  REQUIRE(event_base_dispatch(base.get()) != -1);
  CHECK(target.total == 10);
}

}  // namespace
}  // namespace tandem::net
