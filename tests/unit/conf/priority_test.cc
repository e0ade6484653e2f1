// Tests of ParsePriority: the names, the digits, and everything else.
#include "conf/priority.h"

#include <doctest/doctest.h>

namespace tandem::conf {
namespace {

TEST_CASE("a priority is a name or a digit from 0 (highest) to 7") {
  CHECK(ParsePriority("high") == kHighPriority);
  CHECK(ParsePriority("HIGH") == kHighPriority);
  CHECK(ParsePriority("Normal") == kNormalPriority);
  CHECK(ParsePriority("low") == kLowPriority);
  for (char digit = '0'; digit <= '7'; ++digit) {
    CHECK(ParsePriority(std::string_view(&digit, 1)) == digit - '0');
  }
  CHECK(kHighPriority < kNormalPriority);
  CHECK(kNormalPriority < kLowPriority);
}

TEST_CASE("anything else names no priority") {
  for (std::string_view value :
       {"", "8", "9", "-1", "07", "highest", "hig", "lowe", " low", "0 "}) {
    CAPTURE(value);
    CHECK_FALSE(ParsePriority(value).has_value());
  }
}

}  // namespace
}  // namespace tandem::conf
