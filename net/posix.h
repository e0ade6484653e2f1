// Small conversions for system and libevent calls, shared by health/ and
// dispatcher/.
#pragma once

#include <string.h>
#include <sys/time.h>

#include <chrono>
#include <string>

namespace tandem::net {

// A duration as a timeval for libevent timers; a negative one is zero.
inline timeval ToTimeval(std::chrono::nanoseconds d) {
  if (d.count() < 0) d = std::chrono::nanoseconds(0);
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return {static_cast<time_t>(micros / 1000000),
          static_cast<suseconds_t>(micros % 1000000)};
}

// The text of errno value `error`.
inline std::string ErrorText(int error) {
  char buffer[128];
  // GNU strerror_r: returns a pointer to the text, maybe not into `buffer`.
  return strerror_r(error, buffer, sizeof(buffer));
}

}  // namespace tandem::net
