// Power of two choices: weighted candidates, the less loaded wins, never an
// ineligible backend.
#include "algorithms/p2c.h"

#include <doctest/doctest.h>

#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountPicks;
using testing::EqualViews;
using testing::Views;

TEST_CASE("p2c never picks an ineligible backend") {
  Rng rng(7);
  P2c picker(rng);
  Rng scenario(11);
  for (int round = 0; round < 200; ++round) {
    std::vector<BackendView> views = EqualViews(1 + scenario.Below(12));
    for (BackendView& view : views) view.eligible = scenario.Below(3) != 0;
    std::vector<uint32_t> inflight(views.size());
    for (uint32_t& count : inflight) count = scenario.Below(5);
    picker.Update(views);
    bool any_eligible = false;
    for (const BackendView& view : views) any_eligible |= view.eligible;
    PickInput input;
    input.inflight = inflight;
    for (int pick = 0; pick < 50; ++pick) {
      const std::optional<size_t> picked = picker.Pick(input);
      REQUIRE(picked.has_value() == any_eligible);
      if (picked) REQUIRE(views[*picked].eligible);
    }
  }
}

TEST_CASE("p2c never picks the most loaded backend, which always loses") {
  Rng rng(1);
  P2c picker(rng);
  picker.Update(Views({1, 1, 1}));
  const std::vector<uint32_t> inflight = {1, 0, 9};
  PickInput input;
  input.inflight = inflight;
  const std::vector<size_t> counts = CountPicks(picker, 3, 30000, input);
  CHECK(counts[2] == 0);
  // b wins every pair it is in (2 of 3), a only the pair {a, c}.
  CHECK(counts[1] > counts[0]);
}

TEST_CASE("p2c compares in-flight per unit of weight") {
  Rng rng(3);
  P2c picker(rng);
  picker.Update(Views({4, 1}));
  // Two backends: both are always the candidates. 6 / 4 < 2 / 1.
  const std::vector<uint32_t> inflight = {6, 2};
  PickInput input;
  input.inflight = inflight;
  CHECK(CountPicks(picker, 2, 1000, input)[0] == 1000);
}

TEST_CASE("p2c shares an idle cluster within 2% of the weights") {
  Rng rng(42);
  P2c picker(rng);
  picker.Update(Views({5, 3, 2}));
  CheckShares(CountPicks(picker, 3, 100000), {5, 3, 2}, 0.02);
}

TEST_CASE("p2c balances a loaded cluster in weight proportion") {
  Rng rng(5);
  P2c picker(rng);
  picker.Update(Views({3, 1}));
  std::vector<uint32_t> inflight(2, 0);
  PickInput input;
  for (int i = 0; i < 4000; ++i) {
    input.inflight = inflight;
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    ++inflight[*picked];
  }
  // With two backends both are always the candidates, so the lighter per
  // weight always wins and the load stays at 3 : 1.
  CHECK(inflight == std::vector<uint32_t>{3000, 1000});
}

TEST_CASE("p2c avoids tried backends while an untried one is eligible") {
  Rng rng(9);
  P2c picker(rng);
  picker.Update(Views({1, 1, 1, 1}));
  TriedSet tried;
  tried.Insert(0);
  tried.Insert(2);
  tried.Insert(3);
  PickInput input;
  input.tried = &tried;
  for (int i = 0; i < 1000; ++i) REQUIRE(picker.Pick(input) == 1u);
}

TEST_CASE("p2c returns a tried backend when every eligible one is tried") {
  Rng rng(9);
  P2c picker(rng);
  std::vector<BackendView> views = Views({1, 1, 1});
  views[2].eligible = false;
  picker.Update(views);
  TriedSet tried;
  tried.Insert(0);
  tried.Insert(1);
  PickInput input;
  input.tried = &tried;
  for (int i = 0; i < 100; ++i) {
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    REQUIRE(*picked != 2u);
  }
}

TEST_CASE("p2c in a single-backend cluster can retry on its one backend") {
  Rng rng(9);
  P2c picker(rng);
  picker.Update(Views({1}));
  TriedSet tried;
  tried.Insert(0);
  PickInput input;
  input.tried = &tried;
  CHECK(picker.Pick(input) == 0u);
}

TEST_CASE("p2c gives no backend when none is eligible") {
  Rng rng(9);
  P2c picker(rng);
  CHECK_FALSE(picker.Pick({}).has_value());
  std::vector<BackendView> views = Views({1, 1});
  views[0].weight = 0;
  views[1].eligible = false;
  picker.Update(views);
  CHECK_FALSE(picker.Pick({}).has_value());
}

}  // namespace
}  // namespace tandem::algorithms
