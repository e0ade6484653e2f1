// Ring hash: stable keys, weighted shares, minimal disruption, clockwise
// walking past tried backends, bounded load.
#include "algorithms/ring_hash.h"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::CountKeyedPicks;
using testing::EqualViews;
using testing::KeyHash;
using testing::Sequence;
using testing::Views;

constexpr size_t kKeys = 100000;

size_t PickKey(Picker& picker, size_t key) {
  PickInput input;
  input.hash = KeyHash(key);
  const std::optional<size_t> picked = picker.Pick(input);
  REQUIRE(picked.has_value());
  return *picked;
}

TEST_CASE("ring hash sends the same key to the same backend") {
  RingHash picker({});
  picker.Update(EqualViews(10));
  RingHash rebuilt({});
  rebuilt.Update(EqualViews(10));
  for (size_t key = 0; key < 1000; ++key) {
    const size_t first = PickKey(picker, key);
    REQUIRE(PickKey(picker, key) == first);
    REQUIRE(PickKey(rebuilt, key) == first);
  }
}

TEST_CASE("ring hash gives a backend points in proportion to its weight") {
  PickerOptions options;
  options.ring_points_per_weight = 160;
  RingHash picker(options);
  picker.Update(Views({5, 1, 1}));
  CHECK(picker.point_count() == 7 * 160);
}

TEST_CASE("ring hash shares keys within 2% of the weights with a fine ring") {
  // A backend's share of the ring deviates by about 1/sqrt(its points);
  // 10,000 points per weight bring that under 1%.
  PickerOptions options;
  options.ring_points_per_weight = 10000;
  RingHash picker(options);
  picker.Update(Views({5, 1, 1}));
  CheckShares(CountKeyedPicks(picker, 3, kKeys), {5, 1, 1}, 0.02);
  picker.Update(Views({1, 2, 3, 4}));
  CheckShares(CountKeyedPicks(picker, 4, kKeys), {1, 2, 3, 4}, 0.02);
}

TEST_CASE("ring hash with the default 160 points per weight stays within 15%") {
  RingHash picker({});
  picker.Update(Views({5, 1, 1}));
  CheckShares(CountKeyedPicks(picker, 3, kKeys), {5, 1, 1}, 0.15);
  picker.Update(EqualViews(10));
  CheckShares(CountKeyedPicks(picker, 10, kKeys),
              {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 0.15);
}

TEST_CASE(
    "removing 1 of N backends moves only that backend's keys, about 1/N") {
  for (size_t n : {5, 10, 50}) {
    CAPTURE(n);
    RingHash before({});
    std::vector<BackendView> views = EqualViews(n);
    before.Update(views);
    RingHash after({});
    views[n / 2].eligible = false;
    after.Update(views);

    size_t moved = 0;
    for (size_t key = 0; key < kKeys; ++key) {
      const size_t old_backend = PickKey(before, key);
      const size_t new_backend = PickKey(after, key);
      if (old_backend == new_backend) continue;
      ++moved;
      REQUIRE(old_backend == n / 2);  // no key of a survivor moves
    }
    const double share = static_cast<double>(moved) / kKeys;
    CHECK(share > 0.5 / n);
    CHECK(share < 1.5 / n);
  }
}

TEST_CASE("a reload without one backend keeps every other backend's keys") {
  // Positions shift when a backend leaves the file; ids keep the ring.
  std::vector<BackendView> views = EqualViews(8);
  RingHash before({});
  before.Update(views);
  std::vector<BackendView> reloaded = views;
  reloaded.erase(reloaded.begin() + 2);
  RingHash after({});
  after.Update(reloaded);
  for (size_t key = 0; key < kKeys; ++key) {
    const size_t old_backend = PickKey(before, key);
    if (old_backend == 2) continue;
    REQUIRE(reloaded[PickKey(after, key)].id == views[old_backend].id);
  }
}

TEST_CASE("a backend that joins takes keys only for itself") {
  std::vector<BackendView> views = EqualViews(9);
  RingHash before({});
  before.Update(views);
  views.push_back(EqualViews(10).back());
  RingHash after({});
  after.Update(views);
  size_t moved = 0;
  for (size_t key = 0; key < kKeys; ++key) {
    const size_t new_backend = PickKey(after, key);
    if (PickKey(before, key) == new_backend) continue;
    ++moved;
    REQUIRE(new_backend == 9u);
  }
  CHECK(moved > kKeys / 20);
}

TEST_CASE("a tried home backend sends the key clockwise, as if it had left") {
  std::vector<BackendView> views = EqualViews(6);
  RingHash picker({});
  picker.Update(views);
  for (size_t key = 0; key < 2000; ++key) {
    const size_t home = PickKey(picker, key);
    std::vector<BackendView> without = views;
    without[home].eligible = false;
    RingHash shrunk({});
    shrunk.Update(without);

    TriedSet tried;
    tried.Insert(home);
    PickInput input;
    input.hash = KeyHash(key);
    input.tried = &tried;
    REQUIRE(picker.Pick(input) == PickKey(shrunk, key));
  }
}

TEST_CASE(
    "ring hash returns a tried backend when every eligible one is tried") {
  RingHash picker({});
  picker.Update(EqualViews(3));
  TriedSet tried;
  for (size_t i = 0; i < 3; ++i) tried.Insert(i);
  PickInput input;
  input.hash = KeyHash(1);
  input.tried = &tried;
  CHECK(picker.Pick(input) == PickKey(picker, 1));
}

TEST_CASE("bounded load caps a hot key's backend and spills the rest") {
  PickerOptions options;
  options.hash_balance_factor = 1.25;
  RingHash picker(options);
  picker.Update(EqualViews(4));
  const size_t home = PickKey(picker, 7);

  // One hot key, requests that never finish: the home backend may hold at
  // most ceil(ceil(1.25 * (total + 1)) / 4) in flight.
  std::vector<uint32_t> inflight(4, 0);
  for (uint32_t total = 0; total < 400; ++total) {
    PickInput input;
    input.hash = KeyHash(7);
    input.inflight = inflight;
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    ++inflight[*picked];
    const uint32_t slots = static_cast<uint32_t>(std::ceil(1.25 * (total + 1)));
    REQUIRE(inflight[*picked] <= (slots + 3) / 4);
  }
  CHECK(inflight[home] == 125);
  for (uint32_t count : inflight) CHECK(count <= 125);
}

TEST_CASE("bounded load uses the cluster's in-flight total when given") {
  PickerOptions options;
  options.hash_balance_factor = 1.25;
  RingHash picker(options);
  picker.Update(EqualViews(4));
  const size_t home = PickKey(picker, 7);
  std::vector<uint32_t> inflight(4, 0);
  inflight[home] = 10;
  PickInput input;
  input.hash = KeyHash(7);
  input.inflight = inflight;
  // Alone with 10 in flight the home is full: ceil(ceil(1.25 * 11) / 4) = 4.
  CHECK(picker.Pick(input) != home);
  // 40 in flight across the cluster (some on draining backends) leave room:
  // ceil(ceil(1.25 * 41) / 4) = 13.
  input.total_inflight = 40;
  CHECK(picker.Pick(input) == home);
}

TEST_CASE("without a balance factor a hot key stays on its backend") {
  RingHash picker({});
  picker.Update(EqualViews(4));
  const size_t home = PickKey(picker, 7);
  std::vector<uint32_t> inflight(4, 0);
  inflight[home] = 1000;
  PickInput input;
  input.hash = KeyHash(7);
  input.inflight = inflight;
  CHECK(picker.Pick(input) == home);
}

TEST_CASE("bounded load leaves keys alone while their backends have room") {
  PickerOptions options;
  options.hash_balance_factor = 1.5;
  RingHash bounded(options);
  RingHash plain({});
  bounded.Update(EqualViews(5));
  plain.Update(EqualViews(5));
  const std::vector<uint32_t> inflight = {2, 2, 3, 2, 2};
  for (size_t key = 0; key < 1000; ++key) {
    PickInput input;
    input.hash = KeyHash(key);
    input.inflight = inflight;
    REQUIRE(bounded.Pick(input) == PickKey(plain, key));
  }
}

TEST_CASE("ring hash without a key falls back to smooth round robin") {
  RingHash picker({});
  picker.Update(Views({5, 1, 1}));
  CHECK(Sequence(picker, 7) == "a a b a c a a");
}

TEST_CASE("ring hash never picks an ineligible backend, none when none is") {
  RingHash picker({});
  std::vector<BackendView> views = EqualViews(4);
  views[1].eligible = false;
  views[3].weight = 0;
  picker.Update(views);
  for (size_t key = 0; key < 5000; ++key) {
    const size_t picked = PickKey(picker, key);
    REQUIRE((picked == 0 || picked == 2));
  }
  for (BackendView& view : views) view.eligible = false;
  picker.Update(views);
  PickInput input;
  input.hash = KeyHash(0);
  CHECK_FALSE(picker.Pick(input).has_value());
  CHECK_FALSE(picker.Pick({}).has_value());
}

}  // namespace
}  // namespace tandem::algorithms
