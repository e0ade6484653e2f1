// Placement hashing shared by ring hash and Maglev.
#include "algorithms/hash_walk.h"

#include <string_view>

#include "algorithms/hash.h"

namespace tandem::algorithms {

uint64_t HashWords(uint64_t a, uint64_t b, uint64_t seed) {
  // Explicit byte order, so a backend's points are the same on every
  // machine.
  char bytes[16];
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>(a >> (8 * i));
    bytes[8 + i] = static_cast<char>(b >> (8 * i));
  }
  return Hash64(std::string_view(bytes, sizeof bytes), seed);
}

}  // namespace tandem::algorithms
