// The standby/priority policy: from each backend's role, standby temperature
// and state, which backends may take traffic now (DESIGN.md "Allocation"),
// after nginx's backup tier, HAProxy's backups and Envoy's panic threshold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "algorithms/picker.h"

namespace tandem::algorithms {

enum class Policy { kAllActive, kPrimaryBackup };
enum class Role { kPrimary, kBackup };
enum class Standby { kHot, kWarm, kCold };

// A backend's state as health/ publishes it (the /status `state` values).
// kUp, kSlowStart and kUnknown (not yet checked, as HAProxy starts a server
// up) may take traffic; kDown and kEjected may not, but count under panic;
// kDraining and kDisabled are an operator's word and never take new traffic.
enum class BackendState {
  kUnknown,
  kUp,
  kDown,
  kEjected,
  kDraining,
  kDisabled,
  kSlowStart,
};

// Where a cold backup's activate command stands. The caller runs the
// commands and reports back here.
enum class Activation {
  kInactive,    // not running (or deactivated)
  kActivating,  // activate ran or runs; not yet passing its health check
  kActive,      // activated; serves once its state is kUp or kSlowStart
  kFailed,      // activate failed or timed out: skipped until reset
};

// The name /status shows for an Activation.
constexpr const char* ActivationName(Activation activation) {
  constexpr const char* kNames[] = {"inactive", "activating", "active",
                                    "failed"};
  return kNames[static_cast<int>(activation)];
}

struct PolicyBackend {
  Role role = Role::kPrimary;
  Standby standby = Standby::kHot;  // backups only
  BackendState state = BackendState::kUnknown;
  Activation activation = Activation::kInactive;  // cold backups only
  // Effective weight in BackendView units (ScaledWeight, SlowStartWeight).
  // 0 takes no traffic, as an agent's "weight 0" asks.
  uint32_t weight = kWeightScale;
  uint64_t id = 0;  // passed to BackendView::id
  // The data path saw connections refused lately: excluded even in panic.
  bool refused_recently = false;
};

struct PolicyOptions {
  Policy policy = Policy::kAllActive;
  // primary-backup: backups are promoted while fewer members than this
  // serve. all-active behaves as min_active = 1 whatever is set here.
  uint32_t min_active = 1;
  // 0 = off. In (0, 1]: panic when serving < panic_threshold * target.
  double panic_threshold = 0;
};

struct PolicyResult {
  // Index-aligned with the input; eligible == may take traffic now. Feed to
  // Picker::Update().
  std::vector<BackendView> views;
  // Backups promoted to serve, in promotion (config) order.
  std::vector<size_t> promoted;
  // Cold backups whose activate command should run now: at most one, since
  // cold backups are activated one at a time.
  std::vector<size_t> activate;
  // Cold backups activating or active that are no longer needed: run their
  // deactivate command. Empty under panic, which keeps every running member.
  std::vector<size_t> deactivate;
  bool panic = false;
  uint32_t serving = 0;  // healthy members taking traffic, panic aside
  uint32_t target = 0;   // members that should serve (the panic baseline)
};

// Decides the eligible set for one cluster; `backends` is in config order,
// which is the promotion order of backups. Rules:
//  - A primary serves when its state takes traffic and its weight is > 0.
//  - need = min_active (1 for all-active) minus serving primaries. While
//    need > 0, backups are walked in order: a hot or warm backup that takes
//    traffic is promoted; a cold one is promoted once kActive and kUp or
//    kSlowStart. A cold kInactive backup is asked to activate if no other
//    cold activation is pending; one kActivating is waited for while the
//    walk goes on to the next backups, which bridge the gap meanwhile; a
//    kFailed one is skipped. Each promotion lowers need.
//  - target = min(max(primaries, min_active), backends); serving = members
//    taking traffic. Panic when panic_threshold > 0 and serving <
//    panic_threshold * target: then every primary and every running backup
//    (hot, warm, cold kActive) serves, except kDraining, kDisabled, weight 0
//    and refused_recently ones.
// Pure; any thread; allocates the result.
[[nodiscard]] PolicyResult ApplyPolicy(std::span<const PolicyBackend> backends,
                                       const PolicyOptions& options);

}  // namespace tandem::algorithms
