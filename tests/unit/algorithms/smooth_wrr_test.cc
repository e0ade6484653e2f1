// Smooth weighted round robin: nginx's exact sequences, tried backends and
// updates.
#include "algorithms/smooth_wrr.h"

#include <doctest/doctest.h>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountPicks;
using testing::Sequence;
using testing::Views;

TEST_CASE("weights 5 1 1 give a a b a c a a, never a burst of five") {
  SmoothWrr picker;
  picker.Update(Views({5, 1, 1}));
  CHECK(Sequence(picker, 14) == "a a b a c a a a a b a c a a");
}

TEST_CASE("equal weights take strict turns") {
  SmoothWrr picker;
  picker.Update(Views({1, 1, 1}));
  CHECK(Sequence(picker, 7) == "a b c a b c a");
}

TEST_CASE("weights 2 1 interleave as a b a") {
  SmoothWrr picker;
  picker.Update(Views({2, 1}));
  CHECK(Sequence(picker, 6) == "a b a a b a");
}

TEST_CASE("weights 4 2 1 spread the heavy backend across the cycle") {
  SmoothWrr picker;
  picker.Update(Views({4, 2, 1}));
  CHECK(Sequence(picker, 7) == "a b a c a b a");
}

TEST_CASE("the sequence depends on weight ratios, not their scale") {
  SmoothWrr coarse;
  coarse.Update(Views({5, 1, 1}));
  SmoothWrr fine;
  std::vector<BackendView> views = Views({5, 1, 1});
  for (BackendView& view : views) view.weight /= 10;  // 50 10 10
  fine.Update(views);
  CHECK(Sequence(coarse, 21) == Sequence(fine, 21));
}

TEST_CASE("smooth round robin gives each backend exactly its weight share") {
  SmoothWrr picker;
  picker.Update(Views({5, 3, 2}));
  const std::vector<size_t> counts = CountPicks(picker, 3, 100000);
  CHECK(counts == std::vector<size_t>{50000, 30000, 20000});
  CheckShares(counts, {5, 3, 2}, 0.02);
}

TEST_CASE("ineligible and zero-weight backends are skipped") {
  SmoothWrr picker;
  std::vector<BackendView> views = Views({5, 1, 1, 1});
  views[1].eligible = false;
  views[3].weight = 0;
  picker.Update(views);
  CHECK(Sequence(picker, 6) == "a a a c a a");
}

TEST_CASE("tried backends sit out while an untried one is eligible") {
  SmoothWrr picker;
  picker.Update(Views({5, 1, 1}));
  TriedSet tried;
  tried.Insert(0);
  PickInput input;
  input.tried = &tried;
  CHECK(Sequence(picker, 4, input) == "b c b c");
}

TEST_CASE("a tried backend is returned when every eligible one is tried") {
  SmoothWrr picker;
  picker.Update(Views({1, 1}));
  TriedSet tried;
  tried.Insert(0);
  tried.Insert(1);
  PickInput input;
  input.tried = &tried;
  CHECK(picker.Pick(input).has_value());
}

TEST_CASE("a single-backend cluster can retry on its one backend") {
  SmoothWrr picker;
  picker.Update(Views({1}));
  TriedSet tried;
  tried.Insert(0);
  PickInput input;
  input.tried = &tried;
  CHECK(picker.Pick(input) == 0u);
}

TEST_CASE("nothing eligible gives no backend") {
  SmoothWrr picker;
  CHECK_FALSE(picker.Pick({}).has_value());
  std::vector<BackendView> views = Views({1, 1});
  for (BackendView& view : views) view.eligible = false;
  picker.Update(views);
  CHECK_FALSE(picker.Pick({}).has_value());
}

TEST_CASE("a health update keeps the rotation of the backends that stay") {
  SmoothWrr picker;
  std::vector<BackendView> views = Views({1, 1, 1});
  picker.Update(views);
  CHECK(Sequence(picker, 1) == "a");
  picker.Update(views);  // same snapshot again: no restart at a
  CHECK(Sequence(picker, 2) == "b c");
  views[2].eligible = false;
  picker.Update(views);
  CHECK(Sequence(picker, 4) == "a b a b");
}

}  // namespace
}  // namespace tandem::algorithms
