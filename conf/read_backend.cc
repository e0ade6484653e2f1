// [[clusters.NAME.backends]]: each backend's address, weight, role and
// standby, and what must hold across the backends of one cluster.
#include <string>
#include <utility>
#include <vector>

#include "conf/readers.h"

namespace tandem::conf {
namespace {

constexpr std::string_view kAddress = "address";
constexpr std::string_view kRole = "role";
constexpr std::string_view kStandby = "standby";
constexpr std::string_view kActivate = "activate";
constexpr std::string_view kDeactivate = "deactivate";

std::span<const Key<Backend>> BackendKeys() {
  static const Key<Backend> keys[] = {
      AddressKey(kAddress, &Backend::address, PortZero::kRejected)
          .Required("every backend needs an address"),
      IntegerKey("weight", &Backend::weight, 1, 256),
      EnumKey(kRole, &Backend::role, "role", kRoles),
      EnumKey(kStandby, &Backend::standby, "standby", kStandbys),
      StringKey(kActivate, &Backend::activate),
      StringKey(kDeactivate, &Backend::deactivate),
      IntegerKey("max_inflight", &Backend::max_inflight, 0, 1000000),
      IntegerKey("max_connections", &Backend::max_connections, 0, 1000000),
  };
  return keys;
}

// Standby is for backups, the commands for cold backups, which need one to
// start them.
void CheckStandby(TableReader& reader, const Backend& backend) {
  if (reader.Bad(kRole) || reader.Bad(kStandby)) return;
  const bool is_backup = backend.role == Role::kBackup;
  if (!is_backup && reader.Has(kStandby)) {
    reader.Error(*reader.Find(kStandby), kStandby,
                 "standby applies to backups only; set role = \"backup\" "
                 "or remove it");
  }
  const bool cold = is_backup && backend.standby == Standby::kCold;
  if (cold && !reader.Has(kActivate)) {
    reader.MissingKey(kActivate,
                      "a cold backup needs an activate command to start it");
  }
  for (std::string_view key : {kActivate, kDeactivate}) {
    if (!cold && reader.Has(key)) {
      reader.Error(*reader.Find(key), key,
                   "runs only for cold backups (role = \"backup\", standby "
                   "= \"cold\")");
    }
  }
}

}  // namespace

const Schema& BackendSchema() {
  static const Schema schema =
      MakeSchema("[[clusters.NAME.backends]]", BackendKeys());
  return schema;
}

bool ReadBackends(TableReader& cluster_reader, std::string_view key,
                  Cluster& cluster) {
  const std::string path = cluster_reader.KeyPath(key);
  // Where each backend read came from, parallel to cluster.backends.
  struct Site {
    size_t index = 0;  // in the TOML array
    bool address_ok = false;
    Position address;
    const toml::node* role = nullptr;
  };
  std::vector<Site> sites;
  size_t primaries = 0;
  const bool read = ReadTables(
      cluster_reader, key, BackendSchema(),
      "a cluster needs at least one backend",
      [&](size_t i, TableReader& reader) {
        Backend backend;
        ReadKeys(reader, BackendKeys(), backend);
        CheckStandby(reader, backend);
        if (!reader.Bad(kRole) && backend.role == Role::kPrimary) ++primaries;
        const Site site{i, reader.Good(kAddress), reader.PositionOf(kAddress),
                        reader.Find(kRole)};
        for (size_t j = 0; j < sites.size() && site.address_ok; ++j) {
          if (sites[j].address_ok &&
              SameEndpoint(cluster.backends[j].address, backend.address)) {
            reader.context().Error(
                site.address, reader.KeyPath(kAddress),
                "duplicate backend " + backend.address.text +
                    ": same address as " + path + "[" +
                    std::to_string(sites[j].index) + "] (line " +
                    std::to_string(sites[j].address.line) + ")");
            break;
          }
        }
        sites.push_back(site);
        cluster.backends.push_back(std::move(backend));
      });
  if (!read) return false;
  if (cluster_reader.Bad(kClusterPolicy)) return true;
  if (cluster.policy == Policy::kAllActive) {
    for (size_t i = 0; i < sites.size(); ++i) {
      if (cluster.backends[i].role == Role::kBackup &&
          sites[i].role != nullptr) {
        cluster_reader.context().Error(
            Where(sites[i].role->source()),
            path + "[" + std::to_string(sites[i].index) + "]." +
                std::string(kRole),
            "backups take traffic only with policy = \"primary-backup\"; "
            "cluster " +
                cluster.name + " is all-active");
      }
    }
  } else if (primaries == 0) {
    cluster_reader.Warning(
        *cluster_reader.Find(key), key,
        "primary-backup cluster without a primary: backups always serve");
  }
  return true;
}

}  // namespace tandem::conf
