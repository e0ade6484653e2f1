// Tests of TOML loading: defaults, every error class with its exact position,
// warnings, suggestions, and the full example of DESIGN.md.
#include "conf/load.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/unit/conf/test_pem.h"

namespace tandem::conf {
namespace {

using std::chrono::milliseconds;

std::vector<std::string> ToStrings(const std::vector<Diagnostic>& diagnostics) {
  std::vector<std::string> out;
  for (const Diagnostic& diagnostic : diagnostics) {
    out.push_back(diagnostic.ToString());
  }
  return out;
}

std::vector<std::string> Errors(std::string_view text) {
  LoadResult result = ParseConfig(text, "t.toml");
  CHECK(result.ok() == result.errors.empty());
  return ToStrings(result.errors);
}

std::vector<std::string> Warnings(std::string_view text) {
  LoadResult result = ParseConfig(text, "t.toml");
  INFO(doctest::toString(ToStrings(result.errors)));
  CHECK(result.errors.empty());
  return ToStrings(result.warnings);
}

std::shared_ptr<const Config> Valid(std::string_view text) {
  LoadResult result = ParseConfig(text, "t.toml");
  INFO(doctest::toString(ToStrings(result.errors)));
  REQUIRE(result.ok());
  CHECK(result.errors.empty());
  return result.config;
}

using Lines = std::vector<std::string>;

// A directory under $TMPDIR, removed with what it holds.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "conf_test.XXXXXX");
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string Write(const std::string& name, const std::string& content) const {
    const std::string path = path_ + "/" + name;
    std::ofstream(path) << content;
    return path;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr std::string_view kMinimal = R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)";

TEST_CASE("a minimal file gets the contract's defaults") {
  auto config = Valid(kMinimal);
  CHECK(config->path == "t.toml");
  CHECK(config->global.threads == 0);
  CHECK(config->global.grace_period == milliseconds(10'000));
  CHECK(config->global.drain_delay == milliseconds(0));
  CHECK(config->global.access_log == "stdout");
  CHECK(config->global.access_log_format == AccessLogFormat::kText);
  CHECK_FALSE(config->admin.has_value());

  REQUIRE(config->listeners.size() == 1);
  const Listener& listener = config->listeners[0];
  CHECK(listener.name == "web");
  CHECK(listener.listen.text == "127.0.0.1:8080");
  CHECK(listener.cluster == "compute");
  CHECK(listener.cluster_index == 0);
  CHECK(listener.client_header_timeout == milliseconds(10'000));
  CHECK(listener.idle_timeout == milliseconds(60'000));
  CHECK(listener.max_header_size_bytes == 65536);
  CHECK(listener.max_body_size_bytes == 0);
  CHECK_FALSE(listener.tls());

  REQUIRE(config->clusters.size() == 1);
  const Cluster& cluster = config->clusters[0];
  CHECK(cluster.name == "compute");
  CHECK(cluster.policy == Policy::kAllActive);
  CHECK(cluster.picker.algorithm == algorithms::Algorithm::kRoundRobin);
  CHECK(cluster.picker.hash_balance_factor == 0);
  CHECK(cluster.hash_key.kind == HashKey::Kind::kNone);
  CHECK(cluster.min_active == 1);
  CHECK(cluster.retries == 2);
  CHECK(cluster.connect_timeout == milliseconds(1'000));
  CHECK(cluster.request_timeout == milliseconds(30'000));
  CHECK(cluster.try_timeout == milliseconds(30'000));
  CHECK(cluster.idle_timeout == milliseconds(60'000));
  CHECK(cluster.max_idle_connections == 64);
  CHECK(cluster.panic_threshold == 0);
  CHECK(cluster.slow_start == milliseconds(0));
  CHECK(cluster.health.kind == HealthCheck::Kind::kNone);
  CHECK_FALSE(cluster.outlier.has_value());
  CHECK_FALSE(cluster.tls.enabled);
  CHECK(cluster.tls.verify);
  REQUIRE(cluster.backends.size() == 1);
  CHECK(cluster.backends[0].address.text == "127.0.0.1:9001");
  CHECK(cluster.backends[0].weight == 1);
  CHECK(cluster.backends[0].role == Role::kPrimary);
  CHECK(config->FindCluster("compute") == &cluster);
}

TEST_CASE("try_timeout follows request_timeout when it is not given") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
request_timeout = "5s"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->clusters[0].request_timeout == milliseconds(5'000));
  CHECK(config->clusters[0].try_timeout == milliseconds(5'000));
}

TEST_CASE("try_timeout is \"auto\" unless a duration is given") {
  const auto with = [](std::string_view line) {
    return Valid(
        std::string(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
request_timeout = "20s"
)") + std::string(line) +
        "\n[[clusters.compute.backends]]\naddress = \"127.0.0.1:9001\"\n");
  };
  auto config = with("");
  CHECK(config->clusters[0].try_timeout_auto);
  CHECK(config->clusters[0].try_timeout == milliseconds(20'000));  // ceiling
  config = with("try_timeout = \"auto\"");
  CHECK(config->clusters[0].try_timeout_auto);
  CHECK(config->clusters[0].try_timeout == milliseconds(20'000));
  config = with("try_timeout = \"2s\"");
  CHECK_FALSE(config->clusters[0].try_timeout_auto);
  CHECK(config->clusters[0].try_timeout == milliseconds(2'000));
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
try_timeout = "soon"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)")
            .size() == 1);
}

TEST_CASE("circuit breakers, hedging: off by default, read when given") {
  const auto with = [](std::string_view lines) {
    return std::string(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
)") + std::string(lines) +
           "\n[[clusters.compute.backends]]\naddress = \"127.0.0.1:9001\"\n";
  };
  auto config = Valid(with(""));
  const Cluster* cluster = &config->clusters[0];
  CHECK(cluster->max_requests == 0);
  CHECK(cluster->max_pending == 0);
  CHECK(cluster->max_retries_in_flight == 0);
  CHECK_FALSE(cluster->has_breakers());
  CHECK_FALSE(cluster->hedge);
  CHECK(cluster->avoid_slow_backends);
  config = Valid(
      with("max_requests = 100\nmax_pending = 20\nmax_retries_in_flight = 5\n"
           "hedge = true\navoid_slow_backends = false"));
  cluster = &config->clusters[0];
  CHECK(cluster->max_requests == 100);
  CHECK(cluster->max_pending == 20);
  CHECK(cluster->max_retries_in_flight == 5);
  CHECK(cluster->has_breakers());
  CHECK(cluster->hedge);
  CHECK_FALSE(cluster->avoid_slow_backends);
  CHECK(Errors(with("max_requests = -1")).size() == 1);
  CHECK(Errors(with("max_pending = \"many\"")).size() == 1);
  CHECK(Errors(with("hedge = \"yes\"")).size() == 1);
  CHECK(Valid(with(""))->clusters[0].priority_header.empty());
  CHECK(Valid(with("priority_header = \"X-Priority\""))
            ->clusters[0]
            .priority_header == "X-Priority");
  CHECK(Errors(with("priority_header = \"X Priority\"")).size() == 1);
}

TEST_CASE("rate limits on a listener and a cluster") {
  const std::string base(kMinimal);
  auto config = Valid(base);
  CHECK_FALSE(config->listeners[0].rate_limit.has_value());
  CHECK_FALSE(config->clusters[0].rate_limit.has_value());
  config = Valid(base + R"([listeners.web.rate_limit]
rate = 50
[clusters.compute.rate_limit]
rate = 2.5
burst = 10
key = "header:X-User"
max_keys = 1000
dry_run = true
)");
  REQUIRE(config->listeners[0].rate_limit.has_value());
  const conf::RateLimit& listener = *config->listeners[0].rate_limit;
  CHECK(listener.rate == 50);
  CHECK(listener.bucket() == 50);  // burst defaults to the rate
  CHECK(listener.key == conf::RateLimit::Key::kSourceIp);
  CHECK(listener.max_keys == 100000);
  CHECK_FALSE(listener.dry_run);
  REQUIRE(config->clusters[0].rate_limit.has_value());
  const conf::RateLimit& cluster = *config->clusters[0].rate_limit;
  CHECK(cluster.bucket() == 10);
  CHECK(cluster.key == conf::RateLimit::Key::kHeader);
  CHECK(cluster.header == "X-User");
  CHECK(cluster.max_keys == 1000);
  CHECK(cluster.dry_run);
  CHECK(Errors(base + "[clusters.compute.rate_limit]\nburst = 5\n").size() ==
        1);
  CHECK(Errors(base + "[clusters.compute.rate_limit]\nrate = 0\n").size() == 1);
  CHECK(Errors(base +
               "[clusters.compute.rate_limit]\nrate = 1\nkey = \"cookie:a\"\n")
            .size() == 1);
  CHECK(Errors(base +
               "[clusters.compute.rate_limit]\nrate = 1\nkey = \"header:\"\n")
            .size() == 1);
  CHECK(
      Errors(base + "[listeners.web.rate_limit]\nrate = 1\nrat = 2\n").size() ==
      1);
}

TEST_CASE("protocols: HTTP/2 by default, h2 only on TLS, h2c only plain") {
  const std::string listener =
      "[listeners.web]\nlisten = \"127.0.0.1:8080\"\ncluster = \"compute\"\n";
  const std::string cluster =
      "[clusters.compute]\n[[clusters.compute.backends]]\naddress = "
      "\"127.0.0.1:9001\"\n";
  auto config = Valid(listener + cluster);
  CHECK(config->listeners[0].http1);
  CHECK(config->listeners[0].http2);
  CHECK(config->listeners[0].h2_max_concurrent_streams == 100);
  CHECK(config->listeners[0].h2_initial_window_size == 65536);
  CHECK(config->listeners[0].h2_max_streams_per_connection == 0);
  config = Valid(listener + "protocols = [\"http/1.1\"]\n" + cluster);
  CHECK(config->listeners[0].http1);
  CHECK_FALSE(config->listeners[0].http2);
  config = Valid(listener +
                 "protocols = [\"h2c\"]\nh2_initial_window_size = "
                 "\"1MiB\"\n" +
                 cluster);
  CHECK_FALSE(config->listeners[0].http1);
  CHECK(config->listeners[0].http2);
  CHECK(config->listeners[0].h2_initial_window_size == 1048576);
  CHECK(Errors(listener + "protocols = [\"h2\"]\n" + cluster).size() == 1);
  CHECK(Errors(listener + "protocols = []\n" + cluster).size() == 1);
  CHECK(Errors(listener + "protocols = [\"spdy\"]\n" + cluster).size() == 1);
  CHECK(Errors(listener + "h2_max_concurrent_streams = 0\n" + cluster).size() ==
        1);
  CHECK(config->listeners[0].priority == 4);
  CHECK(Valid(listener + "priority = \"low\"\n" + cluster)
            ->listeners[0]
            .priority == 7);
  CHECK(
      Valid(listener + "priority = \"1\"\n" + cluster)->listeners[0].priority ==
      1);
  CHECK(Errors(listener + "priority = \"urgent\"\n" + cluster).size() == 1);
}

TEST_CASE("a try_timeout longer than request_timeout is an error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
request_timeout = "5s"
try_timeout = "6s"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:7:15: clusters.compute.try_timeout: try_timeout (6s) must "
             "not "
             "exceed request_timeout (5s)"});
  // Against the default request_timeout of 30s too.
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
try_timeout = "1m"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:6:15: clusters.compute.try_timeout: try_timeout (1m) must "
             "not "
             "exceed request_timeout (30s)"});
}

TEST_CASE("a health table defaults to http checks; without it there are none") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "checked"

[listeners.other]
listen = "127.0.0.1:8081"
cluster = "unchecked"

[clusters.checked.health]
[[clusters.checked.backends]]
address = "127.0.0.1:9001"

[clusters.unchecked]
[[clusters.unchecked.backends]]
address = "127.0.0.1:9001"
)");
  const HealthCheck& health = config->FindCluster("checked")->health;
  CHECK(health.kind == HealthCheck::Kind::kHttp);
  CHECK(health.path == "/healthz");
  CHECK(health.interval == milliseconds(2'000));
  CHECK(health.timeout == milliseconds(1'000));
  CHECK(health.rise == 2);
  CHECK(health.fall == 3);
  CHECK(health.expect_status_min == 200);
  CHECK(health.expect_status_max == 399);
  CHECK(config->FindCluster("unchecked")->health.kind ==
        HealthCheck::Kind::kNone);
}

TEST_CASE("an outlier table turns on outlier detection with its defaults") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute.outlier]
max_ejection_percent = 20
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  const auto& outlier = config->clusters[0].outlier;
  REQUIRE(outlier.has_value());
  CHECK(outlier->consecutive_failures == 5);
  CHECK(outlier->ejection_time == milliseconds(30'000));
  CHECK(outlier->max_ejection_percent == 20);
}

TEST_CASE("the full example of DESIGN.md parses, with SNI certificates") {
  TempDir dir;
  const TestPem api = SelfSignedPem("api.example");
  const TestPem www = SelfSignedPem("www.example");
  const std::string cert = dir.Write("api.pem", api.cert);
  const std::string key = dir.Write("api.key", api.key);
  const std::string cert2 = dir.Write("www.pem", www.cert);
  const std::string key2 = dir.Write("www.key", www.key);
  const std::string activate = dir.Write("activate.sh", "#!/bin/sh\nexit 0\n");
  const std::string text = R"(
[global]
threads = 0                 # event-loop threads; 0 = one per core
grace_period = "10s"        # SIGTERM: finish in-flight requests within this
drain_delay = "0s"          # SIGTERM: fail /readyz, keep serving this long, then stop accepting
access_log = "stdout"       # "stdout", a path, or "off"

[admin]
listen = "127.0.0.1:9901"
token = "change-me"         # mutating /admin calls need "Authorization: Bearer <token>"

[listeners.web]
listen = "0.0.0.0:8080"
cluster = "compute"
client_header_timeout = "10s"
idle_timeout = "60s"
max_header_size = "64KiB"   # sizes: integer bytes, or a string with B/KiB/MiB/GiB
max_body_size = "0"         # 0 = no limit
[[listeners.web.certificates]]
cert = ")" + cert + R"("
key = ")" + key + R"("
[[listeners.web.certificates]]
cert = ")" + cert2 + R"("
key = ")" + key2 + R"("

[clusters.compute]
policy = "primary-backup"   # or "all-active"
algorithm = "round-robin"   # least-conn | p2c | ring-hash | maglev | random
hash_key = "header:X-User"  # for ring-hash / maglev: header:NAME | cookie:NAME | source-ip | path
min_active = 2
retries = 2
connect_timeout = "1s"
request_timeout = "30s"
panic_threshold = 0.0       # 0 = off; see "State decision"
slow_start = "10s"

[clusters.compute.health]
kind = "http"               # http | tcp | none
path = "/healthz"
interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[clusters.compute.outlier]
consecutive_failures = 5
ejection_time = "30s"
max_ejection_percent = 50

[[clusters.compute.backends]]
address = "127.0.0.1:9001"
weight = 1
role = "primary"            # or "backup"

[[clusters.compute.backends]]
address = "127.0.0.1:9003"
role = "backup"
standby = "cold"            # hot | warm | cold
activate = ")" + activate + R"("
)";
  LoadResult result = ParseConfig(text, "tandem.toml");
  INFO(doctest::toString(ToStrings(result.errors)));
  REQUIRE(result.ok());
  // The example sets hash_key on a round-robin cluster to show the syntax.
  CHECK(ToStrings(result.warnings) ==
        Lines{"tandem.toml:29:12: clusters.compute.hash_key: used by ring-hash "
              "and maglev "
              "only; this cluster does not hash"});
  const Config& config = *result.config;
  REQUIRE(config.admin.has_value());
  CHECK(config.admin->listen.text == "127.0.0.1:9901");
  CHECK(config.admin->token == "change-me");
  const Listener& web = config.listeners.at(0);
  CHECK(web.listen.text == "0.0.0.0:8080");
  CHECK(web.max_header_size_bytes == 65536);
  REQUIRE(web.certificates.size() == 2);
  CHECK(web.certificates[0].cert_file == cert);
  CHECK(web.certificates[0].key_file == key);
  CHECK(web.certificates[1].cert_file == cert2);
  CHECK(web.certificates[1].key_file == key2);
  const Cluster& compute = config.clusters.at(0);
  CHECK(compute.policy == Policy::kPrimaryBackup);
  CHECK(compute.hash_key.kind == HashKey::Kind::kHeader);
  CHECK(compute.hash_key.name == "X-User");
  CHECK(compute.min_active == 2);
  CHECK(compute.slow_start == milliseconds(10'000));
  CHECK(compute.health.kind == HealthCheck::Kind::kHttp);
  REQUIRE(compute.outlier.has_value());
  CHECK(compute.outlier->max_ejection_percent == 50);
  REQUIRE(compute.backends.size() == 2);
  CHECK(compute.backends[0].role == Role::kPrimary);
  CHECK(compute.backends[1].role == Role::kBackup);
  CHECK(compute.backends[1].standby == Standby::kCold);
  CHECK(compute.backends[1].activate == activate);
}

TEST_CASE("unknown keys are errors that suggest the nearest known key") {
  CHECK(Errors(R"([global]
treads = 4
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
idle_timout = "5s"

[clusters.compute]
max_ejection_percnt = 10
[[clusters.compute.backends]]
adress = "127.0.0.1:9001"
)") == Lines{
           "t.toml:2:1: global.treads: unknown key 'treads'; did you mean "
           "'threads'?",
           "t.toml:6:1: listeners.web.idle_timout: unknown key 'idle_timout'; "
           "did you "
           "mean 'idle_timeout'?",
           "t.toml:9:1: clusters.compute.max_ejection_percnt: unknown key "
           "'max_ejection_percnt'; did you mean 'max_ejection_percent' (a key "
           "of "
           "[clusters.NAME.outlier])?",
           "t.toml:10:1: clusters.compute.backends[0].address: every backend "
           "needs an "
           "address",
           "t.toml:11:1: clusters.compute.backends[0].adress: unknown key "
           "'adress'; did "
           "you mean 'address'?",
       });
}

TEST_CASE("a known key in the wrong table says where it belongs") {
  CHECK(Errors(R"(threads = 4
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
weight = 3
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:1:1: threads: unknown key 'threads'; it belongs in [global]",
           "t.toml:7:1: clusters.compute.weight: unknown key 'weight'; it "
           "belongs in "
           "[[clusters.NAME.backends]] or [[clusters.NAME.dns]]",
       });
}

TEST_CASE("an unknown key far from every known one gets no suggestion") {
  CHECK(Errors(R"([global]
zzzzzz = 1
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:2:1: global.zzzzzz: unknown key 'zzzzzz'"});
}

TEST_CASE("a misspelled choice suggests the nearest valid one") {
  CHECK(Errors(R"([global]
access_log_format = "jsn"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary"
algorithm = "roundrobin"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
role = "bakup"
)") == Lines{
           "t.toml:2:21: global.access_log_format: unknown format \"jsn\"; did "
           "you mean "
           "\"json\"?",
           "t.toml:7:10: clusters.compute.policy: unknown policy \"primary\"; "
           "expected "
           "\"all-active\" or \"primary-backup\"",
           "t.toml:8:13: clusters.compute.algorithm: unknown algorithm "
           "\"roundrobin\"; "
           "did you mean \"round-robin\"?",
           "t.toml:11:8: clusters.compute.backends[0].role: unknown role "
           "\"bakup\"; did "
           "you mean \"backup\"?",
       });
}

TEST_CASE("values of the wrong type name the expected and the actual type") {
  CHECK(Errors(R"([global]
threads = "4"
access_log = 1
[listeners.web]
listen = 8080
cluster = "compute"
max_header_size = true
[clusters.compute]
tls = "yes"
panic_threshold = "0.5"
health = 1
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
weight = 1.5
)") == Lines{
           "t.toml:2:11: global.threads: expected an integer, got string",
           "t.toml:3:14: global.access_log: expected a string, got integer",
           "t.toml:5:10: listeners.web.listen: expected an address string such "
           "as "
           "\"127.0.0.1:8080\", got integer",
           "t.toml:7:19: listeners.web.max_header_size: expected a size "
           "(integer bytes, "
           "or a string such as \"64KiB\"), got boolean",
           "t.toml:9:7: clusters.compute.tls: expected a boolean (true or "
           "false), got "
           "string",
           "t.toml:10:19: clusters.compute.panic_threshold: expected a number, "
           "got "
           "string",
           "t.toml:11:10: clusters.compute.health: expected a table, got "
           "integer",
           "t.toml:14:10: clusters.compute.backends[0].weight: expected an "
           "integer, got "
           "float",
       });
}

TEST_CASE("bad durations are errors at the value") {
  CHECK(Errors(R"([global]
grace_period = 10
drain_delay = "-1s"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
idle_timeout = "10x"
client_header_timeout = "0s"
[clusters.compute]
connect_timeout = "1.5"
slow_start = 5.0
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:2:16: global.grace_period: a duration needs a unit: write "
           "\"10s\" or "
           "\"10ms\" (units: ms, s, m, h)",
           "t.toml:3:15: global.drain_delay: a duration cannot be negative, "
           "got \"-1s\"",
           "t.toml:7:16: listeners.web.idle_timeout: unknown unit 'x' in "
           "duration "
           "\"10x\" (use ms, s, m or h)",
           "t.toml:8:25: listeners.web.client_header_timeout: must be longer "
           "than 0",
           "t.toml:10:19: clusters.compute.connect_timeout: duration \"1.5\" "
           "needs a unit "
           "(ms, s, m or h), e.g. \"1.5s\"",
           "t.toml:11:14: clusters.compute.slow_start: expected a duration "
           "string such "
           "as \"10s\", got float",
       });
}

TEST_CASE("sizes accept bytes and binary units and reject the rest") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
max_header_size = 2048
max_body_size = "1GiB"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->listeners[0].max_header_size_bytes == 2048);
  CHECK(config->listeners[0].max_body_size_bytes == 1073741824);

  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
max_header_size = "64KB"
max_body_size = -1
[listeners.api]
listen = "127.0.0.1:8081"
cluster = "compute"
max_header_size = "2MiB"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:4:19: listeners.web.max_header_size: unknown unit 'KB' in "
           "size "
           "\"64KB\" (use B, KiB, MiB or GiB; 1 KiB = 1024 bytes)",
           "t.toml:5:17: listeners.web.max_body_size: a size cannot be "
           "negative, got -1",
           "t.toml:9:19: listeners.api.max_header_size: must be between 1024 "
           "and "
           "1048576 bytes, got 2097152",
       });
}

TEST_CASE("bad addresses are errors at the value") {
  CHECK(
      Errors(R"([admin]
listen = "127.0.0.1"
[listeners.web]
listen = "[::1]:99999"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:0"
[[clusters.compute.backends]]
address = "::1:80"
[[clusters.compute.backends]]
address = "300.1.1.1:80"
)") ==
      Lines{
          "t.toml:2:10: admin.listen: address \"127.0.0.1\" misses its port; "
          "write "
          "HOST:PORT, e.g. \"127.0.0.1:8080\"",
          "t.toml:4:10: listeners.web.listen: bad port '99999' in "
          "\"[::1]:99999\" "
          "(expected 0..65535)",
          "t.toml:8:11: clusters.compute.backends[0].address: port 0 is not "
          "allowed in "
          "\"127.0.0.1:0\" (expected 1..65535)",
          "t.toml:10:11: clusters.compute.backends[1].address: IPv6 address in "
          "\"::1:80\" needs brackets, e.g. \"[::1]:8080\"",
          "t.toml:12:11: clusters.compute.backends[2].address: bad IPv4 "
          "address "
          "'300.1.1.1' in \"300.1.1.1:80\"",
      });
}

TEST_CASE("an unresolvable backend host name is an error at the value") {
  // The resolver's reason varies with the system; the rest is fixed.
  const Lines errors = Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "no-such-host.invalid:80"
)");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].starts_with(
      "t.toml:6:11: clusters.compute.backends[0].address: cannot resolve host "
      "'no-such-host.invalid': "));
}

TEST_CASE("listen ports 0 are ephemeral and never clash") {
  auto config = Valid(R"([admin]
listen = "127.0.0.1:0"
[listeners.a]
listen = "127.0.0.1:0"
cluster = "compute"
[listeners.b]
listen = "127.0.0.1:0"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->listeners.size() == 2);
  CHECK(config->admin->listen.port() == 0);
}

TEST_CASE("two listeners on the same address are an error at the second") {
  CHECK(Errors(R"([listeners.b]
listen = "127.0.0.1:8080"
cluster = "compute"
[listeners.a]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:5:10: listeners.a.listen: listen address 127.0.0.1:8080 "
             "overlaps "
             "listeners.b (127.0.0.1:8080, line 2)"});
}

TEST_CASE("a wildcard and a specific address on the same port clash") {
  CHECK(Errors(R"([listeners.specific]
listen = "127.0.0.1:8080"
cluster = "compute"
[listeners.any]
listen = "0.0.0.0:8080"
cluster = "compute"
[listeners.any6]
listen = "[::]:8080"
cluster = "compute"
[admin]
listen = "127.0.0.1:8080"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:10: listeners.any.listen: listen address 0.0.0.0:8080 "
           "overlaps "
           "listeners.specific (127.0.0.1:8080, line 2)",
           "t.toml:8:10: listeners.any6.listen: listen address [::]:8080 "
           "overlaps "
           "listeners.specific (127.0.0.1:8080, line 2)",
           "t.toml:11:10: admin.listen: listen address 127.0.0.1:8080 overlaps "
           "listeners.specific (127.0.0.1:8080, line 2)",
       });
}

TEST_CASE(
    "listeners on different ports or different specific addresses coexist") {
  auto config = Valid(R"([listeners.a]
listen = "127.0.0.1:8080"
cluster = "compute"
[listeners.b]
listen = "127.0.0.2:8080"
cluster = "compute"
[listeners.c]
listen = "0.0.0.0:8081"
cluster = "compute"
[listeners.d]
listen = "[::1]:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->listeners.size() == 4);
}

TEST_CASE("listeners and clusters keep the order of the file") {
  auto config = Valid(R"([listeners.zeta]
listen = "127.0.0.1:8080"
cluster = "zulu"
[listeners.alpha]
listen = "127.0.0.1:8081"
cluster = "alpha"
[clusters.zulu]
[[clusters.zulu.backends]]
address = "127.0.0.1:9001"
[clusters.alpha]
[[clusters.alpha.backends]]
address = "127.0.0.1:9002"
)");
  CHECK(config->listeners[0].name == "zeta");
  CHECK(config->listeners[1].name == "alpha");
  CHECK(config->clusters[0].name == "zulu");
  CHECK(config->clusters[1].name == "alpha");
  CHECK(config->listeners[0].cluster_index == 0);
  CHECK(config->listeners[1].cluster_index == 1);
}

TEST_CASE("duplicate backend addresses within a cluster are an error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
[[clusters.compute.backends]]
address = "localhost:9001"
)") == Lines{"t.toml:10:11: clusters.compute.backends[2].address: duplicate "
             "backend "
             "localhost:9001: same address as clusters.compute.backends[0] "
             "(line 6)"});
}

TEST_CASE("the same backend address in two clusters is fine") {
  Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "a"
[listeners.api]
listen = "127.0.0.1:8081"
cluster = "b"
[clusters.a]
[[clusters.a.backends]]
address = "127.0.0.1:9001"
[clusters.b]
[[clusters.b.backends]]
address = "127.0.0.1:9001"
)");
}

TEST_CASE("a listener naming a missing cluster suggests the nearest name") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "comptue"
[listeners.api]
listen = "127.0.0.1:8081"
cluster = "zzz"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[clusters.batch]
[[clusters.batch.backends]]
address = "127.0.0.1:9002"
)") == Lines{
           "t.toml:3:11: listeners.web.cluster: no cluster named 'comptue'; "
           "did you mean "
           "'compute'?",
           "t.toml:6:11: listeners.api.cluster: no cluster named 'zzz' "
           "(clusters: "
           "compute, batch)",
       });
}

TEST_CASE("a listener needs listen and cluster") {
  CHECK(Errors(R"([listeners.web]
idle_timeout = "5s"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:1:1: listeners.web.listen: a listener needs a listen "
           "address, e.g. "
           "\"0.0.0.0:8080\"",
           "t.toml:1:1: listeners.web.cluster: a listener needs a cluster to "
           "send "
           "requests to",
       });
}

TEST_CASE("a cluster without backends is an error at the cluster") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[listeners.api]
listen = "127.0.0.1:8081"
cluster = "empty"

[clusters.compute]
retries = 1

[clusters.empty]
backends = []
)") == Lines{
           "t.toml:8:1: clusters.compute.backends: a cluster needs at least "
           "one backend "
           "([[clusters.compute.backends]]) or a DNS name to find them "
           "([[clusters.compute.dns]])",
           "t.toml:12:12: clusters.empty.backends: a cluster needs at least "
           "one backend",
       });
}

TEST_CASE("backends written as a single table are a type error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.backends]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:4:1: clusters.compute.backends: expected an array of tables "
           "([[clusters.compute.backends]]), got table"});
}

TEST_CASE("a file without listeners or clusters is an error at its start") {
  LoadResult result = ParseConfig("[global]\nthreads = 2\n", "t.toml");
  CHECK_FALSE(result.ok());
  CHECK(ToStrings(result.errors) ==
        Lines{"t.toml:1:1: clusters: at least one cluster is required "
              "([clusters.NAME])",
              "t.toml:1:1: listeners: at least one listener is required "
              "([listeners.NAME])"});
  CHECK(Errors("") ==
        Lines{"t.toml:1:1: clusters: at least one cluster is required "
              "([clusters.NAME])",
              "t.toml:1:1: listeners: at least one listener is required "
              "([listeners.NAME])"});
  CHECK(Errors("[listeners]\n[clusters]\n") ==
        Lines{"t.toml:1:1: listeners: at least one listener is required "
              "([listeners.NAME])",
              "t.toml:2:1: clusters: at least one cluster is required "
              "([clusters.NAME])"});
}

TEST_CASE("keys nested tens of thousands deep are an error, not a crash") {
  // toml++ walks nested tables recursively, so such a key overflowed the
  // stack; a key is written on one line, so the dots of a line are bounded.
  std::string deep = "[a";
  for (int i = 0; i < 100000; ++i) deep += ".a";
  deep += "]\n";
  CHECK(Errors(deep) ==
        Lines{"t.toml:1:515: more than 256 '.' on one line; keys nested this "
              "deep are not accepted"});
  std::string dotted = "[global]\nthreads = 1\nx";
  for (int i = 0; i < 100000; ++i) dotted += ".x";
  dotted += " = 1\n";
  CHECK(Errors(dotted) ==
        Lines{"t.toml:3:514: more than 256 '.' on one line; keys nested this "
              "deep are not accepted"});
  // 256 on a line are fine, wherever they are (here in a comment).
  CHECK(Errors("# " + std::string(256, '.') + "\n[listeners]\n[clusters]\n") ==
        Lines{"t.toml:2:1: listeners: at least one listener is required "
              "([listeners.NAME])",
              "t.toml:3:1: clusters: at least one cluster is required "
              "([clusters.NAME])"});
}

TEST_CASE("out-of-range numbers give the range and the value") {
  CHECK(Errors(R"([global]
threads = 1025
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
retries = 11
min_active = 0
panic_threshold = 1.5
max_idle_connections = -1
hash_balance_factor = 0.5
[clusters.compute.health]
rise = 0
fall = 0
[clusters.compute.outlier]
consecutive_failures = 0
max_ejection_percent = 101
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
weight = 0
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
weight = 257
)") == Lines{
           "t.toml:2:11: global.threads: must be between 0 and 1024, got 1025",
           "t.toml:8:11: clusters.compute.retries: must be between 0 and 10, "
           "got 11",
           "t.toml:9:14: clusters.compute.min_active: must be between 1 and "
           "4294967295, "
           "got 0",
           "t.toml:10:19: clusters.compute.panic_threshold: must be between 0 "
           "and 1, got "
           "1.5",
           "t.toml:11:24: clusters.compute.max_idle_connections: must be "
           "between 0 and "
           "65535, got -1",
           "t.toml:12:23: clusters.compute.hash_balance_factor: must be 0 "
           "(off) or at "
           "least 1.0, got 0.5",
           "t.toml:14:8: clusters.compute.health.rise: must be between 1 and "
           "1000, got 0",
           "t.toml:15:8: clusters.compute.health.fall: must be between 1 and "
           "1000, got 0",
           "t.toml:17:24: clusters.compute.outlier.consecutive_failures: must "
           "be between "
           "1 and 1000, got 0",
           "t.toml:18:24: clusters.compute.outlier.max_ejection_percent: must "
           "be between "
           "0 and 100, got 101",
           "t.toml:21:10: clusters.compute.backends[0].weight: must be between "
           "1 and 256, "
           "got 0",
           "t.toml:24:10: clusters.compute.backends[1].weight: must be between "
           "1 and 256, "
           "got 257",
       });
}

TEST_CASE("min_active above the number of backends is an error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
min_active = 3
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
role = "backup"
)") == Lines{"t.toml:6:14: clusters.compute.min_active: min_active = 3 but the "
             "cluster has "
             "2 backends"});
}

TEST_CASE("min_active equal to primaries plus backups is accepted") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
min_active = 2
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
role = "backup"
standby = "warm"
)");
  CHECK(config->clusters[0].min_active == 2);
  CHECK(config->clusters[0].backends[1].standby == Standby::kWarm);
}

TEST_CASE("every error in a file is reported, sorted by position") {
  const Lines errors = Errors(R"([global]
threads = -1
grace_period = "soon"

[listeners.web]
listen = "127.0.0.1:8080"
cluster = "nope"

[clusters.compute]
retries = 99
[[clusters.compute.backends]]
address = "127.0.0.1"
weight = 1000
)");
  CHECK(
      errors ==
      Lines{
          "t.toml:2:11: global.threads: must be between 0 and 1024, got -1",
          "t.toml:3:16: global.grace_period: bad duration \"soon\": expected a "
          "number, e.g. \"10s\" or \"1.5s\"",
          "t.toml:7:11: listeners.web.cluster: no cluster named 'nope' "
          "(clusters: compute)",
          "t.toml:10:11: clusters.compute.retries: must be between 0 and 10, "
          "got "
          "99",
          "t.toml:12:11: clusters.compute.backends[0].address: address "
          "\"127.0.0.1\" misses its port; write HOST:PORT, e.g. "
          "\"127.0.0.1:8080\"",
          "t.toml:13:10: clusters.compute.backends[0].weight: must be between "
          "1 "
          "and 256, got 1000",
      });
}

TEST_CASE("a TOML syntax error is reported with its position") {
  LoadResult result = ParseConfig("[global]\nthreads = \n", "t.toml");
  CHECK_FALSE(result.ok());
  REQUIRE(result.errors.size() == 1);
  CHECK(result.errors[0].file == "t.toml");
  CHECK(result.errors[0].line == 2);
  CHECK(result.errors[0].column == 11);
  CHECK(result.errors[0].key.empty());
  CHECK(result.errors[0].ToString().starts_with("t.toml:2:11: "));
  CHECK(result.errors[0].message.find("expected value") != std::string::npos);

  CHECK(Errors("[a]\nx = 1\n[a]\n") ==
        Lines{"t.toml:3:1: Error while parsing table header: cannot redefine "
              "existing "
              "table 'a'"});
}

TEST_CASE("an admin listener off loopback needs a token") {
  CHECK(Errors(R"([admin]
listen = "0.0.0.0:9901"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:2:10: admin.listen: admin listens on non-loopback address "
             "0.0.0.0:9901 without a token; set [admin] token, or listen on "
             "127.0.0.1"});
  CHECK(
      Warnings(R"([admin]
listen = "0.0.0.0:9901"
token = "secret"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") ==
      Lines{
          "t.toml:2:10: admin.listen: admin listens on non-loopback address "
          "0.0.0.0:9901; /status and /metrics are readable without the token"});
}

TEST_CASE("an admin table without listen listens on 127.0.0.1:9901") {
  auto config = Valid(R"([admin]
token = "secret"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  REQUIRE(config->admin.has_value());
  CHECK(config->admin->listen.text == "127.0.0.1:9901");
  CHECK(config->admin->token == "secret");
  CHECK(Errors(R"([admin]
token = ""
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:2:9: admin.token: must not be empty"});
}

TEST_CASE(
    "min_active on an all-active cluster and unused clusters are warnings") {
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
min_active = 1
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[clusters.spare]
[[clusters.spare.backends]]
address = "127.0.0.1:9002"
)") == Lines{
           "t.toml:5:14: clusters.compute.min_active: meaningful for policy = "
           "\"primary-backup\" only",
           "t.toml:8:1: clusters.spare: not used by any listener",
       });
}

TEST_CASE("standby is for backups, activate for cold backups only") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
standby = "hot"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
role = "backup"
standby = "cold"
deactivate = "stop"
[[clusters.compute.backends]]
address = "127.0.0.1:9003"
role = "backup"
activate = "start"
[[clusters.compute.backends]]
address = "127.0.0.1:9004"
deactivate = "stop"
)") == Lines{
           "t.toml:8:11: clusters.compute.backends[0].standby: standby applies "
           "to "
           "backups only; set role = \"backup\" or remove it",
           "t.toml:9:1: clusters.compute.backends[1].activate: a cold backup "
           "needs an "
           "activate command to start it",
           "t.toml:17:12: clusters.compute.backends[2].activate: runs only for "
           "cold "
           "backups (role = \"backup\", standby = \"cold\")",
           "t.toml:20:14: clusters.compute.backends[3].deactivate: runs only "
           "for cold "
           "backups (role = \"backup\", standby = \"cold\")",
       });
}

TEST_CASE("backups default to hot standby and cold ones carry their commands") {
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
role = "backup"
[[clusters.compute.backends]]
address = "127.0.0.1:9003"
role = "backup"
standby = "cold"
activate = "systemctl start worker@3"
deactivate = "systemctl stop worker@3"
)");
  const auto& backends = config->clusters[0].backends;
  CHECK(backends[1].standby == Standby::kHot);
  CHECK(backends[2].standby == Standby::kCold);
  CHECK(backends[2].activate == "systemctl start worker@3");
  CHECK(backends[2].deactivate == "systemctl stop worker@3");
}

TEST_CASE("a backup in an all-active cluster is an error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
[[clusters.compute.backends]]
address = "127.0.0.1:9002"
role = "backup"
)") == Lines{
           "t.toml:9:8: clusters.compute.backends[1].role: backups take "
           "traffic only "
           "with policy = \"primary-backup\"; cluster compute is all-active"});
}

TEST_CASE("a primary-backup cluster without a primary is a warning") {
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
policy = "primary-backup"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
role = "backup"
)") == Lines{"t.toml:6:1: clusters.compute.backends: primary-backup cluster "
             "without a "
             "primary: backups always serve"});
}

TEST_CASE(
    "ring-hash and maglev need a hash_key, which is parsed into its parts") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
algorithm = "maglev"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:13: clusters.compute.hash_key: algorithm \"maglev\" needs "
           "hash_key: header:NAME, cookie:NAME, source-ip or path"});

  const auto hash_key_of = [](std::string_view key) {
    const std::string text = R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
algorithm = "ring-hash"
hash_balance_factor = 1.25
hash_key = ")" + std::string(key) +
                             R"("
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)";
    auto config = Valid(text);
    CHECK(config->clusters[0].picker.algorithm ==
          algorithms::Algorithm::kRingHash);
    CHECK(config->clusters[0].picker.hash_balance_factor == 1.25);
    return config->clusters[0].hash_key;
  };
  HashKey header = hash_key_of("header:X-User");
  CHECK(header.kind == HashKey::Kind::kHeader);
  CHECK(header.name == "X-User");
  HashKey cookie = hash_key_of("cookie:session");
  CHECK(cookie.kind == HashKey::Kind::kCookie);
  CHECK(cookie.name == "session");
  CHECK(hash_key_of("source-ip").kind == HashKey::Kind::kSourceIp);
  CHECK(hash_key_of("path").kind == HashKey::Kind::kPath);
}

TEST_CASE("a malformed hash_key is an error") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "a"
[listeners.api]
listen = "127.0.0.1:8081"
cluster = "b"
[clusters.a]
algorithm = "ring-hash"
hash_key = "header:"
[[clusters.a.backends]]
address = "127.0.0.1:9001"
[clusters.b]
algorithm = "maglev"
hash_key = "client-ip"
[[clusters.b.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:9:12: clusters.a.hash_key: bad name '' after 'header:'; "
           "expected a "
           "header or cookie name",
           "t.toml:14:12: clusters.b.hash_key: unknown hash key \"client-ip\"; "
           "expected "
           "header:NAME, cookie:NAME, source-ip or path",
       });
}

TEST_CASE("hashing keys on a cluster that does not hash are warnings") {
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
algorithm = "least-conn"
hash_key = "path"
hash_balance_factor = 2
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:6:12: clusters.compute.hash_key: used by ring-hash and "
           "maglev only; "
           "this cluster does not hash",
           "t.toml:7:23: clusters.compute.hash_balance_factor: used by "
           "ring-hash and "
           "maglev only; this cluster does not hash",
       });
}

TEST_CASE("every algorithm name maps to its enum") {
  const std::pair<std::string_view, algorithms::Algorithm> cases[] = {
      {"round-robin", algorithms::Algorithm::kRoundRobin},
      {"least-conn", algorithms::Algorithm::kLeastConn},
      {"p2c", algorithms::Algorithm::kP2c},
      {"random", algorithms::Algorithm::kRandom},
      {"maglev", algorithms::Algorithm::kMaglev},
  };
  for (const auto& [name, algorithm] : cases) {
    auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
hash_key = "source-ip"
algorithm = ")" + std::string(name) +
                        R"("
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
    CHECK(config->clusters[0].picker.algorithm == algorithm);
  }
}

TEST_CASE("listener TLS takes tls_cert and tls_key as one certificate") {
  TempDir dir;
  const TestPem pem = SelfSignedPem("localhost");
  const std::string cert = dir.Write("cert.pem", pem.cert);
  const std::string key = dir.Write("key.pem", pem.key);
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = ")" + cert +
                      R"("
tls_key = ")" + key + R"("
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  REQUIRE(config->listeners[0].certificates.size() == 1);
  CHECK(config->listeners[0].tls());
  CHECK(config->listeners[0].certificates[0].cert_file == cert);
  CHECK(config->listeners[0].certificates[0].key_file == key);
}

TEST_CASE(
    "a certificate that is not PEM or does not match its key is an error") {
  TempDir dir;
  const TestPem one = SelfSignedPem("one.example");
  const TestPem two = SelfSignedPem("two.example");
  dir.Write("one.pem", one.cert);
  dir.Write("two.key", two.key);
  dir.Write("junk.pem", "not a certificate");
  dir.Write("one.key", one.key);
  LoadResult result = ParseConfig(R"([listeners.a]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = "one.pem"
tls_key = "two.key"
[listeners.b]
listen = "127.0.0.1:8444"
cluster = "compute"
tls_cert = "junk.pem"
tls_key = "one.key"
tls_min_version = "1.1"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)",
                                  dir.path() + "/t.toml");
  REQUIRE(result.errors.size() == 3);
  CHECK(result.errors[0].line == 4);
  CHECK(result.errors[0].message.find("does not match") != std::string::npos);
  CHECK(result.errors[1].line == 9);
  CHECK(result.errors[1].message.find("cannot read the certificate") !=
        std::string::npos);
  CHECK(result.errors[2].key == "listeners.b.tls_min_version");
}

TEST_CASE("a tls_ciphers list OpenSSL finds no cipher in is an error") {
  TempDir dir;
  const TestPem pem = SelfSignedPem("one.example");
  dir.Write("one.pem", pem.cert);
  dir.Write("one.key", pem.key);
  const std::string listeners = R"([listeners.a]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = "one.pem"
tls_key = "one.key"
tls_ciphers = )";
  const std::string cluster = R"(
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)";
  LoadResult bad = ParseConfig(listeners + "\"NOT-A-CIPHER\"" + cluster,
                               dir.path() + "/t.toml");
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].key == "listeners.a.tls_ciphers");
  CHECK(bad.errors[0].line == 6);
  CHECK(bad.errors[0].message.find("no usable cipher") != std::string::npos);
  LoadResult good =
      ParseConfig(listeners + "\"ECDHE-RSA-AES128-GCM-SHA256\"" + cluster,
                  dir.path() + "/t.toml");
  CHECK(good.errors.empty());
  CHECK(good.ok());
}

TEST_CASE("listener TLS errors: half a pair, both forms, missing files") {
  TempDir dir;
  const std::string cert = dir.Write("cert.pem", "x");
  const std::string missing = dir.path() + "/missing.key";
  CHECK(Errors(R"([listeners.a]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = "cert.pem"
[listeners.b]
listen = "127.0.0.1:8444"
cluster = "compute"
tls_key = "key.pem"
[listeners.c]
listen = "127.0.0.1:8445"
cluster = "compute"
tls_cert = "cert.pem"
tls_key = "key.pem"
[[listeners.c.certificates]]
cert = "cert.pem"
key = "key.pem"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:4:12: listeners.a.tls_cert: tls_cert needs tls_key as well",
           "t.toml:8:11: listeners.b.tls_key: tls_key needs tls_cert as well",
           "t.toml:14:1: listeners.c.certificates: give either tls_cert and "
           "tls_key or "
           "[[listeners.c.certificates]], not both",
           "t.toml:15:8: listeners.c.certificates[0].cert: cannot read "
           "'cert.pem': No "
           "such file or directory",
           "t.toml:16:7: listeners.c.certificates[0].key: cannot read "
           "'key.pem': No "
           "such file or directory",
       });
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = ")" +
               cert + R"("
tls_key = ")" + missing +
               R"("
[[listeners.api.certificates]]
cert = ")" + dir.path() +
               R"("
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:11: listeners.web.tls_key: cannot read '" + missing +
               "': No such file or directory",
           "t.toml:6:1: listeners.api.listen: a listener needs a listen "
           "address, e.g. "
           "\"0.0.0.0:8080\"",
           "t.toml:6:1: listeners.api.cluster: a listener needs a cluster to "
           "send "
           "requests to",
           "t.toml:6:1: listeners.api.certificates[0].key: a certificate needs "
           "both cert "
           "and key",
           "t.toml:7:8: listeners.api.certificates[0].cert: '" + dir.path() +
               "' is a directory, not a file",
       });
}

TEST_CASE("an unreadable certificate file is an error") {
  if (geteuid() == 0) return;  // root reads everything
  TempDir dir;
  const TestPem pem = SelfSignedPem("localhost");
  const std::string cert = dir.Write("cert.pem", pem.cert);
  const std::string key = dir.Write("key.pem", pem.key);
  std::filesystem::permissions(key, std::filesystem::perms::none);
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8443"
cluster = "compute"
tls_cert = ")" +
               cert + R"("
tls_key = ")" + key +
               R"("
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:5:11: listeners.web.tls_key: cannot read '" + key +
             "': Permission denied"});
}

TEST_CASE(
    "relative file paths resolve against the configuration file's directory") {
  TempDir dir;
  const TestPem pem = SelfSignedPem("api.example");
  dir.Write("api.pem", pem.cert);
  dir.Write("api.key", pem.key);
  dir.Write("ca.pem", pem.cert);
  const std::string path = dir.Write("tandem.toml", R"([global]
access_log = "access.log"
[listeners.web]
listen = "127.0.0.1:8443"
cluster = "compute"
[[listeners.web.certificates]]
cert = "api.pem"
key = "api.key"
[clusters.compute]
tls = true
ca_file = "ca.pem"
sni = "api.internal"
verify_name = "api.example"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  LoadResult result = LoadConfigFile(path);
  INFO(doctest::toString(ToStrings(result.errors)));
  REQUIRE(result.ok());
  const Config& config = *result.config;
  CHECK(config.path == path);
  CHECK(config.global.access_log == dir.path() + "/access.log");
  CHECK(config.listeners[0].certificates[0].cert_file ==
        dir.path() + "/api.pem");
  CHECK(config.listeners[0].certificates[0].key_file ==
        dir.path() + "/api.key");
  const UpstreamTls& tls = config.clusters[0].tls;
  CHECK(tls.enabled);
  CHECK(tls.ca_file == dir.path() + "/ca.pem");
  CHECK(tls.sni == "api.internal");
  CHECK(tls.verify_name == "api.example");
  CHECK(tls.verify);
}

TEST_CASE("a missing configuration file is an error without position") {
  LoadResult result = LoadConfigFile("/nonexistent/tandem.toml");
  CHECK_FALSE(result.ok());
  CHECK(
      ToStrings(result.errors) ==
      Lines{
          "/nonexistent/tandem.toml: cannot open: No such file or directory"});
}

TEST_CASE("upstream TLS keys without tls = true are warnings") {
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
sni = "api.internal"
verify = false
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:7: clusters.compute.sni: has no effect without tls = true",
           "t.toml:6:10: clusters.compute.verify: has no effect without tls = "
           "true",
       });
}

TEST_CASE("expect_status takes a code or a range") {
  const auto status_of = [](std::string_view value) {
    auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
expect_status = )" + std::string(value) +
                        R"(
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
    const HealthCheck& health = config->clusters[0].health;
    return std::pair{health.expect_status_min, health.expect_status_max};
  };
  CHECK(status_of("204") == std::pair{204u, 204u});
  CHECK(status_of("\"200-299\"") == std::pair{200u, 299u});
  CHECK(status_of("\"200\"") == std::pair{200u, 200u});

  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
expect_status = 600
[clusters.b.health]
expect_status = "2xx"
[clusters.c.health]
expect_status = "399-200"
[clusters.d.health]
expect_status = [200]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:17: clusters.compute.health.expect_status: must be a "
           "status code "
           "between 100 and 599, got 600",
           "t.toml:6:1: clusters.b.backends: a cluster needs at least one "
           "backend "
           "([[clusters.b.backends]]) or a DNS name to find them "
           "([[clusters.b.dns]])",
           "t.toml:7:17: clusters.b.health.expect_status: bad status range "
           "\"2xx\"; "
           "expected e.g. 200 or \"200-399\"",
           "t.toml:8:1: clusters.c.backends: a cluster needs at least one "
           "backend "
           "([[clusters.c.backends]]) or a DNS name to find them "
           "([[clusters.c.dns]])",
           "t.toml:9:17: clusters.c.health.expect_status: bad status range "
           "\"399-200\"; "
           "codes must be between 100 and 599, the lower first",
           "t.toml:10:1: clusters.d.backends: a cluster needs at least one "
           "backend "
           "([[clusters.d.backends]]) or a DNS name to find them "
           "([[clusters.d.dns]])",
           "t.toml:11:17: clusters.d.health.expect_status: expected a status "
           "code such "
           "as 200 or a range \"200-399\", got array",
       });
}

TEST_CASE("a health path must start with a slash") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
path = "healthz"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:5:8: clusters.compute.health.path: must start with '/', got "
           "\"healthz\""});
}

TEST_CASE("a health timeout may not exceed the interval") {
  CHECK(Errors(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
interval = "1s"
timeout = "2s"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:6:11: clusters.compute.health.timeout: timeout (2s) must "
             "not exceed "
             "interval (1s)"});
  // A short interval alone pulls the default timeout (1s) down to it.
  auto config = Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
kind = "tcp"
interval = "500ms"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->clusters[0].health.kind == HealthCheck::Kind::kTcp);
  CHECK(config->clusters[0].health.interval == milliseconds(500));
  CHECK(config->clusters[0].health.timeout == milliseconds(500));
}

TEST_CASE("health keys that a kind ignores are warnings") {
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
kind = "tcp"
path = "/ready"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:6:8: clusters.compute.health.path: has no effect with "
             "kind = \"tcp\""});
  CHECK(Warnings(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute.health]
kind = "none"
rise = 3
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)") == Lines{"t.toml:6:8: clusters.compute.health.rise: has no effect with "
             "kind = \"none\""});
}

TEST_CASE("global keys are read into Global") {
  auto config = Valid(R"([global]
threads = 4
grace_period = "1m30s"
drain_delay = "2.5s"
access_log = "off"
access_log_format = "json"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)");
  CHECK(config->global.threads == 4);
  CHECK(config->global.grace_period == milliseconds(90'000));
  CHECK(config->global.drain_delay == milliseconds(2'500));
  CHECK(config->global.access_log == "off");
  CHECK(config->global.access_log_format == AccessLogFormat::kJson);
}

TEST_CASE("listener and cluster names are restricted to URL-safe characters") {
  CHECK(Errors(R"([listeners."web site"]
listen = "127.0.0.1:8080"
cluster = "a/b"
["clusters"."a/b"]
[["clusters"."a/b".backends]]
address = "127.0.0.1:9001"
)") == Lines{
           "t.toml:1:12: listeners.web site: bad listener name; use letters, "
           "digits, "
           "'-', '_' or '.' (at most 64)",
           "t.toml:4:13: clusters.a/b: bad cluster name; use letters, digits, "
           "'-', '_' "
           "or '.' (at most 64)",
       });
}

TEST_CASE("Diagnostic::ToString leaves out what is unknown") {
  CHECK(Diagnostic{"f.toml", 3, 7, "global.threads", "bad"}.ToString() ==
        "f.toml:3:7: global.threads: bad");
  CHECK(Diagnostic{"f.toml", 0, 0, "listeners", "none"}.ToString() ==
        "f.toml: listeners: none");
  CHECK(Diagnostic{"f.toml", 2, 1, "", "syntax"}.ToString() ==
        "f.toml:2:1: syntax");
  CHECK(Diagnostic{"f.toml", 0, 0, "", "cannot open"}.ToString() ==
        "f.toml: cannot open");
}

}  // namespace
TEST_CASE("send_proxy takes off, v1 or v2") {
  const auto with = [](std::string_view value) {
    return std::string(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
send_proxy = )") +
           std::string(value) +
           "\n[[clusters.compute.backends]]\naddress = \"127.0.0.1:9001\"\n";
  };
  CHECK(Valid(with("\"off\""))->clusters[0].send_proxy == 0);
  CHECK(Valid(with("\"v1\""))->clusters[0].send_proxy == 1);
  CHECK(Valid(with("\"v2\""))->clusters[0].send_proxy == 2);
  CHECK(Valid(R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[[clusters.compute.backends]]
address = "127.0.0.1:9001"
)")
            ->clusters[0]
            .send_proxy == 0);
  const std::vector<std::string> errors = Errors(with("\"v3\""));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].starts_with(
      "t.toml:5:14: clusters.compute.send_proxy: unknown PROXY protocol "
      "version \"v3\""));
}

}  // namespace tandem::conf

namespace tandem::conf {

TEST_CASE("the admin token can come from a file, not both ways") {
  TempDir dir;
  dir.Write("token", "s3cret\n");
  dir.Write("empty", "\n");
  LoadResult ok = ParseConfig(R"([admin]
listen = "0.0.0.0:9901"
token_file = "token"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "c"
[clusters.c]
[[clusters.c.backends]]
address = "127.0.0.1:9001"
)",
                              dir.path() + "/t.toml");
  REQUIRE(ok.ok());
  CHECK(ok.config->admin->token == "s3cret");
  LoadResult both = ParseConfig(R"([admin]
token = "a"
token_file = "token"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "c"
[clusters.c]
[[clusters.c.backends]]
address = "127.0.0.1:9001"
)",
                                dir.path() + "/t.toml");
  REQUIRE(both.errors.size() == 1);
  CHECK(both.errors[0].key == "admin.token_file");
  LoadResult empty = ParseConfig(R"([admin]
token_file = "empty"
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "c"
[clusters.c]
[[clusters.c.backends]]
address = "127.0.0.1:9001"
)",
                                 dir.path() + "/t.toml");
  REQUIRE(empty.errors.size() == 1);
  CHECK(empty.errors[0].message.find("is empty") != std::string::npos);
}

TEST_CASE("a token file is a regular file of at most 4 KiB") {
  TempDir dir;
  dir.Write("large", std::string(4097, 'x'));
  dir.Write("fits", std::string(4096, 'x'));
  REQUIRE(mkfifo((dir.path() + "/fifo").c_str(), 0600) == 0);
  auto load = [&](const char* file) {
    return ParseConfig(std::string("[admin]\ntoken_file = \"") + file + R"("
[listeners.web]
listen = "127.0.0.1:8080"
cluster = "c"
[clusters.c]
[[clusters.c.backends]]
address = "127.0.0.1:9001"
)",
                       dir.path() + "/t.toml");
  };
  LoadResult large = load("large");
  REQUIRE(large.errors.size() == 1);
  CHECK(large.errors[0].message.find("over 4 KiB") != std::string::npos);
  LoadResult fits = load("fits");
  REQUIRE(fits.ok());
  CHECK(fits.config->admin->token.size() == 4096);
  // Read, a FIFO with no writer would block here for ever.
  LoadResult fifo = load("fifo");
  REQUIRE(fifo.errors.size() == 1);
  CHECK(fifo.errors[0].message.find("not a regular file") != std::string::npos);
  LoadResult directory = load(".");
  REQUIRE_FALSE(directory.ok());
}

}  // namespace tandem::conf
