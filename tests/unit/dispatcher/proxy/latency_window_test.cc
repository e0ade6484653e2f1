// Tests of LatencyWindow: no percentile before enough samples, the p99 of the
// last 128, and old samples leaving the window.
#include "dispatcher/proxy/latency_window.h"

#include <doctest/doctest.h>

namespace tandem::dispatcher {
namespace {

using std::chrono::microseconds;

TEST_CASE("no p99 before 32 samples, then the 99th percentile") {
  LatencyWindow window;
  for (int i = 1; i <= 31; ++i) window.Add(microseconds(i));
  CHECK_FALSE(window.p99().has_value());
  window.Add(microseconds(32));
  REQUIRE(window.p99().has_value());
  // Of 1..32, the smallest at or above 99 % of them is 32.
  CHECK(*window.p99() == microseconds(32));
  for (int i = 33; i <= 128; ++i) window.Add(microseconds(i));
  // Of 1..128: rank ceil(126.72) = 127, i.e. the value 127.
  CHECK(*window.p99() == microseconds(127));
}

TEST_CASE("the 95th percentile, for hedging's delay") {
  LatencyWindow window;
  for (int i = 1; i <= 31; ++i) window.Add(microseconds(i));
  CHECK_FALSE(window.p95().has_value());
  for (int i = 32; i <= 128; ++i) window.Add(microseconds(i));
  // Of 1..128: rank ceil(121.6) = 122, i.e. the value 122.
  REQUIRE(window.p95().has_value());
  CHECK(*window.p95() == microseconds(122));
  // 5 slow samples in 128 stay above it; 7 do not (rank 122 of 128).
  LatencyWindow rare;
  for (int i = 0; i < 123; ++i) rare.Add(microseconds(100));
  for (int i = 0; i < 5; ++i) rare.Add(microseconds(500000));
  CHECK(*rare.p95() == microseconds(100));
  CHECK(*rare.p99() == microseconds(500000));
  LatencyWindow often;
  for (int i = 0; i < 121; ++i) often.Add(microseconds(100));
  for (int i = 0; i < 7; ++i) often.Add(microseconds(500000));
  CHECK(*often.p95() == microseconds(500000));
}

TEST_CASE("the window holds the last 128 samples") {
  LatencyWindow window;
  for (int i = 0; i < 128; ++i) window.Add(microseconds(1000000));
  CHECK(*window.p99() == microseconds(1000000));
  // 128 fast samples push every slow one out.
  for (int i = 0; i < 128; ++i) window.Add(microseconds(5));
  CHECK(*window.p99() == microseconds(5));
  // One slow sample in 128 is below the 99th percentile's rank; two are not.
  window.Add(microseconds(900));
  for (int i = 0; i < 31; ++i) window.Add(microseconds(5));
  CHECK(*window.p99() == microseconds(5));
  window.Add(microseconds(900));
  for (int i = 0; i < 31; ++i) window.Add(microseconds(5));
  CHECK(*window.p99() == microseconds(900));
}

TEST_CASE(
    "a slower sample raises the p99 at once; the next recompute decides") {
  LatencyWindow window;
  for (int i = 0; i < 128; ++i) window.Add(microseconds(100));
  CHECK(*window.p99() == microseconds(100));
  window.Add(microseconds(200000));
  CHECK(*window.p99() == microseconds(200000));
  // At the next recompute one slow sample in 128 is below the rank.
  for (int i = 0; i < 31; ++i) window.Add(microseconds(100));
  CHECK(*window.p99() == microseconds(100));
}

TEST_CASE("negative and huge samples are clamped") {
  LatencyWindow window;
  for (int i = 0; i < 32; ++i) window.Add(microseconds(-5));
  CHECK(*window.p99() == microseconds(0));
  for (int i = 0; i < 128; ++i) window.Add(microseconds(INT64_MAX));
  CHECK(*window.p99() == microseconds(UINT32_MAX));
}

}  // namespace
}  // namespace tandem::dispatcher
