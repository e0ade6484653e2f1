// The table readers, one per table of the file, as load.cc calls them: each
// reads the key `key` of its parent table (a CustomKey reader, conf/key.h)
// and returns whether its value was good. Internal to conf/.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "conf/key.h"
#include "conf/table_reader.h"

namespace tandem::conf {

// A listen address and where it is written, for the overlap check.
struct ListenSite {
  std::string owner;  // "listeners.web" or "admin"
  SocketAddress address;
  Position position;
};

// A value load.cc checks against another table, and where it is written.
struct Site {
  std::string key;  // dotted path: "listeners.web.cluster"
  Position position;
};

// What the readers fill: the Config, and where the values are written that
// load.cc checks across tables.
struct Document {
  Config config;
  // Parallel to config.clusters: where each cluster is defined.
  std::vector<Position> cluster_positions;
  // Parallel to config.listeners: each one's `cluster` key; meaningful when
  // Listener::cluster is not empty, i.e. was read.
  std::vector<Site> cluster_references;
  // Listeners whose listen address is good, in file order.
  std::vector<ListenSite> listener_sites;
  // The admin listener's address, when good (or the default).
  std::optional<ListenSite> admin_site;
};

// read_global.cc: [global] and [admin].
bool ReadGlobal(TableReader& root, std::string_view key, Document& document);
bool ReadAdmin(TableReader& root, std::string_view key, Document& document);
const Schema& GlobalSchema();
const Schema& AdminSchema();

// read_listener.cc: [listeners.NAME], their TLS and certificates.
bool ReadListeners(TableReader& root, std::string_view key, Document& document);
const Schema& ListenerSchema();
const Schema& CertificateSchema();

// read_cluster.cc: [clusters.NAME] and their upstream TLS keys.
bool ReadClusters(TableReader& root, std::string_view key, Document& document);
const Schema& ClusterSchema();

// read_health.cc: [clusters.NAME.health] and [clusters.NAME.outlier].
bool ReadHealth(TableReader& cluster_reader, std::string_view key,
                Cluster& cluster);
bool ReadOutlier(TableReader& cluster_reader, std::string_view key,
                 Cluster& cluster);
const Schema& HealthSchema();
const Schema& OutlierSchema();

// The cluster's `policy` key, which ReadBackends needs read already: the
// cluster's keys declare it before `backends`.
inline constexpr std::string_view kClusterPolicy = "policy";

inline constexpr std::pair<std::string_view, Role> kRoles[] = {
    {"primary", Role::kPrimary}, {"backup", Role::kBackup}};
inline constexpr std::pair<std::string_view, Standby> kStandbys[] = {
    {"hot", Standby::kHot}, {"warm", Standby::kWarm}, {"cold", Standby::kCold}};

// read_backend.cc: [[clusters.NAME.backends]].
bool ReadBackends(TableReader& cluster_reader, std::string_view key,
                  Cluster& cluster);
const Schema& BackendSchema();

// read_rate_limit.cc: a listener's or a cluster's [*.rate_limit].
bool ReadRateLimit(TableReader& parent, std::string_view key,
                   const Schema& schema, std::optional<RateLimit>& limit);
const Schema& ListenerRateLimitSchema();
const Schema& ClusterRateLimitSchema();
// [clusters.NAME.adaptive] (in read_rate_limit.cc, with the other overload
// tables).
const Schema& AdaptiveSchema();
bool ReadAdaptive(TableReader& parent, std::string_view key,
                  AdaptiveConcurrency& adaptive);
// RFC 9110 token characters (header and cookie names).
bool ValidToken(std::string_view name);

// read_dns.cc: [[clusters.NAME.dns]]; the cluster's `policy` and `backends`
// are read before.
bool ReadDnsSources(TableReader& cluster_reader, std::string_view key,
                    Cluster& cluster);
const Schema& DnsSchema();

}  // namespace tandem::conf
