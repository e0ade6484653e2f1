// MakePicker: the one place that maps an Algorithm to its class; and its name.
#include "algorithms/picker.h"

#include "algorithms/least_conn.h"
#include "algorithms/maglev.h"
#include "algorithms/p2c.h"
#include "algorithms/p2c_ewma.h"
#include "algorithms/random_picker.h"
#include "algorithms/ring_hash.h"
#include "algorithms/smooth_wrr.h"

namespace tandem::algorithms {

const char* AlgorithmName(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kRoundRobin:
      return "round-robin";
    case Algorithm::kLeastConn:
      return "least-conn";
    case Algorithm::kP2c:
      return "p2c";
    case Algorithm::kP2cEwma:
      return "p2c-ewma";
    case Algorithm::kRingHash:
      return "ring-hash";
    case Algorithm::kMaglev:
      return "maglev";
    case Algorithm::kRandom:
      return "random";
  }
  return "?";
}

std::unique_ptr<Picker> MakePicker(const PickerOptions& options, Rng& rng) {
  switch (options.algorithm) {
    case Algorithm::kRoundRobin:
      return std::make_unique<SmoothWrr>();
    case Algorithm::kLeastConn:
      return std::make_unique<LeastConn>();
    case Algorithm::kP2c:
      return std::make_unique<P2c>(rng);
    case Algorithm::kP2cEwma:
      return std::make_unique<P2cEwma>(rng);
    case Algorithm::kRingHash:
      return std::make_unique<RingHash>(options);
    case Algorithm::kMaglev:
      return std::make_unique<Maglev>(options);
    case Algorithm::kRandom:
      return std::make_unique<RandomPicker>(rng);
  }
  return std::make_unique<SmoothWrr>();
}

}  // namespace tandem::algorithms
