// 64-bit hashing for consistent hashing: XXH64 (Yann Collet's xxHash,
// bit-exact with the reference implementation) and the murmur3 finalizer.
#pragma once

#include <cstdint>
#include <string_view>

namespace tandem::algorithms {

// XXH64 of `bytes`. The dispatcher turns a request's hash key (header,
// cookie, source address, path) into PickInput::hash with it, and pickers
// place backends by it. Stable across builds and machines: never change it,
// or every key moves on upgrade. Pure; any thread.
[[nodiscard]] uint64_t Hash64(std::string_view bytes, uint64_t seed = 0);

// Spreads a 64-bit value over all 64 bits (murmur3's fmix64). A bijection,
// so distinct inputs stay distinct.
[[nodiscard]] constexpr uint64_t Mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

}  // namespace tandem::algorithms
