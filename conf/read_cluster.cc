// [clusters.NAME]: policy, algorithm, retries, timeouts, queueing, and the
// TLS used towards its backends; its health, outlier and backends tables
// have their own readers.
#include <algorithm>
#include <cctype>
#include <limits>
#include <string>
#include <utility>

#include "conf/readers.h"
#include "conf/tls_files.h"

namespace tandem::conf {

bool ValidToken(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) !=
               std::string_view::npos;
  });
}

namespace {

constexpr std::string_view kAlgorithm = "algorithm";
constexpr std::string_view kHashKey = "hash_key";
constexpr std::string_view kMinActive = "min_active";
constexpr std::string_view kTryTimeout = "try_timeout";
constexpr std::string_view kRequestTimeout = "request_timeout";
constexpr std::string_view kBackends = "backends";
constexpr std::string_view kDns = "dns";

constexpr std::pair<std::string_view, Policy> kPolicies[] = {
    {"all-active", Policy::kAllActive},
    {"primary-backup", Policy::kPrimaryBackup}};
constexpr std::pair<std::string_view, bool> kConcurrency[] = {
    {"fixed", false}, {"adaptive", true}};
constexpr std::pair<std::string_view, UpstreamProtocol> kProtocols[] = {
    {"http1", UpstreamProtocol::kHttp1},
    {"h2", UpstreamProtocol::kH2},
    {"h2c", UpstreamProtocol::kH2c}};
constexpr std::pair<std::string_view, algorithms::Algorithm> kAlgorithms[] = {
    {"round-robin", algorithms::Algorithm::kRoundRobin},
    {"least-conn", algorithms::Algorithm::kLeastConn},
    {"p2c", algorithms::Algorithm::kP2c},
    {"p2c-ewma", algorithms::Algorithm::kP2cEwma},
    {"ring-hash", algorithms::Algorithm::kRingHash},
    {"maglev", algorithms::Algorithm::kMaglev},
    {"random", algorithms::Algorithm::kRandom}};

constexpr std::pair<std::string_view, int> kProxyVersions[] = {
    {"off", 0}, {"v1", 1}, {"v2", 2}};

bool Hashing(const Cluster& cluster) {
  return cluster.picker.algorithm == algorithms::Algorithm::kRingHash ||
         cluster.picker.algorithm == algorithms::Algorithm::kMaglev;
}

// header:NAME, cookie:NAME, source-ip or path.
bool ReadHashKey(TableReader& reader, std::string_view key, Cluster& cluster) {
  std::string text;
  if (!reader.ReadString(key, &text)) return false;
  const toml::node& node = *reader.Find(key);
  const auto named = [&](std::string_view prefix, HashKey::Kind kind) {
    const std::string name = text.substr(prefix.size());
    if (!ValidToken(name)) {
      reader.Error(node, key,
                   "bad name '" + name + "' after '" + std::string(prefix) +
                       "'; expected a header or cookie name");
      return false;
    }
    cluster.hash_key = HashKey{kind, name};
    return true;
  };
  if (text.starts_with("header:")) {
    return named("header:", HashKey::Kind::kHeader);
  }
  if (text.starts_with("cookie:")) {
    return named("cookie:", HashKey::Kind::kCookie);
  }
  if (text == "source-ip") {
    cluster.hash_key = HashKey{HashKey::Kind::kSourceIp, ""};
    return true;
  }
  if (text == "path") {
    cluster.hash_key = HashKey{HashKey::Kind::kPath, ""};
    return true;
  }
  reader.Error(node, key,
               "unknown hash key \"" + text +
                   "\"; expected header:NAME, cookie:NAME, source-ip or path");
  return false;
}

// A header name.
bool ReadPriorityHeader(TableReader& reader, std::string_view key,
                        Cluster& cluster) {
  std::string text;
  if (!reader.ReadString(key, &text)) return false;
  if (!ValidToken(text)) {
    reader.Error(*reader.Find(key), key, "bad header name '" + text + "'");
    return false;
  }
  cluster.priority_header = std::move(text);
  return true;
}

// try_timeout = "auto" or a duration.
bool ReadTryTimeout(TableReader& reader, std::string_view key,
                    Cluster& cluster) {
  const toml::node* node = reader.Find(key);
  if (node == nullptr) return false;
  if (node->is_string() && node->as_string()->get() == "auto") {
    cluster.try_timeout_auto = true;
    return true;
  }
  if (!reader.ReadDuration(key, ZeroDuration::kRejected, &cluster.try_timeout))
    return false;
  cluster.try_timeout_auto = false;
  return true;
}

std::string BalanceFactorError(const double& factor) {
  if (factor == 0 || factor >= 1.0) return "";
  return "must be 0 (off) or at least 1.0, got " + FormatNumber(factor);
}

// A good hash_key or hash_balance_factor on a cluster that does not hash.
std::string_view NotHashing(const TableReader& reader, std::string_view key,
                            const Cluster& cluster) {
  if (!reader.Good(key) || reader.Bad(kAlgorithm) || Hashing(cluster)) {
    return "";
  }
  return "used by ring-hash and maglev only; this cluster does not hash";
}

std::string_view NotPrimaryBackup(const TableReader& reader, std::string_view,
                                  const Cluster& cluster) {
  if (reader.Bad(kClusterPolicy) || cluster.policy != Policy::kAllActive) {
    return "";
  }
  return "meaningful for policy = \"primary-backup\" only";
}

// [clusters.NAME.rate_limit].
bool ReadClusterRateLimit(TableReader& reader, std::string_view key,
                          Cluster& cluster) {
  return ReadRateLimit(reader, key, ClusterRateLimitSchema(),
                       cluster.rate_limit);
}

// [clusters.NAME.adaptive].
bool ReadClusterAdaptive(TableReader& reader, std::string_view key,
                         Cluster& cluster) {
  return ReadAdaptive(reader, key, cluster.adaptive);
}

std::string_view NotAdaptive(const TableReader&, std::string_view,
                             const Cluster& cluster) {
  return cluster.concurrency_adaptive
             ? ""
             : "has no effect without concurrency = \"adaptive\"";
}

std::span<const Key<Cluster>> ClusterKeys() {
  using algorithms::PickerOptions;
  constexpr auto kPositive = ZeroDuration::kRejected;
  static const Key<Cluster> keys[] = {
      EnumKey(kClusterPolicy, &Cluster::policy, "policy", kPolicies),
      EnumKey(kAlgorithm, Member(&Cluster::picker, &PickerOptions::algorithm),
              "algorithm", kAlgorithms),
      CustomKey(kHashKey, ReadHashKey).UnusedWhen(NotHashing),
      NumberKey("hash_balance_factor",
                Member(&Cluster::picker, &PickerOptions::hash_balance_factor),
                0, 1e6, BalanceFactorError)
          .UnusedWhen(NotHashing),
      IntegerKey(kMinActive, &Cluster::min_active, 1,
                 std::numeric_limits<uint32_t>::max())
          .UnusedWhen(NotPrimaryBackup),
      IntegerKey("retries", &Cluster::retries, 0, 10),
      DurationKey("connect_timeout", &Cluster::connect_timeout, kPositive),
      CustomKey(kTryTimeout, ReadTryTimeout),
      DurationKey(kRequestTimeout, &Cluster::request_timeout, kPositive),
      DurationKey("idle_timeout", &Cluster::idle_timeout, kPositive),
      IntegerKey("max_idle_connections", &Cluster::max_idle_connections, 0,
                 65535),
      NumberKey("panic_threshold", &Cluster::panic_threshold, 0.0, 1.0),
      DurationKey("slow_start", &Cluster::slow_start, ZeroDuration::kAllowed),
      NumberKey("retry_budget", &Cluster::retry_budget, 0.0, 1.0),
      SizeKey("retry_buffer", &Cluster::retry_buffer_bytes, 0,
              64 * 1024 * 1024),
      IntegerKey("queue_size", &Cluster::queue_size, 0, 1000000),
      CustomKey("priority_header", ReadPriorityHeader),
      CustomKey("rate_limit", ReadClusterRateLimit),
      IntegerKey("max_requests", &Cluster::max_requests, 0, 10000000),
      EnumKey("concurrency", &Cluster::concurrency_adaptive, "concurrency",
              kConcurrency),
      CustomKey("adaptive", ReadClusterAdaptive).UnusedWhen(NotAdaptive),
      IntegerKey("max_pending", &Cluster::max_pending, 0, 10000000),
      IntegerKey("max_retries_in_flight", &Cluster::max_retries_in_flight, 0,
                 10000000),
      DurationKey("queue_timeout", &Cluster::queue_timeout, kPositive),
      DurationKey("activate_timeout", &Cluster::activate_timeout, kPositive),
      BoolKey("hang_detection", &Cluster::hang_detection),
      BoolKey("hedge", &Cluster::hedge),
      BoolKey("avoid_slow_backends", &Cluster::avoid_slow_backends),
      EnumKey("send_proxy", &Cluster::send_proxy, "PROXY protocol version",
              kProxyVersions),
      EnumKey("protocol", &Cluster::protocol, "protocol", kProtocols),
      IntegerKey("max_requests_per_connection",
                 &Cluster::max_requests_per_connection, 0,
                 (int64_t{1} << 31) - 1),
      CustomKey("health", ReadHealth),
      CustomKey("outlier", ReadOutlier),
      CustomKey(kBackends, ReadBackends),
      CustomKey(kDns, ReadDnsSources),
  };
  return keys;
}

std::string CaFileError(const std::string& ca_file) {
  std::string error;
  CheckCaFile(ca_file, &error);
  return error;
}

std::string_view WithoutTls(const TableReader&, std::string_view,
                            const UpstreamTls& tls) {
  return tls.enabled ? "" : "has no effect without tls = true";
}

// TLS towards the backends, and their health checks; keys of the cluster's
// own table.
std::span<const Key<UpstreamTls>> UpstreamTlsKeys() {
  static const Key<UpstreamTls> keys[] = {
      BoolKey("tls", &UpstreamTls::enabled),
      FileKey("ca_file", &UpstreamTls::ca_file, CaFileError)
          .UnusedWhen(WithoutTls),
      StringKey("sni", &UpstreamTls::sni).UnusedWhen(WithoutTls),
      StringKey("verify_name", &UpstreamTls::verify_name)
          .UnusedWhen(WithoutTls),
      BoolKey("verify", &UpstreamTls::verify).UnusedWhen(WithoutTls),
  };
  return keys;
}

// What no single key can check: keys that depend on each other.
void CheckCluster(TableReader& reader, Cluster& cluster) {
  if (!reader.Bad(kAlgorithm) && Hashing(cluster) && !reader.Has(kHashKey)) {
    reader.context().Error(
        reader.PositionOf(kAlgorithm), reader.KeyPath(kHashKey),
        "algorithm \"" + reader.Find(kAlgorithm)->as_string()->get() +
            "\" needs hash_key: header:NAME, cookie:NAME, source-ip or path");
  }
  if (cluster.try_timeout_auto) {
    cluster.try_timeout = cluster.request_timeout;  // the ceiling
  } else if (reader.Good(kTryTimeout) && !reader.Bad(kRequestTimeout) &&
             cluster.try_timeout > cluster.request_timeout) {
    reader.Error(*reader.Find(kTryTimeout), kTryTimeout,
                 "try_timeout (" + FormatDuration(cluster.try_timeout) +
                     ") must not exceed request_timeout (" +
                     FormatDuration(cluster.request_timeout) + ")");
  }
  if (cluster.protocol == UpstreamProtocol::kH2 && !cluster.tls.enabled) {
    reader.Error(*reader.Find("protocol"), "protocol",
                 "\"h2\" is HTTP/2 over TLS and needs tls = true; \"h2c\" is "
                 "HTTP/2 without TLS");
  } else if (cluster.protocol == UpstreamProtocol::kH2c &&
             cluster.tls.enabled) {
    reader.Error(*reader.Find("protocol"), "protocol",
                 "\"h2c\" is HTTP/2 without TLS; with tls = true use \"h2\"");
  }
  cluster.tls.alpn_h2 = cluster.protocol == UpstreamProtocol::kH2;
  if (!reader.Has(kBackends) && !reader.Has(kDns)) {
    reader.MissingKey(kBackends, "a cluster needs at least one backend ([[" +
                                     reader.KeyPath(kBackends) +
                                     "]]) or a DNS name to find them ([[" +
                                     reader.KeyPath(kDns) + "]])");
  }
  const size_t backends = cluster.backends.size();
  if (reader.Good(kMinActive) && backends != 0 && cluster.dns.empty() &&
      cluster.min_active > backends) {
    reader.Error(*reader.Find(kMinActive), kMinActive,
                 "min_active = " + std::to_string(cluster.min_active) +
                     " but the cluster has " + std::to_string(backends) +
                     " backend" + (backends == 1 ? "" : "s"));
  }
}

}  // namespace

const Schema& ClusterSchema() {
  static const Schema schema =
      MakeSchema("[clusters.NAME]", ClusterKeys(), UpstreamTlsKeys());
  return schema;
}

bool ReadClusters(TableReader& root, std::string_view key, Document& document) {
  const toml::table* clusters = root.ReadTable(key);
  if (clusters == nullptr) return false;
  if (clusters->empty()) {
    root.Error(*clusters, key,
               "at least one cluster is required ([clusters.NAME])");
    return false;
  }
  for (const auto& [name_key, node] : InFileOrder(*clusters)) {
    Cluster cluster;
    cluster.name = name_key->str();
    const std::string path = root.KeyPath(key) + "." + cluster.name;
    if (!ValidName(cluster.name)) {
      root.context().Error(Where(name_key->source()), path,
                           "bad cluster name; use letters, digits, '-', '_' "
                           "or '.' (at most 64)");
    }
    const toml::table* table = node->as_table();
    if (table == nullptr) {
      root.context().Error(Where(node->source()), path,
                           "expected a table, got " + TypeName(node->type()));
      // Kept by name so that a listener naming it gets no second error.
      document.cluster_positions.push_back(Where(node->source()));
      document.config.clusters.push_back(std::move(cluster));
      continue;
    }
    TableReader reader(root.context(), *table, path, ClusterSchema());
    ReadKeys(reader, ClusterKeys(), cluster);
    ReadKeys(reader, UpstreamTlsKeys(), cluster.tls);
    CheckCluster(reader, cluster);
    document.cluster_positions.push_back(reader.table_position());
    document.config.clusters.push_back(std::move(cluster));
  }
  return true;
}

}  // namespace tandem::conf
