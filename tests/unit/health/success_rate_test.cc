// Tests of the success-rate and failure-percentage rules: one flaky worker of
// three is ejected, a cluster failing alike is not, volume and host minimums
// hold, and the reasons give the figures.
#include "health/success_rate.h"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

namespace tandem::health {
namespace {

RateSample Rate(uint64_t successes, uint64_t failures) {
  return RateSample{successes, failures};
}

TEST_CASE("one worker failing 20 % among three healthy peers is ejected") {
  const std::vector<RateSample> samples = {Rate(1000, 0), Rate(800, 200),
                                           Rate(1000, 0)};
  const std::vector<RateOutlier> out = RateOutliers(samples, RateSettings{});
  REQUIRE(out.size() == 1);
  CHECK(out[0].index == 1);
  CHECK(out[0].reason ==
        "success rate 80.0 % over 1000 requests, the others 100.0 % (ejected "
        "below 90.5 %)");
}

TEST_CASE("where Envoy's rule, the host in its own mean, keeps it") {
  // All three in the mean (0.933) and the deviation (0.094): the threshold
  // 0.933 - 1.9 x 0.094 = 0.754 is below 0.8, so Envoy would keep the flaky
  // worker. Compared with the others only, it goes.
  const double rates[] = {1.0, 0.8, 1.0};
  const double mean = (rates[0] + rates[1] + rates[2]) / 3;
  double squares = 0;
  for (double r : rates) squares += (r - mean) * (r - mean);
  const double envoy_threshold = mean - 1.9 * std::sqrt(squares / 3);
  CHECK(rates[1] > envoy_threshold);
  const std::vector<RateSample> samples = {Rate(1000, 0), Rate(800, 200),
                                           Rate(1000, 0)};
  CHECK(RateOutliers(samples, RateSettings{}).size() == 1);
}

TEST_CASE("a cluster whose workers all fail alike ejects none") {
  const std::vector<RateSample> samples = {Rate(800, 200), Rate(790, 210),
                                           Rate(810, 190), Rate(805, 195)};
  CHECK(RateOutliers(samples, RateSettings{}).empty());
}

TEST_CASE("a few failures more than the others is not an outlier") {
  const std::vector<RateSample> samples = {Rate(1000, 0), Rate(930, 70),
                                           Rate(1000, 0)};
  CHECK(RateOutliers(samples, RateSettings{}).empty());
}

TEST_CASE("too little volume or too few hosts: no judgement") {
  CHECK(RateOutliers(
            std::vector<RateSample>{Rate(99, 0), Rate(0, 99), Rate(99, 0)},
            RateSettings{})
            .empty());
  CHECK(RateOutliers(std::vector<RateSample>{Rate(1000, 0), Rate(0, 1000)},
                     RateSettings{})
            .empty());
  RateSettings two;
  two.minimum_hosts = 2;
  CHECK(RateOutliers(std::vector<RateSample>{Rate(1000, 0), Rate(0, 1000)}, two)
            .size() == 1);
  // A host below the volume is neither judged nor counted among the others.
  const std::vector<RateSample> samples = {Rate(1000, 0), Rate(800, 200),
                                           Rate(1000, 0), Rate(0, 50)};
  const std::vector<RateOutlier> out = RateOutliers(samples, RateSettings{});
  REQUIRE(out.size() == 1);
  CHECK(out[0].index == 1);
}

TEST_CASE("failure percentage at the threshold ejects, with its own reason") {
  // Two hosts failing 90 % and 85 %: the failure-percentage rule ejects both
  // (the cap decides how many go).
  const std::vector<RateSample> samples = {Rate(100, 900), Rate(150, 850),
                                           Rate(1000, 0)};
  const std::vector<RateOutlier> out = RateOutliers(samples, RateSettings{});
  REQUIRE(out.size() == 2);
  CHECK(out[0].reason ==
        "failure percentage 90.0 % over 1000 requests, at or above 85 %");
  CHECK(out[1].index == 1);
  RateSettings off;
  off.failure_percentage_threshold = 0;
  // Without it, each failing host is compared with the others (one at 1.0,
  // one at 0.1 or 0.15): their deviation is wide, so neither is below
  // mean - 1.9 x stdev.
  CHECK(RateOutliers(samples, off).empty());
}

}  // namespace
}  // namespace tandem::health
