// Nanoseconds per Picker::Pick() for every algorithm at 3, 100 and 1,000
// backends: all eligible; degraded (a tenth ineligible, retrying past one
// tried backend); and, for the hashing ones, with bounded load.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "algorithms/hash.h"
#include "algorithms/picker.h"
#include "algorithms/rng.h"

namespace tandem::algorithms {
namespace {

constexpr size_t kKeys = 4096;  // cycled; a power of two for a cheap mask

enum class Variant { kEligible, kDegraded, kBounded };

const char* Name(Algorithm algorithm) { return AlgorithmName(algorithm); }

const char* Name(Variant variant) {
  switch (variant) {
    case Variant::kEligible:
      return "eligible";
    case Variant::kDegraded:
      return "degraded";
    case Variant::kBounded:
      return "bounded";
  }
  return "?";
}

bool Keyed(Algorithm algorithm) {
  return algorithm == Algorithm::kRingHash || algorithm == Algorithm::kMaglev;
}

void BenchPick(benchmark::State& state, Algorithm algorithm, size_t backends,
               Variant variant) {
  Rng rng(1);
  PickerOptions options;
  options.algorithm = algorithm;
  if (variant == Variant::kBounded) options.hash_balance_factor = 1.25;
  std::unique_ptr<Picker> picker = MakePicker(options, rng);

  Rng setup(2);
  std::vector<BackendView> views(backends);
  std::vector<uint32_t> inflight(backends);
  for (size_t i = 0; i < backends; ++i) {
    views[i].weight = ScaledWeight(1 + static_cast<uint32_t>(setup.Below(3)));
    views[i].eligible = true;
    views[i].id = Hash64("10.0.0." + std::to_string(i) + ":80");
    inflight[i] = static_cast<uint32_t>(setup.Below(8));
  }
  if (variant == Variant::kDegraded) {
    for (size_t i = 0; i < backends; i += 10) views[i].eligible = false;
  }
  picker->Update(views);

  std::vector<uint64_t> hashes(kKeys);
  for (size_t k = 0; k < kKeys; ++k) {
    hashes[k] = Hash64("user-" + std::to_string(k));
  }
  // A retry: the hashing pickers have failed on the key's own backend, the
  // others on one fixed backend.
  std::vector<TriedSet> tried(kKeys);
  if (variant == Variant::kDegraded) {
    for (size_t k = 0; k < kKeys; ++k) {
      size_t failed = 1;
      if (Keyed(algorithm)) {
        PickInput first;
        first.hash = hashes[k];
        first.inflight = inflight;
        failed = picker->Pick(first).value_or(1);
      }
      tried[k].Insert(failed);
    }
  }

  // The dispatcher keeps the cluster's count (for the retry budget too), so
  // bounded load need not sum it per pick.
  uint64_t total_inflight = 0;
  for (uint32_t count : inflight) total_inflight += count;

  size_t k = 0;
  for (auto _ : state) {
    PickInput input;
    input.inflight = inflight;
    if (variant == Variant::kBounded) input.total_inflight = total_inflight;
    if (Keyed(algorithm)) input.hash = hashes[k];
    if (variant == Variant::kDegraded) input.tried = &tried[k];
    benchmark::DoNotOptimize(picker->Pick(input));
    k = (k + 1) & (kKeys - 1);
  }
}

void RegisterAll() {
  constexpr Algorithm kAlgorithms[] = {
      Algorithm::kRoundRobin, Algorithm::kLeastConn, Algorithm::kP2c,
      Algorithm::kRingHash,   Algorithm::kMaglev,    Algorithm::kRandom};
  for (Algorithm algorithm : kAlgorithms) {
    for (size_t backends : {3, 100, 1000}) {
      for (Variant variant :
           {Variant::kEligible, Variant::kDegraded, Variant::kBounded}) {
        if (variant == Variant::kBounded && !Keyed(algorithm)) continue;
        const std::string name = std::string("pick/") + Name(algorithm) + "/" +
                                 std::to_string(backends) + "/" + Name(variant);
        benchmark::RegisterBenchmark(name.c_str(), BenchPick, algorithm,
                                     backends, variant);
      }
    }
  }
}

}  // namespace
}  // namespace tandem::algorithms

int main(int argc, char** argv) {
  tandem::algorithms::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
