// [clusters.NAME.health] (active checks) and [clusters.NAME.outlier]
// (passive outlier detection): what decides whether a backend is up.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "conf/readers.h"

namespace tandem::conf {
namespace {

constexpr std::string_view kKind = "kind";
constexpr std::string_view kInterval = "interval";
constexpr std::string_view kTimeout = "timeout";
constexpr std::string_view kFastInterval = "fast_interval";
constexpr std::string_view kDownInterval = "down_interval";
constexpr std::string_view kWarmInterval = "warm_interval";
constexpr std::string_view kJitter = "jitter";
constexpr auto kPositive = ZeroDuration::kRejected;

constexpr std::pair<std::string_view, HealthCheck::Kind> kHealthKinds[] = {
    {"http", HealthCheck::Kind::kHttp},
    {"tcp", HealthCheck::Kind::kTcp},
    {"grpc", HealthCheck::Kind::kGrpc},
    {"none", HealthCheck::Kind::kNone}};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// A key of any check, given with kind = "none".
std::string_view NotChecking(const TableReader& reader, std::string_view,
                             const HealthCheck& health) {
  if (reader.Bad(kKind) || health.kind != HealthCheck::Kind::kNone) return "";
  return "has no effect with kind = \"none\"";
}

// A key of HTTP checks only, given with another kind.
std::string_view NotHttp(const TableReader& reader, std::string_view key,
                         const HealthCheck& health) {
  if (reader.Bad(kKind) || (health.kind != HealthCheck::Kind::kTcp &&
                            health.kind != HealthCheck::Kind::kGrpc)) {
    return NotChecking(reader, key, health);
  }
  return health.kind == HealthCheck::Kind::kTcp
             ? "has no effect with kind = \"tcp\""
             : "has no effect with kind = \"grpc\"";
}

// A key of gRPC checks only, given with another kind.
std::string_view NotGrpc(const TableReader& reader, std::string_view,
                         const HealthCheck& health) {
  if (reader.Bad(kKind) || health.kind == HealthCheck::Kind::kGrpc) return "";
  return "has no effect unless kind = \"grpc\"";
}

std::string PathError(const std::string& path) {
  const bool has_space = std::any_of(path.begin(), path.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
  });
  if (path.front() != '/') return "must start with '/', got \"" + path + "\"";
  if (has_space) return "must not contain spaces or control characters";
  return "";
}

std::string MethodError(const std::string& method) {
  const bool token = std::all_of(method.begin(), method.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
  });
  if (token) return "";
  return "must be an upper-case HTTP method such as GET, got \"" + method +
         "\"";
}

std::string HostError(const std::string& host) {
  const bool clean = std::none_of(host.begin(), host.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == 0x7f || c == '/';
  });
  return clean ? "" : "must be a host name without spaces or '/'";
}

// A code (200, "204") or an inclusive range ("200-299").
bool ReadExpectStatus(TableReader& reader, std::string_view key,
                      HealthCheck& health) {
  const toml::node& node = *reader.Find(key);
  const auto valid = [](int64_t code) { return code >= 100 && code <= 599; };
  if (const auto* integer = node.as_integer()) {
    if (!valid(integer->get())) {
      reader.Error(node, key,
                   "must be a status code between 100 and 599, got " +
                       std::to_string(integer->get()));
      return false;
    }
    health.expect_status_min = health.expect_status_max =
        static_cast<uint32_t>(integer->get());
    return true;
  }
  const auto* text = node.as_string();
  if (text == nullptr) {
    reader.TypeError(node, key,
                     "a status code such as 200 or a range \"200-399\"");
    return false;
  }
  const std::string& value = text->get();
  int low = 0;
  int high = 0;
  int consumed = 0;
  const bool is_range =
      std::sscanf(value.c_str(), "%3d-%3d%n", &low, &high, &consumed) == 2 &&
      static_cast<size_t>(consumed) == value.size() &&
      std::all_of(value.begin(), value.end(),
                  [](char c) { return IsDigit(c) || c == '-'; });
  const bool is_single = !is_range && value.size() == 3 &&
                         std::all_of(value.begin(), value.end(), IsDigit);
  if (is_single) low = high = std::stoi(value);
  if (!is_range && !is_single) {
    reader.Error(
        node, key,
        "bad status range \"" + value + "\"; expected e.g. 200 or \"200-399\"");
    return false;
  }
  if (!valid(low) || !valid(high) || low > high) {
    reader.Error(node, key,
                 "bad status range \"" + value +
                     "\"; codes must be between 100 and 599, the lower first");
    return false;
  }
  health.expect_status_min = static_cast<uint32_t>(low);
  health.expect_status_max = static_cast<uint32_t>(high);
  return true;
}

std::span<const Key<HealthCheck>> HealthKeys() {
  using H = HealthCheck;
  static const Key<HealthCheck> keys[] = {
      EnumKey(kKind, &H::kind, "health check kind", kHealthKinds),
      StringKey("method", &H::method, MethodError).UnusedWhen(NotHttp),
      StringKey("path", &H::path, PathError).UnusedWhen(NotHttp),
      StringKey("host", &H::host, HostError).UnusedWhen(NotHttp),
      StringKey("expect_body", &H::expect_body).UnusedWhen(NotHttp),
      StringKey("service", &H::service).UnusedWhen(NotGrpc),
      IntegerKey("port", &H::port, 1, 65535).UnusedWhen(NotChecking),
      DurationKey(kInterval, &H::interval, kPositive).UnusedWhen(NotChecking),
      DurationKey(kTimeout, &H::timeout, kPositive).UnusedWhen(NotChecking),
      DurationKey(kFastInterval, &H::fast_interval, kPositive)
          .UnusedWhen(NotChecking),
      DurationKey(kDownInterval, &H::down_interval, kPositive)
          .UnusedWhen(NotChecking),
      DurationKey(kWarmInterval, &H::warm_interval, kPositive)
          .UnusedWhen(NotChecking),
      DurationKey(kJitter, &H::jitter, ZeroDuration::kAllowed)
          .UnusedWhen(NotChecking),
      IntegerKey("rise", &H::rise, 1, 1000).UnusedWhen(NotChecking),
      IntegerKey("fall", &H::fall, 1, 1000).UnusedWhen(NotChecking),
      CustomKey("expect_status", ReadExpectStatus).UnusedWhen(NotHttp),
  };
  return keys;
}

// The intervals: defaults derived from `interval`, and their bounds.
void CheckHealth(TableReader& reader, HealthCheck& health) {
  if (!reader.Has(kTimeout)) {
    // A short interval written alone pulls the default timeout down with it.
    health.timeout = std::min(health.timeout, health.interval);
  } else if (reader.Good(kTimeout) && !reader.Bad(kInterval) &&
             health.timeout > health.interval) {
    reader.Error(*reader.Find(kTimeout), kTimeout,
                 "timeout (" + FormatDuration(health.timeout) +
                     ") must not exceed interval (" +
                     FormatDuration(health.interval) + ")");
  }
  // The other intervals default to a share of interval unless set.
  if (!reader.Good(kFastInterval)) {
    health.fast_interval = std::max<Duration>(
        std::chrono::milliseconds(100),
        std::min<Duration>(health.interval / 4, health.fast_interval));
  }
  if (!reader.Good(kDownInterval)) health.down_interval = health.interval;
  if (!reader.Good(kWarmInterval)) health.warm_interval = health.interval * 5;
  if (reader.Good(kJitter) && health.jitter > health.interval / 2) {
    reader.Error(*reader.Find(kJitter), kJitter,
                 "jitter (" + FormatDuration(health.jitter) +
                     ") must not exceed half the interval (" +
                     FormatDuration(health.interval) + ")");
  }
}

constexpr std::string_view kEjectionTime = "ejection_time";
constexpr std::string_view kMaxEjectionTime = "max_ejection_time";

std::span<const Key<Outlier>> OutlierKeys() {
  static const Key<Outlier> keys[] = {
      IntegerKey("consecutive_failures", &Outlier::consecutive_failures, 1,
                 1000),
      DurationKey(kEjectionTime, &Outlier::ejection_time, kPositive),
      DurationKey(kMaxEjectionTime, &Outlier::max_ejection_time, kPositive),
      IntegerKey("max_ejection_percent", &Outlier::max_ejection_percent, 0,
                 100),
      DurationKey("interval", &Outlier::interval, kPositive),
      IntegerKey("success_rate_minimum_hosts",
                 &Outlier::success_rate_minimum_hosts, 1, 1000),
      IntegerKey("success_rate_request_volume",
                 &Outlier::success_rate_request_volume, 1, 100000000),
      NumberKey("success_rate_stdev_factor",
                &Outlier::success_rate_stdev_factor, 0.0, 100.0),
      IntegerKey("failure_percentage_threshold",
                 &Outlier::failure_percentage_threshold, 0, 100),
  };
  return keys;
}

}  // namespace

const Schema& HealthSchema() {
  static const Schema schema =
      MakeSchema("[clusters.NAME.health]", HealthKeys());
  return schema;
}

const Schema& OutlierSchema() {
  static const Schema schema =
      MakeSchema("[clusters.NAME.outlier]", OutlierKeys());
  return schema;
}

bool ReadHealth(TableReader& cluster_reader, std::string_view key,
                Cluster& cluster) {
  const toml::table* table = cluster_reader.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(cluster_reader.context(), *table,
                     cluster_reader.KeyPath(key), HealthSchema());
  // Without the table there are no checks; with it, HTTP ones by default.
  cluster.health.kind = HealthCheck::Kind::kHttp;
  ReadKeys(reader, HealthKeys(), cluster.health);
  CheckHealth(reader, cluster.health);
  return true;
}

bool ReadOutlier(TableReader& cluster_reader, std::string_view key,
                 Cluster& cluster) {
  const toml::table* table = cluster_reader.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(cluster_reader.context(), *table,
                     cluster_reader.KeyPath(key), OutlierSchema());
  Outlier& outlier = cluster.outlier.emplace();
  ReadKeys(reader, OutlierKeys(), outlier);
  if (!reader.Good(kMaxEjectionTime)) {
    // Repeated ejections grow up to at least one ejection_time.
    outlier.max_ejection_time =
        std::max(outlier.max_ejection_time, outlier.ejection_time);
  } else if (outlier.max_ejection_time < outlier.ejection_time) {
    reader.Error(*reader.Find(kMaxEjectionTime), kMaxEjectionTime,
                 "must not be shorter than ejection_time (" +
                     FormatDuration(outlier.ejection_time) + ")");
  }
  return true;
}

}  // namespace tandem::conf
