// Slow-backend avoidance: an estimate (the median of the last answers) that
// a run of late answers moves and one or two do not; several times and a floor
// slower than the fastest is slow; never more than half of the cluster.
#include "algorithms/slow_backends.h"

#include <doctest/doctest.h>

#include <vector>

namespace tandem::algorithms {
namespace {

using std::chrono::microseconds;

SlowView Measured(double us, bool eligible = true) {
  SlowView view;
  view.eligible = eligible;
  for (size_t i = 0; i < SlowEstimate::kSamples; ++i)
    view.estimate.Observe(microseconds(static_cast<int64_t>(us)), false);
  return view;
}

std::vector<uint8_t> Slow(const std::vector<SlowView>& views) {
  std::vector<uint8_t> slow(views.size(), 7);
  size_t count = FindSlow(views, slow).count;
  size_t marked = 0;
  for (uint8_t s : slow) marked += s;
  CHECK(count == marked);
  return slow;
}

using Flags = std::vector<uint8_t>;

TEST_CASE("two late answers do not make a backend slow, a run of three does") {
  std::vector<SlowView> views = {Measured(300), Measured(300), Measured(300)};
  views[2].estimate.Observe(microseconds(500000), false);
  views[2].estimate.Observe(microseconds(500000), false);
  CHECK(Slow(views) == Flags{0, 0, 0});
  views[2].estimate.Observe(microseconds(20000), false);
  CHECK(views[2].estimate.value_us() == 20000);
  CHECK(Slow(views) == Flags{0, 0, 1});
  // And two fast ones among them do not bring it back.
  views[2].estimate.Observe(microseconds(300), false);
  views[2].estimate.Observe(microseconds(300), false);
  CHECK(Slow(views) == Flags{0, 0, 1});
}

TEST_CASE("a fast answer while passed over starts afresh") {
  std::vector<SlowView> views = {Measured(300), Measured(20000)};
  CHECK(Slow(views) == Flags{0, 1});
  // Still slow: kept.
  views[1].estimate.Observe(microseconds(19000), true);
  CHECK(Slow(views) == Flags{0, 1});
  // A probe answered fast: unmeasured again, so not passed over.
  views[1].estimate.Observe(microseconds(350), true);
  CHECK(views[1].estimate.value_us() == 350);
  CHECK_FALSE(views[1].estimate.measured());
  CHECK(Slow(views) == Flags{0, 0});
  // Without being passed over, a fast answer is one sample among the others.
  SlowView other = Measured(20000);
  other.estimate.Observe(microseconds(350), false);
  CHECK(other.estimate.value_us() == 20000);
}

TEST_CASE("slow means both several times and a floor slower than the fastest") {
  // 3.3 times slower: not slow.
  CHECK(Slow({Measured(3000), Measured(10000)}) == Flags{0, 0});
  // 10 times slower but 0.9 ms: not slow.
  CHECK(Slow({Measured(100), Measured(1000)}) == Flags{0, 0});
  // Both.
  CHECK(Slow({Measured(100), Measured(2500)}) == Flags{0, 1});
}

TEST_CASE("a cluster slowing down as a whole avoids nothing") {
  CHECK(Slow({Measured(5000), Measured(5000), Measured(5200)}) ==
        Flags{0, 0, 0});
}

TEST_CASE("at most half of the eligible backends, the slowest first") {
  CHECK(Slow({Measured(300), Measured(9000), Measured(20000),
              Measured(8000)}) == Flags{0, 1, 1, 0});
  CHECK(Slow({Measured(300), Measured(300), Measured(9000), Measured(20000),
              Measured(8000)}) == Flags{0, 0, 1, 1, 0});
  // Of two, one may be passed over.
  CHECK(Slow({Measured(20000), Measured(300)}) == Flags{1, 0});
  // One backend is never passed over.
  CHECK(Slow({Measured(20000)}) == Flags{0});
}

TEST_CASE(
    "unmeasured and ineligible backends are neither slow nor the yardstick") {
  SlowView fresh;
  fresh.eligible = true;
  for (int i = 0; i < 4; ++i)  // one answer short
    fresh.estimate.Observe(microseconds(50000), false);
  CHECK(Slow({Measured(300), fresh, Measured(300)}) == Flags{0, 0, 0});
  // The fastest is ineligible: the yardstick is the next one.
  CHECK(Slow({Measured(100, false), Measured(2000), Measured(2100)}) ==
        Flags{0, 0, 0});
  {
    std::vector<SlowView> views = {Measured(100, false), Measured(2000),
                                   Measured(2100)};
    std::vector<uint8_t> slow(views.size());
    CHECK(FindSlow(views, slow).fastest_us == 2000);
  }
  // An ineligible slow one is not marked (the picks skip it anyway).
  CHECK(Slow({Measured(300), Measured(20000, false), Measured(300)}) ==
        Flags{0, 0, 0});
  // Nothing measured: nothing slow.
  CHECK(Slow({SlowView{true, {}}, SlowView{true, {}}}) == Flags{0, 0});
}

}  // namespace
}  // namespace tandem::algorithms
