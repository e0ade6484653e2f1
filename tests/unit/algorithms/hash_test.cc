// Hash64 is XXH64 bit for bit; Mix64 spreads.
#include "algorithms/hash.h"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

namespace tandem::algorithms {
namespace {

TEST_CASE("Hash64 matches the XXH64 reference values") {
  // From the reference library (libxxhash 0.8), seeds 0 and 1; the inputs
  // cover the empty, tail-only and 32-byte-stripe paths.
  CHECK(Hash64("") == 0xef46db3751d8e999ULL);
  CHECK(Hash64("a") == 0xd24ec4f1a98c6e5bULL);
  CHECK(Hash64("abc") == 0x44bc2cf5ad770999ULL);
  CHECK(Hash64("hello world") == 0x45ab6734b21e6968ULL);
  CHECK(Hash64("Nobody inspects the spammish repetition") ==
        0xfbcea83c8a378bf1ULL);
  CHECK(Hash64("0123456789abcdef0123456789abcdef0123") ==
        0xc4255ba3d1af5461ULL);
  CHECK(Hash64("", 1) == 0xd5afba1336a3be4bULL);
  CHECK(Hash64("abc", 1) == 0xbea9ca8199328908ULL);
  CHECK(Hash64("0123456789abcdef0123456789abcdef0123", 1) ==
        0xd0e9fb2270defadcULL);
}

TEST_CASE("Hash64 spreads similar keys evenly over buckets") {
  std::vector<int> buckets(16, 0);
  for (int i = 0; i < 160000; ++i) {
    ++buckets[Hash64("user-" + std::to_string(i)) >> 60];
  }
  for (int count : buckets)
    CHECK(count == doctest::Approx(10000).epsilon(0.03));
}

TEST_CASE("Mix64 keeps small distinct inputs distinct and spread") {
  std::set<uint64_t> seen;
  std::vector<int> buckets(16, 0);
  for (uint64_t i = 0; i < 16000; ++i) {
    seen.insert(Mix64(i));
    ++buckets[Mix64(i) >> 60];
  }
  CHECK(seen.size() == 16000);
  for (int count : buckets) CHECK(count == doctest::Approx(1000).epsilon(0.1));
}

}  // namespace
}  // namespace tandem::algorithms
