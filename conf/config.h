// The validated, immutable configuration tandem runs on. conf/ builds it from
// TOML; everything else only reads it through std::shared_ptr<const Config>.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "algorithms/picker.h"

namespace tandem::conf {

using Duration = std::chrono::milliseconds;

// A numeric socket address with the text it was written as ("127.0.0.1:9001",
// "[::1]:80"). Host names are resolved once, when the file is loaded.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  // Normalized "host:port" as shown in logs and /status: IP literals in their
  // canonical form ("[::1]:80"), host names lower-cased ("localhost:9001").
  std::string text;
  // The host part as written, without brackets: a host name or an IP literal.
  // Upstream TLS sends it as SNI by default.
  std::string host;

  const sockaddr* sa() const {
    return reinterpret_cast<const sockaddr*>(&storage);
  }
  // 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8.
  bool IsLoopback() const;
  // 0.0.0.0 or ::, i.e. every local address.
  bool IsWildcard() const;
  // Host byte order; 0 for an empty address.
  uint16_t port() const;
};

enum class AccessLogFormat { kText, kJson };

struct Global {
  uint32_t threads = 0;  // 0 = one per core
  Duration grace_period = std::chrono::seconds(10);
  Duration drain_delay = Duration::zero();
  std::string access_log = "stdout";  // "stdout", "off" or a path
  AccessLogFormat access_log_format = AccessLogFormat::kText;
};

struct Admin {
  SocketAddress listen;
  std::string token;  // empty: mutating calls are refused
};

struct Certificate {
  std::string cert_file;
  std::string key_file;
};

// An address block, e.g. "10.0.0.0/8" or "2001:db8::/32".
struct Cidr {
  int family = AF_INET;      // AF_INET or AF_INET6
  uint8_t address[16] = {};  // network order, host bits cleared
  int prefix = 0;            // bits that must match

  // Parses "ADDRESS/BITS" or a bare address (all bits); false on error.
  static bool Parse(std::string_view text, Cidr* out);
  // True when `address` lies in the block; an IPv4-mapped IPv6 address
  // (::ffff:a.b.c.d) is matched as IPv4.
  bool Contains(const sockaddr* address) const;
};

// [listeners.NAME.rate_limit] / [clusters.NAME.rate_limit]: token buckets
// of `burst` refilled at `rate` per second, one per key, for the whole
// process (docs/retries.md, "Rate limits").
struct RateLimit {
  enum class Key { kSourceIp, kHeader, kGlobal };
  double rate = 0;   // requests per second, > 0
  double burst = 0;  // bucket size; 0 = rate (at least 1)
  Key key = Key::kSourceIp;
  std::string header;  // for kHeader
  uint32_t max_keys = 100000;
  bool dry_run = false;  // count, never answer 429
  double bucket() const { return burst > 0 ? burst : std::max(rate, 1.0); }
  bool operator==(const RateLimit&) const = default;
};

struct Listener {
  std::string name;
  SocketAddress listen;
  std::string cluster;
  size_t cluster_index = 0;  // into Config::clusters
  Duration client_header_timeout = std::chrono::seconds(10);
  Duration idle_timeout = std::chrono::seconds(60);
  uint64_t max_header_size_bytes = 64 * 1024;
  uint64_t max_body_size_bytes = 0;  // 0 = no limit
  // TLS: empty = plain HTTP. The first certificate is the default when no
  // SNI name matches.
  std::vector<Certificate> certificates;
  std::string tls_min_version = "1.2";  // "1.2" or "1.3"
  // TLS 1.2 cipher list (OpenSSL syntax); empty: Mozilla's "intermediate".
  std::string tls_ciphers;
  // Verify client certificates against these CAs; empty: no client auth.
  std::string client_ca;
  // PROXY protocol (v1 or v2) required before any other byte, from these
  // peers only (docs/proxy-protocol.md).
  bool proxy_protocol = false;
  std::vector<Cidr> trusted_proxies = DefaultTrustedProxies();
  Duration proxy_protocol_timeout = std::chrono::seconds(5);
  std::optional<RateLimit> rate_limit;
  // Its requests' priority in a cluster's queue when they name none in the
  // cluster's priority_header (0 highest .. 7 lowest; "normal" is 4).
  uint8_t priority = 4;
  // Which protocols it serves (docs/http2.md): HTTP/1.1, and HTTP/2 as
  // "h2" by ALPN on a TLS listener or "h2c" by prior knowledge on a plain
  // one. `protocols` unset: both.
  bool http1 = true;
  bool http2 = true;
  std::string h2_name;  // "h2" or "h2c" as protocols names it, for its check
  uint32_t h2_max_concurrent_streams = 100;
  uint64_t h2_initial_window_size = 64 * 1024;
  uint64_t h2_max_streams_per_connection = 0;  // 0 = no limit
  // 127.0.0.0/8 and ::1.
  static std::vector<Cidr> DefaultTrustedProxies();
  bool tls() const { return !certificates.empty(); }
};

enum class Policy { kAllActive, kPrimaryBackup };
enum class UpstreamProtocol { kHttp1, kH2, kH2c };
enum class Role { kPrimary, kBackup };
enum class Standby { kHot, kWarm, kCold };

struct HashKey {
  enum class Kind { kNone, kHeader, kCookie, kSourceIp, kPath };
  Kind kind = Kind::kNone;
  std::string name;  // header or cookie name
};

struct HealthCheck {
  enum class Kind { kNone, kTcp, kHttp, kGrpc };
  Kind kind = Kind::kNone;
  // kGrpc: the service asked about (grpc.health.v1); empty: the server.
  std::string service;
  std::string method = "GET";
  std::string path = "/healthz";
  std::string host;         // Host of HTTP checks; empty: the backend's host
  std::string expect_body;  // a substring the body must hold; empty: any
  uint16_t port = 0;        // check another port; 0: the backend's
  Duration interval = std::chrono::seconds(2);
  Duration timeout = std::chrono::seconds(1);
  // While a backend is changing state (some checks passed or failed but not
  // rise/fall yet), as HAProxy's fastinter; and while it is down (downinter).
  Duration fast_interval = std::chrono::milliseconds(500);
  Duration down_interval = std::chrono::seconds(2);
  // Warm backups are checked at this slower rate.
  Duration warm_interval = std::chrono::seconds(10);
  // Each wait is interval ± a random share up to this (and the first check
  // of each backend starts at a random point of the first interval).
  Duration jitter = Duration::zero();
  uint32_t rise = 2;
  uint32_t fall = 3;
  uint32_t expect_status_min = 200;  // inclusive
  uint32_t expect_status_max = 399;  // inclusive
};

struct Outlier {
  uint32_t consecutive_failures = 5;
  Duration ejection_time = std::chrono::seconds(30);
  // Repeated ejections last ejection_time × times ejected, up to this.
  Duration max_ejection_time = std::chrono::seconds(300);
  uint32_t max_ejection_percent = 50;
  // Success-rate and failure-percentage detection (Envoy's names), judged
  // every `interval` over what reached the workers. On for every cluster:
  // without an [outlier] table these defaults apply (docs/health.md).
  Duration interval = std::chrono::seconds(10);
  uint32_t success_rate_minimum_hosts = 3;
  uint32_t success_rate_request_volume = 100;
  double success_rate_stdev_factor = 1.9;
  uint32_t failure_percentage_threshold = 85;
};

// [clusters.NAME.adaptive]: a gradient concurrency limiter's bounds
// (docs/retries.md, "Adaptive concurrency").
struct AdaptiveConcurrency {
  uint32_t min_limit = 3;
  uint32_t max_limit = 1000;
  double sample = 0.5;  // the quantile of each window's RTTs ("p50")
  double jitter = 0.1;  // of the interval between minRTT measurements
  bool operator==(const AdaptiveConcurrency&) const = default;
};

struct UpstreamTls {
  bool enabled = false;
  bool alpn_h2 = false;     // offer h2 by ALPN (protocol = "h2")
  std::string ca_file;      // empty: the system store
  std::string sni;          // empty: the backend address's host
  std::string verify_name;  // empty: the sni value
  bool verify = true;
};

struct Backend {
  SocketAddress address;
  uint32_t weight = 1;
  Role role = Role::kPrimary;
  Standby standby = Standby::kHot;  // meaningful for backups only
  std::string activate;             // cold standby: shell command
  std::string deactivate;
  // Requests this backend may hold at once across all threads; 0 = no limit.
  uint32_t max_inflight = 0;
  // Connections to this backend across all threads; 0 = no limit.
  uint32_t max_connections = 0;
  // Where it came from: empty when written in the file, "dns:NAME" when a
  // DnsSource found it (docs/discovery.md).
  std::string source;
  // Gone from its DNS answer: kept draining until the source's hold ends.
  bool vanished = false;
};

// A DNS name whose answer gives some of a cluster's backends
// ([[clusters.NAME.dns]], docs/discovery.md).
struct DnsSource {
  enum class Type { kA, kAaaa, kSrv };
  std::string name;
  Type type = Type::kA;
  uint16_t port = 0;  // A and AAAA; SRV records carry their own
  // What each backend found gets; SRV records carry weight and priority.
  Backend backend;
  Duration refresh = std::chrono::seconds(5);  // and never beyond the TTL
  Duration failure_refresh = std::chrono::seconds(1);
  Duration hold = std::chrono::seconds(30);
  std::vector<SocketAddress> servers;  // empty: /etc/resolv.conf

  // "dns:NAME": the source /status shows for what it found.
  std::string Source() const { return "dns:" + name; }
  // Whether `other` asks the same question of the same servers, so a reload
  // can keep what this one found.
  bool SameLookup(const DnsSource& other) const;
};

struct Cluster {
  std::string name;
  Policy policy = Policy::kAllActive;
  algorithms::PickerOptions picker;
  HashKey hash_key;
  uint32_t min_active = 1;
  uint32_t retries = 2;
  Duration connect_timeout = std::chrono::seconds(1);
  // "auto" (the default): derived per try from the cluster's recent time to
  // response head, for tries that may be retried (docs/retries.md); then
  // try_timeout holds request_timeout, the ceiling. A duration sets it.
  bool try_timeout_auto = true;
  Duration try_timeout = std::chrono::seconds(30);
  Duration request_timeout = std::chrono::seconds(30);
  Duration idle_timeout = std::chrono::seconds(60);
  uint32_t max_idle_connections = 64;  // per backend, per thread
  double panic_threshold = 0.0;        // 0 = off
  Duration slow_start = Duration::zero();
  // Retries may be at most this share of the cluster's requests in flight,
  // but at least 3 at once (Envoy's retry budget).
  double retry_budget = 0.2;
  // A request body up to this size is kept so the request can be retried
  // after it reached a backend; larger bodies are streamed and not retried.
  uint64_t retry_buffer_bytes = 64 * 1024;
  // Requests waiting for a backend below its max_inflight, per thread.
  uint32_t queue_size = 0;
  // Circuit breakers across threads (Envoy's thresholds; 0 = no limit):
  // requests in flight to backends, requests waiting in the queue, retries
  // in flight (docs/retries.md, "Circuit breakers").
  uint32_t max_requests = 0;
  uint32_t max_pending = 0;
  uint32_t max_retries_in_flight = 0;
  // The request header giving a request's priority (high, normal, low, or
  // 0-7 with 0 the highest); empty: every request is "normal". Higher ones
  // wait ahead in the queue and push lower ones out of a full queue.
  std::string priority_header;
  std::optional<RateLimit> rate_limit;
  // concurrency = "adaptive": tries in flight follow the workers' latency
  // (below max_requests when that is set too).
  bool concurrency_adaptive = false;
  AdaptiveConcurrency adaptive;
  bool has_breakers() const {
    return max_requests > 0 || max_pending > 0 || max_retries_in_flight > 0 ||
           concurrency_adaptive;
  }
  Duration queue_timeout = std::chrono::seconds(1);
  // Hang detection: a backend whose oldest request awaits its response head
  // far longer than the cluster's recent p99 takes no new request and is
  // checked at once (docs/retries.md).
  bool hang_detection = true;
  // Hedging: an idempotent request whose response head is later than the
  // cluster's recent p95 gets a second try on another backend; the first
  // head wins and the other try is cancelled (docs/retries.md).
  bool hedge = false;
  // Slow-backend avoidance: a backend answering several times slower than
  // the fastest of the cluster is passed over by the picks and probed about
  // once a second (docs/algorithms.md). Not for ring-hash, maglev and
  // p2c-ewma, which pick by key or by latency themselves.
  bool avoid_slow_backends = true;
  // Cold standby: how long activate/deactivate may run.
  Duration activate_timeout = std::chrono::seconds(30);
  HealthCheck health;
  std::optional<Outlier> outlier;
  UpstreamTls tls;
  // The PROXY protocol version sent to backends first (0: none); health
  // checks send the local form (docs/proxy-protocol.md).
  int send_proxy = 0;
  // What tandem speaks to the backends (docs/http2.md): HTTP/1.1, or
  // HTTP/2 over TLS ("h2") or cleartext with prior knowledge ("h2c"), whose
  // requests share a few multiplexed connections.
  UpstreamProtocol protocol = UpstreamProtocol::kHttp1;
  uint64_t max_requests_per_connection = 0;  // 0 = no limit
  std::vector<Backend> backends;
  std::vector<DnsSource> dns;
};

struct Config {
  std::string path;  // the file it was read from, or a name for embedded text
  Global global;
  std::optional<Admin> admin;
  std::vector<Listener> listeners;
  std::vector<Cluster> clusters;

  // nullptr when there is no cluster by that name.
  const Cluster* FindCluster(std::string_view name) const;
};

}  // namespace tandem::conf
