// A small, fast, seedable random source (xoshiro256**, Blackman and Vigna),
// injected into pickers so tests can fix the sequence.
#pragma once

#include <cstdint>

namespace tandem::algorithms {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    // splitmix64 spreads any seed, zero included, over the whole state.
    for (auto& word : state_) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }

  uint64_t Next() {
    const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = Rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, bound), bound > 0 (Lemire's multiply-shift).
  uint64_t Below(uint64_t bound) {
    __extension__ typedef unsigned __int128 Uint128;
    return static_cast<uint64_t>((Uint128{Next()} * bound) >> 64);
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t state_[4];
};

}  // namespace tandem::algorithms
