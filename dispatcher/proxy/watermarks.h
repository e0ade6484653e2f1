// Buffer marks shared by both sides of the proxy (docs/limits.md).
#pragma once

#include <cstddef>

namespace tandem::dispatcher {

// Back-pressure (bytes queued for a peer): stop reading the other side above
// the high mark, resume once drained to the low mark.
inline constexpr size_t kOutputHighWater = 256 * 1024;
inline constexpr size_t kOutputLowWater = 64 * 1024;
// At most this much is read from a socket at once.
inline constexpr size_t kMaxSingleRead = 64 * 1024;

}  // namespace tandem::dispatcher
