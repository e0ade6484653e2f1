// The standby/priority policy: which backends serve for every mix of healthy
// primaries and backups, promotion order, cold activation, panic.
#include "algorithms/policy.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace tandem::algorithms {
namespace {

// Backends from a layout ("PPBB": roles in config order) and a health string
// ("+-+-": up or down); backups are hot.
std::vector<PolicyBackend> Cluster(const std::string& layout,
                                   const std::string& health) {
  std::vector<PolicyBackend> backends(layout.size());
  for (size_t i = 0; i < layout.size(); ++i) {
    backends[i].role = layout[i] == 'P' ? Role::kPrimary : Role::kBackup;
    backends[i].state =
        health[i] == '+' ? BackendState::kUp : BackendState::kDown;
    backends[i].id = 1000 + i;
  }
  return backends;
}

// "A" for each backend that may take traffic, "." for the others.
std::string Active(const PolicyResult& result) {
  std::string out;
  for (const BackendView& view : result.views) out += view.eligible ? 'A' : '.';
  return out;
}

PolicyOptions PrimaryBackup(uint32_t min_active, double panic = 0) {
  PolicyOptions options;
  options.policy = Policy::kPrimaryBackup;
  options.min_active = min_active;
  options.panic_threshold = panic;
  return options;
}

struct Row {
  const char* layout;
  const char* health;
  const char* all_active;       // also primary-backup with min_active = 1
  const char* primary_backup2;  // primary-backup with min_active = 2
};

// Every combination of healthy primaries and backups in 1+3, 2+2, 3+1, 4+0.
constexpr Row kRows[] = {
    {"PBBB", "----", "....", "...."}, {"PBBB", "---+", "...A", "...A"},
    {"PBBB", "--+-", "..A.", "..A."}, {"PBBB", "--++", "..A.", "..AA"},
    {"PBBB", "-+--", ".A..", ".A.."}, {"PBBB", "-+-+", ".A..", ".A.A"},
    {"PBBB", "-++-", ".A..", ".AA."}, {"PBBB", "-+++", ".A..", ".AA."},
    {"PBBB", "+---", "A...", "A..."}, {"PBBB", "+--+", "A...", "A..A"},
    {"PBBB", "+-+-", "A...", "A.A."}, {"PBBB", "+-++", "A...", "A.A."},
    {"PBBB", "++--", "A...", "AA.."}, {"PBBB", "++-+", "A...", "AA.."},
    {"PBBB", "+++-", "A...", "AA.."}, {"PBBB", "++++", "A...", "AA.."},
    {"PPBB", "----", "....", "...."}, {"PPBB", "---+", "...A", "...A"},
    {"PPBB", "--+-", "..A.", "..A."}, {"PPBB", "--++", "..A.", "..AA"},
    {"PPBB", "-+--", ".A..", ".A.."}, {"PPBB", "-+-+", ".A..", ".A.A"},
    {"PPBB", "-++-", ".A..", ".AA."}, {"PPBB", "-+++", ".A..", ".AA."},
    {"PPBB", "+---", "A...", "A..."}, {"PPBB", "+--+", "A...", "A..A"},
    {"PPBB", "+-+-", "A...", "A.A."}, {"PPBB", "+-++", "A...", "A.A."},
    {"PPBB", "++--", "AA..", "AA.."}, {"PPBB", "++-+", "AA..", "AA.."},
    {"PPBB", "+++-", "AA..", "AA.."}, {"PPBB", "++++", "AA..", "AA.."},
    {"PPPB", "----", "....", "...."}, {"PPPB", "---+", "...A", "...A"},
    {"PPPB", "--+-", "..A.", "..A."}, {"PPPB", "--++", "..A.", "..AA"},
    {"PPPB", "-+--", ".A..", ".A.."}, {"PPPB", "-+-+", ".A..", ".A.A"},
    {"PPPB", "-++-", ".AA.", ".AA."}, {"PPPB", "-+++", ".AA.", ".AA."},
    {"PPPB", "+---", "A...", "A..."}, {"PPPB", "+--+", "A...", "A..A"},
    {"PPPB", "+-+-", "A.A.", "A.A."}, {"PPPB", "+-++", "A.A.", "A.A."},
    {"PPPB", "++--", "AA..", "AA.."}, {"PPPB", "++-+", "AA..", "AA.."},
    {"PPPB", "+++-", "AAA.", "AAA."}, {"PPPB", "++++", "AAA.", "AAA."},
    {"PPPP", "----", "....", "...."}, {"PPPP", "---+", "...A", "...A"},
    {"PPPP", "--+-", "..A.", "..A."}, {"PPPP", "--++", "..AA", "..AA"},
    {"PPPP", "-+--", ".A..", ".A.."}, {"PPPP", "-+-+", ".A.A", ".A.A"},
    {"PPPP", "-++-", ".AA.", ".AA."}, {"PPPP", "-+++", ".AAA", ".AAA"},
    {"PPPP", "+---", "A...", "A..."}, {"PPPP", "+--+", "A..A", "A..A"},
    {"PPPP", "+-+-", "A.A.", "A.A."}, {"PPPP", "+-++", "A.AA", "A.AA"},
    {"PPPP", "++--", "AA..", "AA.."}, {"PPPP", "++-+", "AA.A", "AA.A"},
    {"PPPP", "+++-", "AAA.", "AAA."}, {"PPPP", "++++", "AAAA", "AAAA"},
};

TEST_CASE(
    "the eligible set for every mix of healthy primaries and backups in "
    "1+3, 2+2, 3+1 and 4+0") {
  for (const Row& row : kRows) {
    CAPTURE(row.layout);
    CAPTURE(row.health);
    const std::vector<PolicyBackend> backends = Cluster(row.layout, row.health);
    PolicyOptions all_active;
    all_active.policy = Policy::kAllActive;
    all_active.min_active = 3;  // ignored by all-active
    CHECK(Active(ApplyPolicy(backends, all_active)) == row.all_active);
    CHECK(Active(ApplyPolicy(backends, PrimaryBackup(1))) == row.all_active);
    CHECK(Active(ApplyPolicy(backends, PrimaryBackup(2))) ==
          row.primary_backup2);
  }
}

TEST_CASE("primary-backup keeps min_active members serving while it can") {
  // For min_active 1 to 4: healthy primaries plus the first healthy backups
  // that fill the gap, and never a backup while primaries suffice.
  for (const Row& row : kRows) {
    for (uint32_t min_active = 1; min_active <= 4; ++min_active) {
      CAPTURE(row.layout);
      CAPTURE(row.health);
      CAPTURE(min_active);
      const PolicyResult result = ApplyPolicy(Cluster(row.layout, row.health),
                                              PrimaryBackup(min_active));
      uint32_t healthy = 0;
      uint32_t healthy_primaries = 0;
      for (size_t i = 0; i < 4; ++i) {
        if (row.health[i] != '+') continue;
        ++healthy;
        if (row.layout[i] == 'P') ++healthy_primaries;
      }
      const uint32_t expected =
          std::max(healthy_primaries, std::min(min_active, healthy));
      CHECK(result.serving == expected);
      CHECK(result.promoted.size() == expected - healthy_primaries);
      CHECK_FALSE(result.panic);
    }
  }
}

TEST_CASE(
    "backups are promoted in config order and demoted when primaries "
    "return") {
  std::vector<PolicyBackend> backends = Cluster("PBBB", "-+++");
  CHECK(ApplyPolicy(backends, PrimaryBackup(2)).promoted ==
        std::vector<size_t>{1, 2});
  backends[1].state = BackendState::kEjected;
  CHECK(ApplyPolicy(backends, PrimaryBackup(2)).promoted ==
        std::vector<size_t>{2, 3});
  backends[0].state = BackendState::kUp;
  CHECK(ApplyPolicy(backends, PrimaryBackup(2)).promoted ==
        std::vector<size_t>{2});
  CHECK(ApplyPolicy(backends, PrimaryBackup(1)).promoted.empty());
}

TEST_CASE("warm backups are promoted as hot ones are") {
  std::vector<PolicyBackend> backends = Cluster("PBB", "-++");
  backends[1].standby = Standby::kWarm;
  const PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.promoted == std::vector<size_t>{1});
  CHECK(Active(result) == ".A.");
}

TEST_CASE("cold backups are activated one at a time and serve once healthy") {
  std::vector<PolicyBackend> backends = Cluster("PBB", "-++");
  backends[1].standby = Standby::kCold;
  backends[2].standby = Standby::kCold;
  backends[1].state = BackendState::kUnknown;
  backends[2].state = BackendState::kUnknown;

  PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.activate == std::vector<size_t>{1});
  CHECK(Active(result) == "...");

  backends[1].activation = Activation::kActivating;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.activate.empty());  // the next waits for this one
  CHECK(Active(result) == "...");

  // Started, but not yet through its health check.
  backends[1].activation = Activation::kActive;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(Active(result) == "...");

  backends[1].state = BackendState::kUp;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(Active(result) == ".A.");
  CHECK(result.promoted == std::vector<size_t>{1});
  CHECK(result.activate.empty());
  CHECK(result.deactivate.empty());
}

TEST_CASE("a backup whose activation failed is skipped for the next one") {
  std::vector<PolicyBackend> backends = Cluster("PBBB", "-+++");
  for (size_t i = 1; i < 4; ++i) backends[i].standby = Standby::kCold;
  backends[1].activation = Activation::kFailed;
  PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.activate == std::vector<size_t>{2});

  backends[2].activation = Activation::kFailed;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.activate == std::vector<size_t>{3});

  backends[3].activation = Activation::kActive;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(Active(result) == "...A");
}

TEST_CASE("a hot backup bridges the gap while a cold one ahead activates") {
  std::vector<PolicyBackend> backends = Cluster("PBB", "-++");
  backends[1].standby = Standby::kCold;
  PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.activate == std::vector<size_t>{1});
  CHECK(Active(result) == "..A");

  backends[1].activation = Activation::kActive;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(Active(result) == ".A.");  // config order wins once it serves
}

TEST_CASE("cold backups are deactivated when no longer needed") {
  std::vector<PolicyBackend> backends = Cluster("PBB", "+++");
  backends[1].standby = Standby::kCold;
  backends[2].standby = Standby::kCold;
  backends[1].activation = Activation::kActive;
  backends[2].activation = Activation::kActivating;
  PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.deactivate == std::vector<size_t>{1, 2});
  CHECK(Active(result) == "A..");

  backends[2].activation = Activation::kInactive;
  backends[0].state = BackendState::kDown;
  result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.deactivate.empty());
  CHECK(result.activate.empty());
}

TEST_CASE("draining, disabled and zero-weight backends take no traffic") {
  std::vector<PolicyBackend> backends = Cluster("PPBBB", "+++++");
  backends[0].state = BackendState::kDraining;
  backends[1].weight = 0;
  backends[2].state = BackendState::kDisabled;
  const PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(Active(result) == "...A.");
}

TEST_CASE("an unchecked primary serves; slow-start ones serve") {
  std::vector<PolicyBackend> backends = Cluster("PPB", "+++");
  backends[0].state = BackendState::kUnknown;
  backends[1].state = BackendState::kSlowStart;
  CHECK(Active(ApplyPolicy(backends, PrimaryBackup(2))) == "AA.");
}

TEST_CASE("the views carry each backend's weight and id") {
  std::vector<PolicyBackend> backends = Cluster("PB", "++");
  backends[0].weight = 37;
  const PolicyResult result = ApplyPolicy(backends, PrimaryBackup(1));
  CHECK(result.views[0].weight == 37);
  CHECK(result.views[0].id == 1000);
  CHECK(result.views[1].id == 1001);
}

TEST_CASE("panic spreads over every member when too few look healthy") {
  std::vector<PolicyBackend> backends = Cluster("PPPP", "+---");
  backends[2].state = BackendState::kEjected;
  PolicyOptions options;
  options.policy = Policy::kAllActive;
  options.panic_threshold = 0.5;
  PolicyResult result = ApplyPolicy(backends, options);
  CHECK(result.panic);
  CHECK(result.serving == 1);
  CHECK(result.target == 4);
  CHECK(Active(result) == "AAAA");

  // Half healthy is not below a 50% threshold.
  backends[1].state = BackendState::kUp;
  result = ApplyPolicy(backends, options);
  CHECK_FALSE(result.panic);
  CHECK(Active(result) == "AA..");
}

TEST_CASE("panic is off at threshold 0, even with nothing healthy") {
  const PolicyResult result =
      ApplyPolicy(Cluster("PPBB", "----"), PrimaryBackup(2));
  CHECK_FALSE(result.panic);
  CHECK(Active(result) == "....");
}

TEST_CASE(
    "panic keeps out backends that refused connections and those an "
    "operator took out") {
  std::vector<PolicyBackend> backends = Cluster("PPPPP", "-----");
  backends[1].refused_recently = true;
  backends[2].state = BackendState::kDraining;
  backends[3].state = BackendState::kDisabled;
  PolicyOptions options;
  options.panic_threshold = 0.3;
  const PolicyResult result = ApplyPolicy(backends, options);
  CHECK(result.panic);
  CHECK(Active(result) == "A...A");
}

TEST_CASE("panic includes running backups but not cold ones that are off") {
  std::vector<PolicyBackend> backends = Cluster("PPBBB", "-----");
  backends[3].standby = Standby::kCold;
  backends[4].standby = Standby::kCold;
  backends[4].activation = Activation::kActive;
  const PolicyResult result = ApplyPolicy(backends, PrimaryBackup(2, 0.5));
  CHECK(result.panic);
  CHECK(Active(result) == "AAA.A");
  CHECK(result.activate == std::vector<size_t>{3});  // still wanted
  CHECK(result.deactivate.empty());
}

TEST_CASE("no panic while promoted backups make up the shortfall") {
  const PolicyResult result =
      ApplyPolicy(Cluster("PPBB", "--++"), PrimaryBackup(2, 0.5));
  CHECK_FALSE(result.panic);
  CHECK(result.serving == 2);
  CHECK(result.target == 2);
  CHECK(Active(result) == "..AA");
}

TEST_CASE("panic never asks to deactivate a running cold backup") {
  std::vector<PolicyBackend> backends = Cluster("PPPB", "+--+");
  backends[3].standby = Standby::kCold;
  backends[3].activation = Activation::kActive;
  PolicyOptions options;
  options.panic_threshold = 0.5;
  const PolicyResult result = ApplyPolicy(backends, options);
  CHECK(result.panic);
  CHECK(result.deactivate.empty());
  CHECK(Active(result) == "AAAA");
}

}  // namespace
}  // namespace tandem::algorithms
