// [[clusters.NAME.dns]]: names whose DNS answers give a cluster's backends,
// what each backend found gets, and how often the name is asked again.
#include <arpa/inet.h>

#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "conf/readers.h"

namespace tandem::conf {
namespace {

constexpr std::string_view kName = "name";
constexpr std::string_view kType = "type";
constexpr std::string_view kPort = "port";
constexpr std::string_view kWeight = "weight";
constexpr std::string_view kRole = "role";
constexpr std::string_view kStandby = "standby";
constexpr std::string_view kServers = "servers";

constexpr std::pair<std::string_view, DnsSource::Type> kTypes[] = {
    {"A", DnsSource::Type::kA},
    {"AAAA", DnsSource::Type::kAaaa},
    {"SRV", DnsSource::Type::kSrv}};

// A DNS name as RFC 1035 allows it: labels of 1-63 letters, digits, '-' or
// '_' (SRV owners: _http._tcp), 253 characters at most, an optional final dot.
std::string NameError(const std::string& name) {
  std::string_view rest = name;
  if (rest.ends_with('.')) rest.remove_suffix(1);
  bool good = !rest.empty() && rest.size() <= 253;
  size_t label = 0;
  for (char c : rest) {
    if (c == '.') {
      good = good && label > 0;
      label = 0;
      continue;
    }
    good = good && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                    c == '_');
    good = good && ++label <= 63;
  }
  if (good && label > 0) return "";
  return "not a DNS name: \"" + name + "\"";
}

// servers = ["10.0.0.10", "127.0.0.1:5353", "[::1]:53"]: IP literals, port
// 53 unless given.
bool ReadServers(TableReader& reader, std::string_view key, DnsSource& source) {
  const toml::array* array = reader.ReadArray(
      key, "an array of name server addresses, e.g. [\"10.0.0.10:53\"]");
  if (array == nullptr) return false;
  std::vector<SocketAddress> servers;
  bool good = !array->empty();
  if (array->empty()) reader.Error(*array, key, "name at least one server");
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& node = *array->get(i);
    const std::string where =
        reader.KeyPath(key) + "[" + std::to_string(i) + "]";
    const std::optional<std::string_view> text = node.value<std::string_view>();
    if (!text) {
      reader.context().Error(Where(node.source()), where,
                             "expected a string, got " + TypeName(node.type()));
      good = false;
      continue;
    }
    std::string with_port(*text);
    in6_addr v6;
    in_addr v4;
    if (inet_pton(AF_INET6, with_port.c_str(), &v6) == 1) {
      with_port = "[" + with_port + "]:53";
    } else if (inet_pton(AF_INET, with_port.c_str(), &v4) == 1) {
      with_port += ":53";
    }
    std::string error;
    std::optional<SocketAddress> address =
        ParseSocketAddress(with_port, PortZero::kRejected, &error);
    if (address && inet_pton(AF_INET, address->host.c_str(), &v4) != 1 &&
        inet_pton(AF_INET6, address->host.c_str(), &v6) != 1) {
      error = "a name server is an IP address, not a name";
      address.reset();
    }
    if (!address) {
      reader.context().Error(
          Where(node.source()), where,
          "bad name server \"" + std::string(*text) + "\": " + error);
      good = false;
      continue;
    }
    servers.push_back(std::move(*address));
  }
  if (good) source.servers = std::move(servers);
  return good;
}

std::span<const Key<DnsSource>> DnsKeys() {
  static const Key<DnsSource> keys[] = {
      StringKey(kName, &DnsSource::name, NameError)
          .Required("a dns entry needs the name to look up"),
      EnumKey(kType, &DnsSource::type, "record type", kTypes),
      IntegerKey(kPort, &DnsSource::port, 1, 65535),
      IntegerKey(kWeight, Member(&DnsSource::backend, &Backend::weight), 1,
                 256),
      EnumKey(kRole, Member(&DnsSource::backend, &Backend::role), "role",
              kRoles),
      EnumKey(kStandby, Member(&DnsSource::backend, &Backend::standby),
              "standby", kStandbys),
      IntegerKey("max_inflight",
                 Member(&DnsSource::backend, &Backend::max_inflight), 0,
                 1000000),
      IntegerKey("max_connections",
                 Member(&DnsSource::backend, &Backend::max_connections), 0,
                 1000000),
      DurationKey("refresh", &DnsSource::refresh, ZeroDuration::kRejected),
      DurationKey("failure_refresh", &DnsSource::failure_refresh,
                  ZeroDuration::kRejected),
      DurationKey("hold", &DnsSource::hold, ZeroDuration::kAllowed),
      CustomKey(kServers, ReadServers),
  };
  return keys;
}

// What depends on the record type and on the cluster's policy.
void CheckSource(TableReader& reader, const Cluster& cluster,
                 const DnsSource& source, bool policy_good) {
  if (reader.Bad(kType)) return;
  if (source.type == DnsSource::Type::kSrv) {
    for (std::string_view key : {kPort, kWeight, kRole, kStandby}) {
      if (!reader.Has(key)) continue;
      reader.Error(*reader.Find(key), key,
                   "SRV records carry the port, the weight and the priority "
                   "(which gives the role); remove " +
                       std::string(key));
    }
    return;
  }
  if (!reader.Has(kPort)) {
    reader.MissingKey(kPort, "A and AAAA records need the backends' port");
  }
  const Backend& backend = source.backend;
  const bool is_backup = !reader.Bad(kRole) && backend.role == Role::kBackup;
  if (reader.Has(kStandby) && !reader.Bad(kStandby)) {
    if (!is_backup) {
      reader.Error(*reader.Find(kStandby), kStandby,
                   "standby applies to backups only; set role = \"backup\" "
                   "or remove it");
    } else if (backend.standby == Standby::kCold) {
      reader.Error(*reader.Find(kStandby), kStandby,
                   "a cold backup needs its own activate command; backends "
                   "found in DNS can be hot or warm");
    }
  }
  if (is_backup && policy_good && cluster.policy == Policy::kAllActive) {
    reader.Error(*reader.Find(kRole), kRole,
                 "backups take traffic only with policy = \"primary-backup\"; "
                 "cluster " +
                     cluster.name + " is all-active");
  }
}

}  // namespace

const Schema& DnsSchema() {
  static const Schema schema = MakeSchema("[[clusters.NAME.dns]]", DnsKeys());
  return schema;
}

bool ReadDnsSources(TableReader& cluster_reader, std::string_view key,
                    Cluster& cluster) {
  const std::string path = cluster_reader.KeyPath(key);
  const bool policy_good = !cluster_reader.Bad(kClusterPolicy);
  return ReadTables(
      cluster_reader, key, DnsSchema(), "name at least one DNS entry",
      [&](size_t, TableReader& reader) {
        DnsSource source;
        ReadKeys(reader, DnsKeys(), source);
        CheckSource(reader, cluster, source, policy_good);
        source.backend.source = source.Source();
        for (size_t j = 0; j < cluster.dns.size() && reader.Good(kName); ++j) {
          if (cluster.dns[j].name == source.name &&
              cluster.dns[j].type == source.type) {
            reader.Error(*reader.Find(kName), kName,
                         "the same name and type as " + path + "[" +
                             std::to_string(j) + "]");
            break;
          }
        }
        cluster.dns.push_back(std::move(source));
      });
}

}  // namespace tandem::conf
