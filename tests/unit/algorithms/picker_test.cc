// Properties every algorithm keeps, through MakePicker: only eligible
// backends, untried first, a tried one rather than none, shares by weight,
// no allocation in Pick().
#include "algorithms/picker.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "algorithms/least_conn.h"
#include "algorithms/maglev.h"
#include "algorithms/p2c.h"
#include "algorithms/random_picker.h"
#include "algorithms/ring_hash.h"
#include "algorithms/smooth_wrr.h"
#include "allocation_counter.h"
#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountKeyedPicks;
using testing::CountPicks;
using testing::EqualViews;
using testing::KeyHash;
using testing::Views;

constexpr Algorithm kAll[] = {Algorithm::kRoundRobin, Algorithm::kLeastConn,
                              Algorithm::kP2c,        Algorithm::kP2cEwma,
                              Algorithm::kRingHash,   Algorithm::kMaglev,
                              Algorithm::kRandom};

const char* Name(Algorithm algorithm) { return AlgorithmName(algorithm); }

bool Keyed(Algorithm algorithm) {
  return algorithm == Algorithm::kRingHash || algorithm == Algorithm::kMaglev;
}

std::unique_ptr<Picker> Make(Algorithm algorithm, Rng& rng) {
  PickerOptions options;
  options.algorithm = algorithm;
  return MakePicker(options, rng);
}

TEST_CASE("MakePicker builds the class named by the algorithm") {
  Rng rng(1);
  CHECK(dynamic_cast<SmoothWrr*>(Make(Algorithm::kRoundRobin, rng).get()));
  CHECK(dynamic_cast<LeastConn*>(Make(Algorithm::kLeastConn, rng).get()));
  CHECK(dynamic_cast<P2c*>(Make(Algorithm::kP2c, rng).get()));
  CHECK(dynamic_cast<RingHash*>(Make(Algorithm::kRingHash, rng).get()));
  CHECK(dynamic_cast<Maglev*>(Make(Algorithm::kMaglev, rng).get()));
  CHECK(dynamic_cast<RandomPicker*>(Make(Algorithm::kRandom, rng).get()));
}

TEST_CASE("every algorithm gives no backend when none is eligible") {
  for (Algorithm algorithm : kAll) {
    CAPTURE(Name(algorithm));
    Rng rng(1);
    auto picker = Make(algorithm, rng);
    PickInput keyed;
    keyed.hash = KeyHash(1);
    CHECK_FALSE(picker->Pick({}).has_value());  // never updated
    CHECK_FALSE(picker->Pick(keyed).has_value());
    std::vector<BackendView> views = EqualViews(3);
    views[0].eligible = false;
    views[1].eligible = false;
    views[2].weight = 0;
    picker->Update(views);
    CHECK_FALSE(picker->Pick({}).has_value());
    CHECK_FALSE(picker->Pick(keyed).has_value());
  }
}

TEST_CASE(
    "every algorithm picks only eligible, untried backends while one "
    "exists, and a tried one when all are tried") {
  for (Algorithm algorithm : kAll) {
    CAPTURE(Name(algorithm));
    Rng rng(2);
    auto picker = Make(algorithm, rng);
    Rng scenario(3);
    for (int round = 0; round < 300; ++round) {
      const size_t n = 1 + scenario.Below(80);
      std::vector<BackendView> views = EqualViews(n);
      std::vector<uint32_t> inflight(n);
      TriedSet tried;
      size_t eligible = 0;
      size_t untried = 0;
      for (size_t i = 0; i < n; ++i) {
        views[i].eligible = scenario.Below(4) != 0;
        views[i].weight = ScaledWeight(1 + scenario.Below(5));
        inflight[i] = scenario.Below(6);
        const bool is_tried = scenario.Below(3) == 0;
        if (is_tried) tried.Insert(i);
        if (views[i].eligible) {
          ++eligible;
          if (!is_tried) ++untried;
        }
      }
      picker->Update(views);
      for (int pick = 0; pick < 20; ++pick) {
        PickInput input;
        input.inflight = inflight;
        input.tried = &tried;
        if (pick % 2 == 1) input.hash = scenario.Next();
        const std::optional<size_t> picked = picker->Pick(input);
        REQUIRE(picked.has_value() == (eligible > 0));
        if (!picked) continue;
        REQUIRE(*picked < n);
        REQUIRE(views[*picked].eligible);
        REQUIRE(tried.Contains(*picked) == (untried == 0));
      }
    }
  }
}

TEST_CASE("every algorithm lets a single-backend cluster retry") {
  for (Algorithm algorithm : kAll) {
    CAPTURE(Name(algorithm));
    Rng rng(4);
    auto picker = Make(algorithm, rng);
    picker->Update(EqualViews(1));
    TriedSet tried;
    tried.Insert(0);
    PickInput input;
    input.tried = &tried;
    CHECK(picker->Pick(input) == 0u);
    input.hash = KeyHash(9);
    CHECK(picker->Pick(input) == 0u);
  }
}

TEST_CASE(
    "every weighted algorithm shares 100,000 picks within 2% of the "
    "weights") {
  for (Algorithm algorithm : kAll) {
    CAPTURE(Name(algorithm));
    Rng rng(42);
    PickerOptions options;
    options.algorithm = algorithm;
    // The ring's resolution, not the algorithm, limits ring-hash shares; see
    // ring_hash_test.cc for the default.
    options.ring_points_per_weight = 10000;
    auto picker = MakePicker(options, rng);
    picker->Update(Views({5, 3, 2}));
    const std::vector<size_t> counts = Keyed(algorithm)
                                           ? CountKeyedPicks(*picker, 3, 100000)
                                           : CountPicks(*picker, 3, 100000);
    CheckShares(counts, {5, 3, 2}, 0.02);
  }
}

TEST_CASE("Pick() allocates nothing, even for retries and bounded load") {
  for (Algorithm algorithm : kAll) {
    CAPTURE(Name(algorithm));
    Rng rng(5);
    PickerOptions options;
    options.algorithm = algorithm;
    options.hash_balance_factor = 1.25;
    auto picker = MakePicker(options, rng);
    std::vector<BackendView> views = EqualViews(200);
    for (size_t i = 0; i < views.size(); i += 7) views[i].eligible = false;
    picker->Update(views);
    std::vector<uint32_t> inflight(views.size(), 3);
    TriedSet tried;
    for (size_t i = 0; i < views.size(); i += 2) tried.Insert(i);

    std::vector<uint64_t> hashes;
    for (int key = 0; key < 1000; ++key) hashes.push_back(KeyHash(key));

    // No doctest assertion inside the measured loop: they may allocate.
    bool all_picked = true;
    const long before = testing::AllocationCount();
    for (int pick = 0; pick < 1000; ++pick) {
      PickInput input;
      input.inflight = inflight;
      input.tried = pick % 2 == 0 ? &tried : nullptr;
      if (pick % 3 != 0) input.hash = hashes[pick];
      const std::optional<size_t> picked = picker->Pick(input);
      if (!picked) {
        all_picked = false;
        continue;
      }
      ++inflight[*picked];
    }
    const long allocations = testing::AllocationCount() - before;
    CHECK(all_picked);
    CHECK(allocations == 0);
  }
}

}  // namespace
}  // namespace tandem::algorithms
