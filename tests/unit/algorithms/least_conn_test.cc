// Least connections: fewest in-flight per unit of weight, rotating ties.
#include "algorithms/least_conn.h"

#include <doctest/doctest.h>

#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountPicks;
using testing::Sequence;
using testing::Views;

TEST_CASE("least-conn picks the backend with the fewest in-flight requests") {
  LeastConn picker;
  picker.Update(Views({1, 1, 1}));
  const std::vector<uint32_t> inflight = {4, 1, 3};
  PickInput input;
  input.inflight = inflight;
  CHECK(Sequence(picker, 3, input) == "b b b");
}

TEST_CASE("least-conn weighs in-flight requests against weight") {
  LeastConn picker;
  picker.Update(Views({4, 1}));
  // 6 / 4 = 1.5 is less than 2 / 1 = 2, though 6 > 2.
  const std::vector<uint32_t> inflight = {6, 2};
  PickInput input;
  input.inflight = inflight;
  CHECK(picker.Pick(input) == 0u);
  // 9 / 4 = 2.25 is more.
  const std::vector<uint32_t> busier = {9, 2};
  input.inflight = busier;
  CHECK(picker.Pick(input) == 1u);
}

TEST_CASE("least-conn rotates among backends tied for the least load") {
  LeastConn picker;
  picker.Update(Views({1, 1, 1, 1}));
  const std::vector<uint32_t> inflight = {2, 0, 5, 0};
  PickInput input;
  input.inflight = inflight;
  CHECK(Sequence(picker, 6, input) == "b d b d b d");
}

TEST_CASE("least-conn serves an idle cluster in weight proportion") {
  LeastConn picker;
  picker.Update(Views({5, 1, 1}));
  CHECK(Sequence(picker, 7) == "a a b a c a a");
  const std::vector<size_t> counts = CountPicks(picker, 3, 100000);
  CheckShares(counts, {5, 1, 1}, 0.02);
}

TEST_CASE("least-conn keeps in-flight proportional to weight under load") {
  LeastConn picker;
  picker.Update(Views({3, 2, 1}));
  std::vector<uint32_t> inflight(3, 0);
  PickInput input;
  for (int i = 0; i < 600; ++i) {
    input.inflight = inflight;
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    ++inflight[*picked];
  }
  CHECK(inflight == std::vector<uint32_t>{300, 200, 100});
}

TEST_CASE("least-conn avoids tried backends even when they are least loaded") {
  LeastConn picker;
  picker.Update(Views({1, 1, 1}));
  const std::vector<uint32_t> inflight = {0, 7, 9};
  TriedSet tried;
  tried.Insert(0);
  PickInput input;
  input.inflight = inflight;
  input.tried = &tried;
  CHECK(picker.Pick(input) == 1u);
  tried.Insert(1);
  tried.Insert(2);
  CHECK(picker.Pick(input) == 0u);  // all tried: the least loaded again
}

TEST_CASE(
    "least-conn never picks an ineligible backend and gives none when "
    "none is eligible") {
  LeastConn picker;
  std::vector<BackendView> views = Views({1, 1});
  views[0].eligible = false;
  picker.Update(views);
  const std::vector<uint32_t> inflight = {0, 50};
  PickInput input;
  input.inflight = inflight;
  CHECK(picker.Pick(input) == 1u);
  views[1].eligible = false;
  picker.Update(views);
  CHECK_FALSE(picker.Pick(input).has_value());
}

TEST_CASE("least-conn treats backends past the in-flight span as idle") {
  LeastConn picker;
  picker.Update(Views({1, 1}));
  const std::vector<uint32_t> inflight = {3};
  PickInput input;
  input.inflight = inflight;
  CHECK(picker.Pick(input) == 1u);
}

}  // namespace
}  // namespace tandem::algorithms
