// TOML text to a validated Config. Every error is collected with its position
// and key instead of stopping at the first (HAProxy's cfgerr in src/proxy.c).
#include "conf/load.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "conf/tls_files.h"
#include "conf/units.h"

namespace tandem::conf {

std::string Diagnostic::ToString() const {
  std::string out = file;
  if (line != 0) {
    out += ":" + std::to_string(line) + ":" + std::to_string(column);
  }
  if (!out.empty()) out += ": ";
  if (!key.empty()) out += key + ": ";
  out += message;
  return out;
}

namespace {

struct Position {
  uint32_t line = 0;
  uint32_t column = 0;
};

Position Where(const toml::source_region& region) {
  return {region.begin.line, region.begin.column};
}

// The known keys of each kind of table, for unknown-key errors and hints.
constexpr std::string_view kRootKeys[] = {"global", "admin", "listeners",
                                          "clusters"};
constexpr std::string_view kGlobalKeys[] = {"threads", "grace_period",
                                            "drain_delay", "access_log",
                                            "access_log_format"};
constexpr std::string_view kAdminKeys[] = {"listen", "token", "token_file"};
constexpr std::string_view kListenerKeys[] = {
    "listen",          "cluster",         "client_header_timeout",
    "idle_timeout",    "max_header_size", "max_body_size",
    "tls_cert",        "tls_key",         "certificates",
    "tls_min_version", "tls_ciphers",     "client_ca"};
constexpr std::string_view kCertificateKeys[] = {"cert", "key"};
constexpr std::string_view kClusterKeys[] = {"policy",
                                             "algorithm",
                                             "hash_key",
                                             "hash_balance_factor",
                                             "min_active",
                                             "retries",
                                             "connect_timeout",
                                             "try_timeout",
                                             "request_timeout",
                                             "idle_timeout",
                                             "max_idle_connections",
                                             "panic_threshold",
                                             "slow_start",
                                             "retry_budget",
                                             "retry_buffer",
                                             "queue_size",
                                             "queue_timeout",
                                             "activate_timeout",
                                             "tls",
                                             "ca_file",
                                             "sni",
                                             "verify_name",
                                             "verify",
                                             "health",
                                             "outlier",
                                             "backends"};
constexpr std::string_view kHealthKeys[] = {
    "kind",          "method",   "path",    "host",          "expect_body",
    "port",          "interval", "timeout", "fast_interval", "down_interval",
    "warm_interval", "jitter",   "rise",    "fall",          "expect_status"};
constexpr std::string_view kOutlierKeys[] = {
    "consecutive_failures", "ejection_time", "max_ejection_time",
    "max_ejection_percent"};
constexpr std::string_view kBackendKeys[] = {
    "address",  "weight",     "role",         "standby",
    "activate", "deactivate", "max_inflight", "max_connections"};

struct Schema {
  std::string_view display;  // how a hint names the table
  std::span<const std::string_view> keys;
};

constexpr Schema kRootSchema{"the top level", kRootKeys};
constexpr Schema kGlobalSchema{"[global]", kGlobalKeys};
constexpr Schema kAdminSchema{"[admin]", kAdminKeys};
constexpr Schema kListenerSchema{"[listeners.NAME]", kListenerKeys};
constexpr Schema kCertificateSchema{"[[listeners.NAME.certificates]]",
                                    kCertificateKeys};
constexpr Schema kClusterSchema{"[clusters.NAME]", kClusterKeys};
constexpr Schema kHealthSchema{"[clusters.NAME.health]", kHealthKeys};
constexpr Schema kOutlierSchema{"[clusters.NAME.outlier]", kOutlierKeys};
constexpr Schema kBackendSchema{"[[clusters.NAME.backends]]", kBackendKeys};
constexpr const Schema* kAllSchemas[] = {
    &kRootSchema,     &kGlobalSchema,      &kAdminSchema,
    &kListenerSchema, &kCertificateSchema, &kClusterSchema,
    &kHealthSchema,   &kOutlierSchema,     &kBackendSchema};

template <typename E>
using Choices = std::span<const std::pair<std::string_view, E>>;

constexpr std::pair<std::string_view, AccessLogFormat> kAccessLogFormats[] = {
    {"text", AccessLogFormat::kText}, {"json", AccessLogFormat::kJson}};
constexpr std::pair<std::string_view, Policy> kPolicies[] = {
    {"all-active", Policy::kAllActive},
    {"primary-backup", Policy::kPrimaryBackup}};
constexpr std::pair<std::string_view, algorithms::Algorithm> kAlgorithms[] = {
    {"round-robin", algorithms::Algorithm::kRoundRobin},
    {"least-conn", algorithms::Algorithm::kLeastConn},
    {"p2c", algorithms::Algorithm::kP2c},
    {"ring-hash", algorithms::Algorithm::kRingHash},
    {"maglev", algorithms::Algorithm::kMaglev},
    {"random", algorithms::Algorithm::kRandom}};
constexpr std::pair<std::string_view, HealthCheck::Kind> kHealthKinds[] = {
    {"http", HealthCheck::Kind::kHttp},
    {"tcp", HealthCheck::Kind::kTcp},
    {"none", HealthCheck::Kind::kNone}};
constexpr std::pair<std::string_view, Role> kRoles[] = {
    {"primary", Role::kPrimary}, {"backup", Role::kBackup}};
constexpr std::pair<std::string_view, Standby> kStandbys[] = {
    {"hot", Standby::kHot}, {"warm", Standby::kWarm}, {"cold", Standby::kCold}};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

char Lower(char c) {
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

// Levenshtein distance, case-insensitive.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const size_t substitution =
          diagonal + (Lower(a[i - 1]) == Lower(b[j - 1]) ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The candidate nearest to `name`, if near enough to be a likely typo.
template <typename Range>
std::optional<std::string> Nearest(std::string_view name,
                                   const Range& candidates) {
  std::optional<std::string> best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& candidate : candidates) {
    const std::string_view text = candidate;
    const size_t distance = EditDistance(name, text);
    if (distance < best_distance &&
        distance <= std::max<size_t>(2, text.size() / 3)) {
      best = std::string(text);
      best_distance = distance;
    }
  }
  return best;
}

std::string Join(const std::vector<std::string>& items,
                 std::string_view last_separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) {
      out += i + 1 == items.size() ? std::string(last_separator) : ", ";
    }
    out += items[i];
  }
  return out;
}

std::string TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string FormatDuration(Duration d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
  if (ms != 0 && ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::string FormatNumber(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == std::numeric_limits<int64_t>::max()) {
    return "at least " + std::to_string(min);
  }
  return "between " + std::to_string(min) + " and " + std::to_string(max);
}

// Names appear in admin URLs (/admin/clusters/{cluster}/...) and metrics
// labels.
bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
           c == '_' || c == '.';
  });
}

// RFC 9110 token characters, the syntax of header and cookie names.
bool ValidToken(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) !=
               std::string_view::npos;
  });
}

bool SameIp(const SocketAddress& a, const SocketAddress& b) {
  if (a.storage.ss_family != b.storage.ss_family) return false;
  if (a.storage.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&b.storage)->sin_addr.s_addr;
  }
  return std::memcmp(
             &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr,
             &reinterpret_cast<const sockaddr_in6*>(&b.storage)->sin6_addr,
             sizeof(in6_addr)) == 0;
}

bool SameEndpoint(const SocketAddress& a, const SocketAddress& b) {
  return a.port() == b.port() && SameIp(a, b);
}

// Whether two listen addresses would accept the same connections. An IPv6
// wildcard listener is dual-stack (Linux default), so it covers IPv4 too.
bool ListenOverlap(const SocketAddress& a, const SocketAddress& b) {
  if (a.port() != b.port() || a.port() == 0) return false;
  const bool a_any6 = a.IsWildcard() && a.storage.ss_family == AF_INET6;
  const bool b_any6 = b.IsWildcard() && b.storage.ss_family == AF_INET6;
  if (a_any6 || b_any6) return true;
  if (a.storage.ss_family != b.storage.ss_family) return false;
  return a.IsWildcard() || b.IsWildcard() || SameIp(a, b);
}

// Entries of a table in file order (toml::table iterates by key).
std::vector<std::pair<const toml::key*, const toml::node*>> InFileOrder(
    const toml::table& table) {
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
  std::stable_sort(
      entries.begin(), entries.end(), [](const auto& a, const auto& b) {
        const auto& pa = a.first->source().begin;
        const auto& pb = b.first->source().begin;
        return std::tie(pa.line, pa.column) < std::tie(pb.line, pb.column);
      });
  return entries;
}

enum class ZeroDuration { kAllowed, kRejected };

class Loader;

// Reads the keys of one TOML table against its schema. Unknown keys are
// reported when it is made; each Read* reports a bad value and returns true
// only when the key is present and its value valid (then `out` is set).
class TableReader {
 public:
  TableReader(Loader& loader, const toml::table& table, std::string path,
              const Schema& schema);

  const std::string& path() const { return path_; }
  Position table_position() const { return Where(table_.source()); }
  std::string KeyPath(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  bool Has(std::string_view key) const { return table_.contains(key); }
  const toml::node* Find(std::string_view key) const { return table_.get(key); }
  // The value's position, or the table's when the key is absent.
  Position PositionOf(std::string_view key) const {
    const toml::node* node = Find(key);
    return node != nullptr ? Where(node->source()) : table_position();
  }

  bool ReadString(std::string_view key, std::string* out);
  bool ReadBool(std::string_view key, bool* out);
  template <typename Int>
  bool ReadInteger(std::string_view key, int64_t min, int64_t max, Int* out);
  bool ReadNumber(std::string_view key, double min, double max, double* out);
  bool ReadDuration(std::string_view key, ZeroDuration zero, Duration* out);
  bool ReadSize(std::string_view key, uint64_t min, uint64_t max,
                uint64_t* out);
  bool ReadAddress(std::string_view key, PortZero port_zero,
                   SocketAddress* out);
  // A path to a file that must exist and be readable; relative paths are
  // resolved against the configuration file's directory.
  bool ReadFile(std::string_view key, std::string* out);
  template <typename E>
  bool ReadEnum(std::string_view key, std::string_view what, Choices<E> choices,
                E* out);
  // Null when absent or not a table (reported).
  const toml::table* ReadTable(std::string_view key);
  const toml::array* ReadArray(std::string_view key, std::string_view hint);

  void Error(const toml::node& at, std::string_view key, std::string message);
  void Warning(const toml::node& at, std::string_view key, std::string message);
  void TypeError(const toml::node& at, std::string_view key,
                 std::string_view expected);
  void MissingKey(std::string_view key, std::string message);

 private:
  Loader& loader_;
  const toml::table& table_;
  std::string path_;
};

class Loader {
 public:
  explicit Loader(std::string_view source_name) : file_(source_name) {
    const size_t slash = file_.rfind('/');
    if (slash != std::string::npos) base_dir_ = file_.substr(0, slash + 1);
  }

  LoadResult Load(std::string_view text);

  void Error(Position at, std::string key, std::string message) {
    errors_.push_back(
        {file_, at.line, at.column, std::move(key), std::move(message)});
  }
  void Warning(Position at, std::string key, std::string message) {
    warnings_.push_back(
        {file_, at.line, at.column, std::move(key), std::move(message)});
  }
  std::string ResolvePath(std::string_view path) const {
    if (path.empty() || path.front() == '/' || base_dir_.empty()) {
      return std::string(path);
    }
    return base_dir_ + std::string(path);
  }

 private:
  // What cross-file checks need to know about a listen address.
  struct ListenSite {
    std::string owner;  // "listeners.web" or "admin"
    SocketAddress address;
    Position position;
  };

  void LoadGlobal(const toml::table& table);
  void LoadAdmin(const toml::table& table);
  void LoadClusters(TableReader& root);
  void LoadCluster(const std::string& name, const toml::table& table);
  void LoadHealth(const toml::table& table, const std::string& path,
                  HealthCheck* health);
  void LoadExpectStatus(TableReader& reader, HealthCheck* health);
  void LoadOutlier(const toml::table& table, const std::string& path,
                   Outlier* outlier);
  void LoadBackends(TableReader& reader, bool policy_ok, Cluster* cluster);
  void LoadListeners(TableReader& root);
  void LoadListener(const std::string& name, const toml::table& table);
  void LoadCertificates(TableReader& reader, Listener* listener);
  void LoadListenerTls(TableReader& reader, Listener* listener);
  // Reports an unusable certificate/key pair at `node`; true when usable.
  bool CheckPair(const toml::node& node, const std::string& path,
                 const Certificate& certificate);
  bool LoadHashKey(TableReader& reader, HashKey* hash_key);
  void CheckListenOverlaps();
  LoadResult Finish();

  std::string file_;
  std::string base_dir_;
  std::vector<Diagnostic> errors_;
  std::vector<Diagnostic> warnings_;
  Config config_;
  std::vector<ListenSite> listen_sites_;
  std::vector<Position> cluster_positions_;  // parallel to config_.clusters
  std::vector<bool> cluster_used_;
};

TableReader::TableReader(Loader& loader, const toml::table& table,
                         std::string path, const Schema& schema)
    : loader_(loader), table_(table), path_(std::move(path)) {
  for (const auto& [key, node] : table_) {
    const std::string_view name = key.str();
    if (std::find(schema.keys.begin(), schema.keys.end(), name) !=
        schema.keys.end())
      continue;
    std::string message = "unknown key '" + std::string(name) + "'";
    if (std::optional<std::string> near = Nearest(name, schema.keys)) {
      message += "; did you mean '" + *near + "'?";
    } else {
      // Perhaps a key written in the wrong table, or a typo of one.
      std::vector<std::string> homes;
      std::optional<std::pair<std::string, std::string_view>> near_elsewhere;
      for (const Schema* other : kAllSchemas) {
        if (other == &schema) continue;
        if (std::find(other->keys.begin(), other->keys.end(), name) !=
            other->keys.end()) {
          homes.emplace_back(other->display);
        } else if (!near_elsewhere) {
          if (std::optional<std::string> typo_of = Nearest(name, other->keys)) {
            near_elsewhere.emplace(*typo_of, other->display);
          }
        }
      }
      if (!homes.empty()) {
        message += "; it belongs in " + Join(homes, " or ");
      } else if (near_elsewhere) {
        message += "; did you mean '" + near_elsewhere->first + "' (a key of " +
                   std::string(near_elsewhere->second) + ")?";
      }
    }
    loader_.Error(Where(key.source()), KeyPath(name), std::move(message));
  }
}

void TableReader::Error(const toml::node& at, std::string_view key,
                        std::string message) {
  loader_.Error(Where(at.source()), KeyPath(key), std::move(message));
}

void TableReader::Warning(const toml::node& at, std::string_view key,
                          std::string message) {
  loader_.Warning(Where(at.source()), KeyPath(key), std::move(message));
}

void TableReader::TypeError(const toml::node& at, std::string_view key,
                            std::string_view expected) {
  Error(at, key,
        "expected " + std::string(expected) + ", got " + TypeName(at.type()));
}

void TableReader::MissingKey(std::string_view key, std::string message) {
  loader_.Error(table_position(), KeyPath(key), std::move(message));
}

bool TableReader::ReadString(std::string_view key, std::string* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a string");
    return false;
  }
  if (value->get().empty()) {
    Error(*node, key, "must not be empty");
    return false;
  }
  *out = value->get();
  return true;
}

bool TableReader::ReadBool(std::string_view key, bool* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_boolean();
  if (value == nullptr) {
    TypeError(*node, key, "a boolean (true or false)");
    return false;
  }
  *out = value->get();
  return true;
}

template <typename Int>
bool TableReader::ReadInteger(std::string_view key, int64_t min, int64_t max,
                              Int* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_integer();
  if (value == nullptr) {
    TypeError(*node, key, "an integer");
    return false;
  }
  const int64_t number = value->get();
  if (number < min || number > max) {
    Error(*node, key,
          "must be " + RangeText(min, max) + ", got " + std::to_string(number));
    return false;
  }
  *out = static_cast<Int>(number);
  return true;
}

bool TableReader::ReadNumber(std::string_view key, double min, double max,
                             double* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  double number = 0;
  if (const auto* real = node->as_floating_point()) {
    number = real->get();
  } else if (const auto* integer = node->as_integer()) {
    number = static_cast<double>(integer->get());
  } else {
    TypeError(*node, key, "a number");
    return false;
  }
  if (!std::isfinite(number) || number < min || number > max) {
    Error(*node, key,
          "must be between " + FormatNumber(min) + " and " + FormatNumber(max) +
              ", got " + FormatNumber(number));
    return false;
  }
  *out = number;
  return true;
}

bool TableReader::ReadDuration(std::string_view key, ZeroDuration zero,
                               Duration* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  if (const auto* integer = node->as_integer()) {
    const std::string number = std::to_string(integer->get());
    Error(*node, key,
          "a duration needs a unit: write \"" + number + "s\" or \"" + number +
              "ms\" (units: ms, s, m, h)");
    return false;
  }
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a duration string such as \"10s\"");
    return false;
  }
  std::string error;
  const std::optional<Duration> duration = ParseDuration(value->get(), &error);
  if (!duration) {
    Error(*node, key, std::move(error));
    return false;
  }
  if (zero == ZeroDuration::kRejected && duration->count() == 0) {
    Error(*node, key, "must be longer than 0");
    return false;
  }
  *out = *duration;
  return true;
}

bool TableReader::ReadSize(std::string_view key, uint64_t min, uint64_t max,
                           uint64_t* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  uint64_t size = 0;
  if (const auto* integer = node->as_integer()) {
    if (integer->get() < 0) {
      Error(*node, key,
            "a size cannot be negative, got " + std::to_string(integer->get()));
      return false;
    }
    size = static_cast<uint64_t>(integer->get());
  } else if (const auto* text = node->as_string()) {
    std::string error;
    const std::optional<uint64_t> parsed = ParseSize(text->get(), &error);
    if (!parsed) {
      Error(*node, key, std::move(error));
      return false;
    }
    size = *parsed;
  } else {
    TypeError(*node, key,
              "a size (integer bytes, or a string such as \"64KiB\")");
    return false;
  }
  if (size < min || size > max) {
    Error(*node, key,
          "must be between " + std::to_string(min) + " and " +
              std::to_string(max) + " bytes, got " + std::to_string(size));
    return false;
  }
  *out = size;
  return true;
}

bool TableReader::ReadAddress(std::string_view key, PortZero port_zero,
                              SocketAddress* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "an address string such as \"127.0.0.1:8080\"");
    return false;
  }
  std::string error;
  std::optional<SocketAddress> address =
      ParseSocketAddress(value->get(), port_zero, &error);
  if (!address) {
    Error(*node, key, std::move(error));
    return false;
  }
  *out = std::move(*address);
  return true;
}

bool TableReader::ReadFile(std::string_view key, std::string* out) {
  std::string written;
  if (!ReadString(key, &written)) return false;
  const toml::node& node = *Find(key);
  const std::string path = loader_.ResolvePath(written);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    Error(node, key, "cannot read '" + path + "': " + std::strerror(errno));
    return false;
  }
  struct stat info {};
  const bool is_directory = ::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode);
  ::close(fd);
  if (is_directory) {
    Error(node, key, "'" + path + "' is a directory, not a file");
    return false;
  }
  *out = path;
  return true;
}

template <typename E>
bool TableReader::ReadEnum(std::string_view key, std::string_view what,
                           Choices<E> choices, E* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  std::vector<std::string> names;
  for (const auto& choice : choices) {
    names.push_back("\"" + std::string(choice.first) + "\"");
  }
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a string: " + Join(names, " or "));
    return false;
  }
  for (const auto& [name, result] : choices) {
    if (value->get() == name) {
      *out = result;
      return true;
    }
  }
  std::vector<std::string_view> plain;
  for (const auto& choice : choices) plain.push_back(choice.first);
  std::string message =
      "unknown " + std::string(what) + " \"" + value->get() + "\"";
  if (std::optional<std::string> near = Nearest(value->get(), plain)) {
    message += "; did you mean \"" + *near + "\"?";
  } else {
    message += "; expected " + Join(names, " or ");
  }
  Error(*node, key, std::move(message));
  return false;
}

const toml::table* TableReader::ReadTable(std::string_view key) {
  const toml::node* node = Find(key);
  if (node == nullptr) return nullptr;
  const toml::table* table = node->as_table();
  if (table == nullptr) TypeError(*node, key, "a table");
  return table;
}

const toml::array* TableReader::ReadArray(std::string_view key,
                                          std::string_view hint) {
  const toml::node* node = Find(key);
  if (node == nullptr) return nullptr;
  const toml::array* array = node->as_array();
  if (array == nullptr) TypeError(*node, key, hint);
  return array;
}

// toml++ walks nested tables recursively (after parsing, and when freeing
// them), so a key of tens of thousands of dotted parts overflows the stack.
// Every key is written on one line, so bounding the dots of each line bounds
// the nesting, whatever the line holds (the dots of a string or a comment
// count too: no real line has this many).
constexpr size_t kMaxDotsPerLine = 256;

// The position of the first dot past kMaxDotsPerLine on its line, if any.
std::optional<Position> TooManyDots(std::string_view text) {
  Position at{1, 1};
  size_t dots = 0;
  for (const char c : text) {
    if (c == '\n') {
      ++at.line;
      at.column = 1;
      dots = 0;
      continue;
    }
    if (c == '.' && ++dots > kMaxDotsPerLine) return at;
    // Columns count characters, as toml++ does: not UTF-8 continuation bytes.
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++at.column;
  }
  return std::nullopt;
}

LoadResult Loader::Load(std::string_view text) {
  if (std::optional<Position> at = TooManyDots(text)) {
    Error(*at, "",
          "more than " + std::to_string(kMaxDotsPerLine) +
              " '.' on one line; keys nested this deep are not accepted");
    return Finish();
  }
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(file_));
  } catch (const toml::parse_error& error) {
    Error(Where(error.source()), "", std::string(error.description()));
    return Finish();
  }
  config_.path = file_;
  TableReader reader(*this, root, "", kRootSchema);
  if (const toml::table* global = reader.ReadTable("global")) {
    LoadGlobal(*global);
  }
  LoadClusters(reader);
  LoadListeners(reader);
  if (const toml::table* admin = reader.ReadTable("admin")) LoadAdmin(*admin);
  CheckListenOverlaps();
  for (size_t i = 0; i < config_.clusters.size(); ++i) {
    if (!cluster_used_[i] && !config_.listeners.empty()) {
      Warning(cluster_positions_[i], "clusters." + config_.clusters[i].name,
              "not used by any listener");
    }
  }
  return Finish();
}

LoadResult Loader::Finish() {
  const auto by_position = [](const Diagnostic& a, const Diagnostic& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  };
  std::stable_sort(errors_.begin(), errors_.end(), by_position);
  std::stable_sort(warnings_.begin(), warnings_.end(), by_position);
  LoadResult result;
  if (errors_.empty()) {
    result.config = std::make_shared<const Config>(std::move(config_));
  }
  result.errors = std::move(errors_);
  result.warnings = std::move(warnings_);
  return result;
}

void Loader::LoadGlobal(const toml::table& table) {
  TableReader reader(*this, table, "global", kGlobalSchema);
  Global& global = config_.global;
  reader.ReadInteger("threads", 0, 1024, &global.threads);
  reader.ReadDuration("grace_period", ZeroDuration::kAllowed,
                      &global.grace_period);
  reader.ReadDuration("drain_delay", ZeroDuration::kAllowed,
                      &global.drain_delay);
  std::string access_log;
  if (reader.ReadString("access_log", &access_log)) {
    global.access_log = access_log == "stdout" || access_log == "off"
                            ? access_log
                            : ResolvePath(access_log);
  }
  reader.ReadEnum("access_log_format", "format",
                  Choices<AccessLogFormat>(kAccessLogFormats),
                  &global.access_log_format);
}

void Loader::LoadAdmin(const toml::table& table) {
  TableReader reader(*this, table, "admin", kAdminSchema);
  Admin admin;
  std::optional<SocketAddress> listen =
      ParseSocketAddress("127.0.0.1:9901", PortZero::kAllowed, nullptr);
  admin.listen = std::move(*listen);
  const bool listen_ok =
      !reader.Has("listen") ||
      reader.ReadAddress("listen", PortZero::kAllowed, &admin.listen);
  reader.ReadString("token", &admin.token);
  std::string token_file;
  if (reader.Has("token") && reader.Has("token_file")) {
    reader.Error(*reader.Find("token_file"), "token_file",
                 "give either token or token_file, not both");
  } else if (reader.ReadFile("token_file", &token_file)) {
    // A secret mounted as a file (a Kubernetes Secret, a systemd
    // credential) keeps the token out of the config itself.
    std::ifstream in(token_file);
    std::string token((std::istreambuf_iterator<char>(in)),
                      std::istreambuf_iterator<char>());
    while (!token.empty() &&
           std::isspace(static_cast<unsigned char>(token.back()))) {
      token.pop_back();
    }
    if (token.empty()) {
      reader.Error(*reader.Find("token_file"), "token_file",
                   "the token file " + token_file + " is empty");
    }
    admin.token = std::move(token);
  }
  const bool has_token = reader.Has("token") || reader.Has("token_file");
  if (listen_ok) {
    if (!admin.listen.IsLoopback()) {
      if (!has_token) {
        Error(
            reader.PositionOf("listen"), "admin.listen",
            "admin listens on non-loopback address " + admin.listen.text +
                " without a token; set [admin] token, or listen on 127.0.0.1");
      } else {
        Warning(reader.PositionOf("listen"), "admin.listen",
                "admin listens on non-loopback address " + admin.listen.text +
                    "; /status and /metrics are readable without the token");
      }
    }
    listen_sites_.push_back(
        {"admin", admin.listen, reader.PositionOf("listen")});
  }
  config_.admin = std::move(admin);
}

void Loader::LoadClusters(TableReader& root) {
  const toml::table* clusters = root.ReadTable("clusters");
  if (clusters == nullptr) {
    if (!root.Has("clusters")) {
      // Located at the file's start, as --check prints every error.
      Error(root.table_position(), "clusters",
            "at least one cluster is required ([clusters.NAME])");
    }
    return;
  }
  if (clusters->empty()) {
    Error(Where(clusters->source()), "clusters",
          "at least one cluster is required ([clusters.NAME])");
    return;
  }
  for (const auto& [key, node] : InFileOrder(*clusters)) {
    const std::string name(key->str());
    if (!ValidName(name)) {
      Error(Where(key->source()), "clusters." + name,
            "bad cluster name; use letters, digits, '-', '_' or '.' (at most "
            "64)");
    }
    const toml::table* table = node->as_table();
    if (table == nullptr) {
      Error(Where(node->source()), "clusters." + name,
            "expected a table, got " + TypeName(node->type()));
      // Kept by name so that a listener naming it gets no second error.
      Cluster placeholder;
      placeholder.name = name;
      config_.clusters.push_back(std::move(placeholder));
      cluster_positions_.push_back(Where(node->source()));
      cluster_used_.push_back(false);
      continue;
    }
    LoadCluster(name, *table);
  }
}

bool Loader::LoadHashKey(TableReader& reader, HashKey* hash_key) {
  std::string text;
  if (!reader.ReadString("hash_key", &text)) return false;
  const toml::node& node = *reader.Find("hash_key");
  const auto named = [&](std::string_view prefix, HashKey::Kind kind) {
    const std::string name = text.substr(prefix.size());
    if (!ValidToken(name)) {
      reader.Error(node, "hash_key",
                   "bad name '" + name + "' after '" + std::string(prefix) +
                       "'; expected a header or cookie name");
      return false;
    }
    *hash_key = HashKey{kind, name};
    return true;
  };
  if (text.starts_with("header:")) {
    return named("header:", HashKey::Kind::kHeader);
  }
  if (text.starts_with("cookie:")) {
    return named("cookie:", HashKey::Kind::kCookie);
  }
  if (text == "source-ip") {
    *hash_key = HashKey{HashKey::Kind::kSourceIp, ""};
    return true;
  }
  if (text == "path") {
    *hash_key = HashKey{HashKey::Kind::kPath, ""};
    return true;
  }
  reader.Error(node, "hash_key",
               "unknown hash key \"" + text +
                   "\"; expected header:NAME, cookie:NAME, source-ip or path");
  return false;
}

void Loader::LoadCluster(const std::string& name, const toml::table& table) {
  const std::string path = "clusters." + name;
  TableReader reader(*this, table, path, kClusterSchema);
  Cluster cluster;
  cluster.name = name;
  cluster_positions_.push_back(reader.table_position());
  cluster_used_.push_back(false);

  const bool policy_ok =
      !reader.Has("policy") ||
      reader.ReadEnum("policy", "policy", Choices<Policy>(kPolicies),
                      &cluster.policy);
  const bool algorithm_ok =
      !reader.Has("algorithm") ||
      reader.ReadEnum("algorithm", "algorithm",
                      Choices<algorithms::Algorithm>(kAlgorithms),
                      &cluster.picker.algorithm);
  const bool hashing =
      cluster.picker.algorithm == algorithms::Algorithm::kRingHash ||
      cluster.picker.algorithm == algorithms::Algorithm::kMaglev;
  const bool hash_key_ok =
      !reader.Has("hash_key") || LoadHashKey(reader, &cluster.hash_key);
  if (algorithm_ok && hashing && !reader.Has("hash_key")) {
    Error(reader.PositionOf("algorithm"), path + ".hash_key",
          "algorithm \"" + reader.Find("algorithm")->as_string()->get() +
              "\" needs hash_key: header:NAME, cookie:NAME, source-ip or path");
  }
  if (algorithm_ok && !hashing && reader.Has("hash_key") && hash_key_ok) {
    reader.Warning(
        *reader.Find("hash_key"), "hash_key",
        "used by ring-hash and maglev only; this cluster does not hash");
  }
  if (reader.ReadNumber("hash_balance_factor", 0, 1e6,
                        &cluster.picker.hash_balance_factor)) {
    const double factor = cluster.picker.hash_balance_factor;
    const toml::node& node = *reader.Find("hash_balance_factor");
    if (factor != 0 && factor < 1.0) {
      reader.Error(
          node, "hash_balance_factor",
          "must be 0 (off) or at least 1.0, got " + FormatNumber(factor));
    } else if (algorithm_ok && !hashing) {
      reader.Warning(
          node, "hash_balance_factor",
          "used by ring-hash and maglev only; this cluster does not hash");
    }
  }

  const bool min_active_ok =
      reader.ReadInteger("min_active", 1, std::numeric_limits<uint32_t>::max(),
                         &cluster.min_active);
  reader.ReadInteger("retries", 0, 10, &cluster.retries);
  reader.ReadDuration("connect_timeout", ZeroDuration::kRejected,
                      &cluster.connect_timeout);
  const bool request_ok =
      !reader.Has("request_timeout") ||
      reader.ReadDuration("request_timeout", ZeroDuration::kRejected,
                          &cluster.request_timeout);
  if (reader.Has("try_timeout")) {
    if (reader.ReadDuration("try_timeout", ZeroDuration::kRejected,
                            &cluster.try_timeout) &&
        request_ok && cluster.try_timeout > cluster.request_timeout) {
      reader.Error(*reader.Find("try_timeout"), "try_timeout",
                   "try_timeout (" + FormatDuration(cluster.try_timeout) +
                       ") must not exceed request_timeout (" +
                       FormatDuration(cluster.request_timeout) + ")");
    }
  } else {
    cluster.try_timeout = cluster.request_timeout;
  }
  reader.ReadDuration("idle_timeout", ZeroDuration::kRejected,
                      &cluster.idle_timeout);
  reader.ReadInteger("max_idle_connections", 0, 65535,
                     &cluster.max_idle_connections);
  reader.ReadNumber("panic_threshold", 0.0, 1.0, &cluster.panic_threshold);
  reader.ReadDuration("slow_start", ZeroDuration::kAllowed,
                      &cluster.slow_start);
  reader.ReadNumber("retry_budget", 0.0, 1.0, &cluster.retry_budget);
  reader.ReadSize("retry_buffer", 0, 64 * 1024 * 1024,
                  &cluster.retry_buffer_bytes);
  reader.ReadInteger("queue_size", 0, 1000000, &cluster.queue_size);
  reader.ReadDuration("queue_timeout", ZeroDuration::kRejected,
                      &cluster.queue_timeout);
  reader.ReadDuration("activate_timeout", ZeroDuration::kRejected,
                      &cluster.activate_timeout);

  reader.ReadBool("tls", &cluster.tls.enabled);
  if (reader.ReadFile("ca_file", &cluster.tls.ca_file)) {
    std::string error;
    if (!CheckCaFile(cluster.tls.ca_file, &error)) {
      reader.Error(*reader.Find("ca_file"), "ca_file", error);
    }
  }
  reader.ReadString("sni", &cluster.tls.sni);
  reader.ReadString("verify_name", &cluster.tls.verify_name);
  reader.ReadBool("verify", &cluster.tls.verify);
  if (!cluster.tls.enabled) {
    for (std::string_view key : {"ca_file", "sni", "verify_name", "verify"}) {
      if (const toml::node* node = reader.Find(key)) {
        reader.Warning(*node, key, "has no effect without tls = true");
      }
    }
  }

  if (const toml::table* health = reader.ReadTable("health")) {
    LoadHealth(*health, path + ".health", &cluster.health);
  }
  if (const toml::table* outlier = reader.ReadTable("outlier")) {
    cluster.outlier.emplace();
    LoadOutlier(*outlier, path + ".outlier", &*cluster.outlier);
  }
  LoadBackends(reader, policy_ok, &cluster);

  if (policy_ok && cluster.policy == Policy::kAllActive) {
    if (reader.Has("min_active")) {
      reader.Warning(*reader.Find("min_active"), "min_active",
                     "meaningful for policy = \"primary-backup\" only");
    }
  }
  if (min_active_ok && !cluster.backends.empty() &&
      cluster.min_active > cluster.backends.size()) {
    reader.Error(*reader.Find("min_active"), "min_active",
                 "min_active = " + std::to_string(cluster.min_active) +
                     " but the cluster has " +
                     std::to_string(cluster.backends.size()) + " backend" +
                     (cluster.backends.size() == 1 ? "" : "s"));
  }
  config_.clusters.push_back(std::move(cluster));
}

void Loader::LoadHealth(const toml::table& table, const std::string& path,
                        HealthCheck* health) {
  TableReader reader(*this, table, path, kHealthSchema);
  health->kind = HealthCheck::Kind::kHttp;
  const bool kind_ok =
      !reader.Has("kind") ||
      reader.ReadEnum("kind", "health check kind",
                      Choices<HealthCheck::Kind>(kHealthKinds), &health->kind);
  if (reader.ReadString("path", &health->path)) {
    const std::string& value = health->path;
    const bool has_space = std::any_of(value.begin(), value.end(), [](char c) {
      return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
    });
    if (value.front() != '/') {
      reader.Error(*reader.Find("path"), "path",
                   "must start with '/', got \"" + value + "\"");
    } else if (has_space) {
      reader.Error(*reader.Find("path"), "path",
                   "must not contain spaces or control characters");
    }
  }
  const bool interval_ok = reader.ReadDuration(
      "interval", ZeroDuration::kRejected, &health->interval);
  if (reader.Has("timeout")) {
    if (reader.ReadDuration("timeout", ZeroDuration::kRejected,
                            &health->timeout) &&
        (interval_ok || !reader.Has("interval")) &&
        health->timeout > health->interval) {
      reader.Error(*reader.Find("timeout"), "timeout",
                   "timeout (" + FormatDuration(health->timeout) +
                       ") must not exceed interval (" +
                       FormatDuration(health->interval) + ")");
    }
  } else if (health->timeout > health->interval) {
    // A short interval written alone pulls the default timeout down with it.
    health->timeout = health->interval;
  }
  reader.ReadInteger("rise", 1, 1000, &health->rise);
  reader.ReadInteger("fall", 1, 1000, &health->fall);
  LoadExpectStatus(reader, health);
  if (reader.ReadString("method", &health->method)) {
    const bool token = std::all_of(
        health->method.begin(), health->method.end(),
        [](char c) { return (c >= 'A' && c <= 'Z') || c == '-' || c == '_'; });
    if (!token) {
      reader.Error(*reader.Find("method"), "method",
                   "must be an upper-case HTTP method such as GET, got \"" +
                       health->method + "\"");
    }
  }
  if (reader.ReadString("host", &health->host)) {
    const bool clean =
        std::none_of(health->host.begin(), health->host.end(), [](char c) {
          return static_cast<unsigned char>(c) <= ' ' || c == 0x7f || c == '/';
        });
    if (!clean) {
      reader.Error(*reader.Find("host"), "host",
                   "must be a host name without spaces or '/'");
    }
  }
  reader.ReadString("expect_body", &health->expect_body);
  reader.ReadInteger("port", 1, 65535, &health->port);
  // The faster intervals default to a share of interval unless set.
  health->fast_interval = std::max<Duration>(
      std::chrono::milliseconds(100),
      std::min<Duration>(health->interval / 4, health->fast_interval));
  health->down_interval = health->interval;
  health->warm_interval = health->interval * 5;
  reader.ReadDuration("fast_interval", ZeroDuration::kRejected,
                      &health->fast_interval);
  reader.ReadDuration("down_interval", ZeroDuration::kRejected,
                      &health->down_interval);
  reader.ReadDuration("warm_interval", ZeroDuration::kRejected,
                      &health->warm_interval);
  if (reader.ReadDuration("jitter", ZeroDuration::kAllowed, &health->jitter) &&
      health->jitter > health->interval / 2) {
    reader.Error(*reader.Find("jitter"), "jitter",
                 "jitter (" + FormatDuration(health->jitter) +
                     ") must not exceed half the interval (" +
                     FormatDuration(health->interval) + ")");
  }
  if (!kind_ok) return;
  if (health->kind == HealthCheck::Kind::kNone) {
    for (std::string_view key :
         {"path", "interval", "timeout", "rise", "fall", "expect_status",
          "method", "host", "expect_body", "port", "fast_interval",
          "down_interval", "warm_interval", "jitter"}) {
      if (const toml::node* node = reader.Find(key)) {
        reader.Warning(*node, key, "has no effect with kind = \"none\"");
      }
    }
  } else if (health->kind == HealthCheck::Kind::kTcp) {
    for (std::string_view key :
         {"path", "expect_status", "method", "host", "expect_body"}) {
      if (const toml::node* node = reader.Find(key)) {
        reader.Warning(*node, key, "has no effect with kind = \"tcp\"");
      }
    }
  }
}

void Loader::LoadExpectStatus(TableReader& reader, HealthCheck* health) {
  const toml::node* node = reader.Find("expect_status");
  if (node == nullptr) return;
  const auto valid = [](int64_t code) { return code >= 100 && code <= 599; };
  if (const auto* integer = node->as_integer()) {
    if (!valid(integer->get())) {
      reader.Error(*node, "expect_status",
                   "must be a status code between 100 and 599, got " +
                       std::to_string(integer->get()));
      return;
    }
    health->expect_status_min = health->expect_status_max =
        static_cast<uint32_t>(integer->get());
    return;
  }
  const auto* text = node->as_string();
  if (text == nullptr) {
    reader.TypeError(*node, "expect_status",
                     "a status code such as 200 or a range \"200-399\"");
    return;
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
                         std::all_of(value.begin(), value.end(),
                                     [](char c) { return IsDigit(c); });
  if (is_single) low = high = std::stoi(value);
  if (!is_range && !is_single) {
    reader.Error(
        *node, "expect_status",
        "bad status range \"" + value + "\"; expected e.g. 200 or \"200-399\"");
    return;
  }
  if (!valid(low) || !valid(high) || low > high) {
    reader.Error(*node, "expect_status",
                 "bad status range \"" + value +
                     "\"; codes must be between 100 and 599, the lower first");
    return;
  }
  health->expect_status_min = static_cast<uint32_t>(low);
  health->expect_status_max = static_cast<uint32_t>(high);
}

void Loader::LoadOutlier(const toml::table& table, const std::string& path,
                         Outlier* outlier) {
  TableReader reader(*this, table, path, kOutlierSchema);
  reader.ReadInteger("consecutive_failures", 1, 1000,
                     &outlier->consecutive_failures);
  reader.ReadDuration("ejection_time", ZeroDuration::kRejected,
                      &outlier->ejection_time);
  outlier->max_ejection_time =
      std::max(outlier->max_ejection_time, outlier->ejection_time);
  if (reader.ReadDuration("max_ejection_time", ZeroDuration::kRejected,
                          &outlier->max_ejection_time) &&
      outlier->max_ejection_time < outlier->ejection_time) {
    reader.Error(*reader.Find("max_ejection_time"), "max_ejection_time",
                 "must not be shorter than ejection_time (" +
                     FormatDuration(outlier->ejection_time) + ")");
  }
  reader.ReadInteger("max_ejection_percent", 0, 100,
                     &outlier->max_ejection_percent);
}

void Loader::LoadBackends(TableReader& cluster_reader, bool policy_ok,
                          Cluster* cluster) {
  const std::string& cluster_path = cluster_reader.path();
  if (!cluster_reader.Has("backends")) {
    cluster_reader.MissingKey(
        "backends", "a cluster needs at least one backend ([[" + cluster_path +
                        ".backends]])");
    return;
  }
  const toml::array* array = cluster_reader.ReadArray(
      "backends", "an array of tables ([[" + cluster_path + ".backends]])");
  if (array == nullptr) return;
  if (array->empty()) {
    cluster_reader.Error(*array, "backends",
                         "a cluster needs at least one backend");
    return;
  }
  // Where each loaded backend came from, parallel to cluster->backends.
  struct Site {
    size_t index = 0;  // in the TOML array
    bool address_ok = false;
    Position address;
    const toml::node* role = nullptr;
  };
  std::vector<Site> sites;
  size_t primaries = 0;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& node = *array->get(i);
    const std::string path =
        cluster_path + ".backends[" + std::to_string(i) + "]";
    const toml::table* table = node.as_table();
    if (table == nullptr) {
      Error(Where(node.source()), path,
            "expected a table, got " + TypeName(node.type()));
      continue;
    }
    TableReader reader(*this, *table, path, kBackendSchema);
    Backend backend;
    Site site;
    site.index = i;
    if (!reader.Has("address")) {
      reader.MissingKey("address", "every backend needs an address");
    } else {
      site.address_ok =
          reader.ReadAddress("address", PortZero::kRejected, &backend.address);
      site.address = reader.PositionOf("address");
    }
    reader.ReadInteger("weight", 1, 256, &backend.weight);
    const bool role_ok =
        !reader.Has("role") ||
        reader.ReadEnum("role", "role", Choices<Role>(kRoles), &backend.role);
    site.role = reader.Find("role");
    const bool standby_ok =
        !reader.Has("standby") ||
        reader.ReadEnum("standby", "standby", Choices<Standby>(kStandbys),
                        &backend.standby);
    reader.ReadString("activate", &backend.activate);
    reader.ReadString("deactivate", &backend.deactivate);
    reader.ReadInteger("max_inflight", 0, 1000000, &backend.max_inflight);
    reader.ReadInteger("max_connections", 0, 1000000, &backend.max_connections);
    if (role_ok && backend.role == Role::kPrimary) ++primaries;
    if (role_ok && standby_ok) {
      const bool is_backup = backend.role == Role::kBackup;
      if (!is_backup && reader.Has("standby")) {
        reader.Error(*reader.Find("standby"), "standby",
                     "standby applies to backups only; set role = \"backup\" "
                     "or remove it");
      }
      const bool cold = is_backup && backend.standby == Standby::kCold;
      if (cold && !reader.Has("activate")) {
        reader.MissingKey(
            "activate", "a cold backup needs an activate command to start it");
      }
      for (std::string_view key : {"activate", "deactivate"}) {
        if (!cold && reader.Has(key)) {
          reader.Error(*reader.Find(key), key,
                       "runs only for cold backups (role = \"backup\", standby "
                       "= \"cold\")");
        }
      }
    }
    for (size_t j = 0; j < sites.size() && site.address_ok; ++j) {
      if (sites[j].address_ok &&
          SameEndpoint(cluster->backends[j].address, backend.address)) {
        Error(site.address, path + ".address",
              "duplicate backend " + backend.address.text +
                  ": same address as " + cluster_path + ".backends[" +
                  std::to_string(sites[j].index) + "] (line " +
                  std::to_string(sites[j].address.line) + ")");
        break;
      }
    }
    sites.push_back(site);
    cluster->backends.push_back(std::move(backend));
  }
  if (!policy_ok) return;
  if (cluster->policy == Policy::kAllActive) {
    for (size_t i = 0; i < sites.size(); ++i) {
      if (cluster->backends[i].role == Role::kBackup &&
          sites[i].role != nullptr) {
        Error(Where(sites[i].role->source()),
              cluster_path + ".backends[" + std::to_string(sites[i].index) +
                  "].role",
              "backups take traffic only with policy = \"primary-backup\"; "
              "cluster " +
                  cluster->name + " is all-active");
      }
    }
  } else if (primaries == 0) {
    cluster_reader.Warning(
        *array, "backends",
        "primary-backup cluster without a primary: backups always serve");
  }
}

void Loader::LoadListeners(TableReader& root) {
  const toml::table* listeners = root.ReadTable("listeners");
  if (listeners == nullptr) {
    if (!root.Has("listeners")) {
      Error(root.table_position(), "listeners",
            "at least one listener is required ([listeners.NAME])");
    }
    return;
  }
  if (listeners->empty()) {
    Error(Where(listeners->source()), "listeners",
          "at least one listener is required ([listeners.NAME])");
    return;
  }
  for (const auto& [key, node] : InFileOrder(*listeners)) {
    const std::string name(key->str());
    if (!ValidName(name)) {
      Error(Where(key->source()), "listeners." + name,
            "bad listener name; use letters, digits, '-', '_' or '.' (at most "
            "64)");
    }
    const toml::table* table = node->as_table();
    if (table == nullptr) {
      Error(Where(node->source()), "listeners." + name,
            "expected a table, got " + TypeName(node->type()));
      continue;
    }
    LoadListener(name, *table);
  }
}

void Loader::LoadListener(const std::string& name, const toml::table& table) {
  const std::string path = "listeners." + name;
  TableReader reader(*this, table, path, kListenerSchema);
  Listener listener;
  listener.name = name;
  if (!reader.Has("listen")) {
    reader.MissingKey(
        "listen", "a listener needs a listen address, e.g. \"0.0.0.0:8080\"");
  } else if (reader.ReadAddress("listen", PortZero::kAllowed,
                                &listener.listen)) {
    listen_sites_.push_back(
        {path, listener.listen, reader.PositionOf("listen")});
  }
  if (!reader.Has("cluster")) {
    reader.MissingKey("cluster",
                      "a listener needs a cluster to send requests to");
  } else if (reader.ReadString("cluster", &listener.cluster)) {
    std::vector<std::string> names;
    for (const Cluster& cluster : config_.clusters) {
      names.push_back(cluster.name);
    }
    const auto it = std::find(names.begin(), names.end(), listener.cluster);
    if (it != names.end()) {
      listener.cluster_index = static_cast<size_t>(it - names.begin());
      cluster_used_[listener.cluster_index] = true;
    } else {
      std::string message = "no cluster named '" + listener.cluster + "'";
      if (std::optional<std::string> near = Nearest(listener.cluster, names)) {
        message += "; did you mean '" + *near + "'?";
      } else if (!names.empty()) {
        message += " (clusters: " + Join(names, ", ") + ")";
      }
      reader.Error(*reader.Find("cluster"), "cluster", std::move(message));
    }
  }
  reader.ReadDuration("client_header_timeout", ZeroDuration::kRejected,
                      &listener.client_header_timeout);
  reader.ReadDuration("idle_timeout", ZeroDuration::kRejected,
                      &listener.idle_timeout);
  reader.ReadSize("max_header_size", 1024, 1024 * 1024,
                  &listener.max_header_size_bytes);
  reader.ReadSize("max_body_size", 0, std::numeric_limits<uint64_t>::max(),
                  &listener.max_body_size_bytes);
  LoadCertificates(reader, &listener);
  LoadListenerTls(reader, &listener);
  config_.listeners.push_back(std::move(listener));
}

void Loader::LoadCertificates(TableReader& reader, Listener* listener) {
  const bool has_cert = reader.Has("tls_cert");
  const bool has_key = reader.Has("tls_key");
  if (reader.Has("certificates")) {
    if (has_cert || has_key) {
      reader.Error(*reader.Find("certificates"), "certificates",
                   "give either tls_cert and tls_key or [[" + reader.path() +
                       ".certificates]], not both");
    }
    const toml::array* array = reader.ReadArray(
        "certificates",
        "an array of tables ([[" + reader.path() + ".certificates]])");
    if (array == nullptr) return;
    if (array->empty()) {
      reader.Error(*array, "certificates", "needs at least one certificate");
      return;
    }
    for (size_t i = 0; i < array->size(); ++i) {
      const toml::node& node = *array->get(i);
      const std::string path =
          reader.path() + ".certificates[" + std::to_string(i) + "]";
      const toml::table* table = node.as_table();
      if (table == nullptr) {
        Error(Where(node.source()), path,
              "expected a table, got " + TypeName(node.type()));
        continue;
      }
      TableReader entry(*this, *table, path, kCertificateSchema);
      Certificate certificate;
      bool ok = true;
      for (auto [key, out] : {std::pair{"cert", &certificate.cert_file},
                              std::pair{"key", &certificate.key_file}}) {
        if (!entry.Has(key)) {
          entry.MissingKey(
              key, std::string("a certificate needs both cert and key"));
          ok = false;
        } else {
          ok = entry.ReadFile(key, out) && ok;
        }
      }
      if (ok && CheckPair(*table->get("cert"), path, certificate)) {
        listener->certificates.push_back(std::move(certificate));
      }
    }
    return;
  }
  if (has_cert != has_key) {
    const std::string_view present = has_cert ? "tls_cert" : "tls_key";
    const std::string_view missing = has_cert ? "tls_key" : "tls_cert";
    reader.Error(
        *reader.Find(present), present,
        std::string(present) + " needs " + std::string(missing) + " as well");
    return;
  }
  if (!has_cert) return;
  Certificate certificate;
  const bool cert_ok = reader.ReadFile("tls_cert", &certificate.cert_file);
  const bool key_ok = reader.ReadFile("tls_key", &certificate.key_file);
  if (cert_ok && key_ok &&
      CheckPair(*reader.Find("tls_cert"), reader.path(), certificate)) {
    listener->certificates.push_back(std::move(certificate));
  }
}

bool Loader::CheckPair(const toml::node& node, const std::string& path,
                       const Certificate& certificate) {
  std::string error;
  if (CheckCertificatePair(certificate.cert_file, certificate.key_file,
                           &error)) {
    return true;
  }
  Error(Where(node.source()), path, error);
  return false;
}

void Loader::LoadListenerTls(TableReader& reader, Listener* listener) {
  std::string version;
  if (reader.ReadString("tls_min_version", &version)) {
    if (version == "1.2" || version == "1.3") {
      listener->tls_min_version = version;
    } else {
      reader.Error(*reader.Find("tls_min_version"), "tls_min_version",
                   "must be \"1.2\" or \"1.3\", got \"" + version + "\"");
    }
  }
  if (reader.ReadString("tls_ciphers", &listener->tls_ciphers)) {
    std::string error;
    if (!CheckCipherList(listener->tls_ciphers, &error)) {
      reader.Error(*reader.Find("tls_ciphers"), "tls_ciphers", error);
    }
  }
  if (reader.ReadFile("client_ca", &listener->client_ca)) {
    std::string error;
    if (!CheckCaFile(listener->client_ca, &error)) {
      reader.Error(*reader.Find("client_ca"), "client_ca", error);
    }
  }
  if (!listener->tls()) {
    for (std::string_view key :
         {"tls_min_version", "tls_ciphers", "client_ca"}) {
      if (const toml::node* node = reader.Find(key)) {
        reader.Warning(*node, key,
                       "has no effect without a certificate (tls_cert)");
      }
    }
  }
}

void Loader::CheckListenOverlaps() {
  std::vector<const ListenSite*> sites;
  for (const ListenSite& site : listen_sites_) sites.push_back(&site);
  std::stable_sort(sites.begin(), sites.end(),
                   [](const ListenSite* a, const ListenSite* b) {
                     return std::tie(a->position.line, a->position.column) <
                            std::tie(b->position.line, b->position.column);
                   });
  for (size_t i = 0; i < sites.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (!ListenOverlap(sites[i]->address, sites[j]->address)) continue;
      Error(sites[i]->position, sites[i]->owner + ".listen",
            "listen address " + sites[i]->address.text + " overlaps " +
                sites[j]->owner + " (" + sites[j]->address.text + ", line " +
                std::to_string(sites[j]->position.line) + ")");
      break;
    }
  }
}

}  // namespace

LoadResult ParseConfig(std::string_view text, std::string_view source_name) {
  Loader loader(source_name);
  return loader.Load(text);
}

LoadResult LoadConfigFile(const std::string& path, std::string* text_out) {
  const auto failure = [&](std::string message) {
    LoadResult result;
    result.errors.push_back({path, 0, 0, "", std::move(message)});
    return result;
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return failure("cannot open: " + std::string(std::strerror(errno)));
  }
  std::string text;
  char buffer[65536];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      return failure("cannot read: " + std::string(std::strerror(saved)));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text_out != nullptr) *text_out = text;
  return ParseConfig(text, path);
}

}  // namespace tandem::conf
