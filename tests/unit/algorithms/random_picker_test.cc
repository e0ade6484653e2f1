// Weighted random: shares follow weights; tried and ineligible backends.
#include "algorithms/random_picker.h"

#include <doctest/doctest.h>

#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountPicks;
using testing::Views;

TEST_CASE("random shares picks within 2% of the weights") {
  Rng rng(42);
  RandomPicker picker(rng);
  picker.Update(Views({5, 1, 1}));
  CheckShares(CountPicks(picker, 3, 100000), {5, 1, 1}, 0.02);
  picker.Update(Views({1, 2, 3, 4}));
  CheckShares(CountPicks(picker, 4, 100000), {1, 2, 3, 4}, 0.02);
}

TEST_CASE("random with a fixed seed repeats its sequence") {
  Rng rng_a(1234);
  Rng rng_b(1234);
  RandomPicker a(rng_a);
  RandomPicker b(rng_b);
  a.Update(Views({1, 1, 1, 1, 1}));
  b.Update(Views({1, 1, 1, 1, 1}));
  for (int i = 0; i < 100; ++i) REQUIRE(a.Pick({}) == b.Pick({}));
}

TEST_CASE("random skips ineligible backends") {
  Rng rng(3);
  RandomPicker picker(rng);
  std::vector<BackendView> views = Views({1, 1, 1});
  views[1].eligible = false;
  picker.Update(views);
  const std::vector<size_t> counts = CountPicks(picker, 3, 10000);
  CHECK(counts[1] == 0);
  CHECK(counts[0] > 0);
  CHECK(counts[2] > 0);
}

TEST_CASE("random keeps weight proportions among untried backends") {
  Rng rng(8);
  RandomPicker picker(rng);
  picker.Update(Views({4, 3, 1}));
  TriedSet tried;
  tried.Insert(1);
  PickInput input;
  input.tried = &tried;
  const std::vector<size_t> counts = CountPicks(picker, 3, 100000, input);
  CHECK(counts[1] == 0);
  CheckShares({counts[0], counts[2]}, {4, 1}, 0.02);
}

TEST_CASE(
    "random returns a tried backend when every eligible one is tried, "
    "and none when none is eligible") {
  Rng rng(8);
  RandomPicker picker(rng);
  picker.Update(Views({1}));
  TriedSet tried;
  tried.Insert(0);
  PickInput input;
  input.tried = &tried;
  CHECK(picker.Pick(input) == 0u);
  picker.Update({});
  CHECK_FALSE(picker.Pick(input).has_value());
}

}  // namespace
}  // namespace tandem::algorithms
