// The Prometheus exposition; see metrics.h.
#include "dispatcher/admin/metrics.h"

#include <dirent.h>
#include <prometheus/text_serializer.h>
#include <sys/resource.h>

#include <limits>

namespace tandem::dispatcher {
namespace {

using Label = prometheus::ClientMetric::Label;

const char* const kClassNames[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

}  // namespace

prometheus::ClientMetric& MetricsBuilder::Sample(const std::string& name,
                                                 const std::string& help,
                                                 prometheus::MetricType type,
                                                 std::vector<Label> labels) {
  Family& family = families_[name];
  if (family.family.name.empty()) {
    family.family.name = name;
    family.family.help = help;
    family.family.type = type;
  }
  std::vector<std::string> key;
  key.reserve(labels.size());
  for (const Label& label : labels) key.push_back(label.value);
  auto [it, inserted] =
      family.index.try_emplace(key, family.family.metric.size());
  if (inserted) {
    family.family.metric.emplace_back();
    family.family.metric.back().label = std::move(labels);
  }
  return family.family.metric[it->second];
}

void MetricsBuilder::Counter(const std::string& name, const std::string& help,
                             std::vector<Label> labels, double value) {
  Sample(name, help, prometheus::MetricType::Counter, std::move(labels))
      .counter.value += value;
}

void MetricsBuilder::Gauge(const std::string& name, const std::string& help,
                           std::vector<Label> labels, double value) {
  Sample(name, help, prometheus::MetricType::Gauge, std::move(labels))
      .gauge.value += value;
}

void MetricsBuilder::Histogram(const std::string& name, const std::string& help,
                               std::vector<Label> labels,
                               const LocalHistogram& histogram) {
  auto& sample =
      Sample(name, help, prometheus::MetricType::Histogram, std::move(labels))
          .histogram;
  const auto& bounds = LocalHistogram::kBounds;
  if (sample.bucket.empty()) {
    sample.bucket.resize(bounds.size() + 1);
    for (size_t i = 0; i < bounds.size(); ++i)
      sample.bucket[i].upper_bound = bounds[i];
    sample.bucket.back().upper_bound = std::numeric_limits<double>::infinity();
  }
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += histogram.bucket(i);
    sample.bucket[i].cumulative_count += cumulative;
  }
  sample.sample_count += cumulative;
  sample.sample_sum += static_cast<double>(histogram.sum_micros()) / 1e6;
}

std::string MetricsBuilder::Serialize() const {
  std::vector<prometheus::MetricFamily> families;
  families.reserve(families_.size());
  for (const auto& [name, family] : families_)
    families.push_back(family.family);
  return prometheus::TextSerializer().Serialize(families);
}

namespace {

// A listener's or a cluster's rate limit: what it said, by result.
void AddRateLimitMetrics(MetricsBuilder* b, const std::string& label,
                         const std::string& name, const RateLimitStats& rate) {
  for (size_t r = 0; r < rate.results.size(); ++r) {
    b->Counter("tandem_rate_limit_requests_total",
               "Requests a rate limit looked at, by what it said",
               {{label, name}, {"result", kRateResults[r]}},
               static_cast<double>(rate.results[r].Get()));
  }
}

}  // namespace

void AddLoopMetrics(const std::vector<std::unique_ptr<Loop>>& loops,
                    MetricsBuilder* b) {
  for (const auto& loop : loops) {
    const LoopStats& stats = loop->stats();
    b->Gauge("tandem_buffered_bytes",
             "Bytes waiting in connection buffers (client and backend, both "
             "directions), sampled every second",
             {}, static_cast<double>(stats.buffered_bytes.Get()));
    b->Gauge("tandem_pooled_bytes",
             "Bytes held between exchanges by the loops' spare parsers and "
             "scratch buffers, sampled every second",
             {}, static_cast<double>(stats.pooled_bytes.Get()));
    b->Gauge("tandem_parked_connections",
             "Client connections holding only their socket and one event: "
             "idle ones, their buffers and parser given back, and ones "
             "waiting for their PROXY protocol header",
             {}, static_cast<double>(stats.parked_connections.Get()));
    for (size_t r = 0; r < stats.accept_pauses.size(); ++r) {
      b->Counter("tandem_accept_pauses_total",
                 "Times a loop thread paused accepting, by what ran short",
                 {{"reason", kAcceptPauseReasons[r]}},
                 static_cast<double>(stats.accept_pauses[r].Get()));
    }
    stats.VisitListeners([&](const std::string& listener,
                             const ListenerStats& s) {
      for (size_t c = 0; c < 6; ++c) {
        b->Counter(
            "tandem_requests_total",
            "Requests answered, by listener and status class of the answer",
            {{"listener", listener}, {"code_class", kClassNames[c]}},
            static_cast<double>(s.requests[c].Get()));
      }
      b->Counter("tandem_tls_handshakes_total",
                 "TLS handshakes completed with clients",
                 {{"listener", listener}},
                 static_cast<double>(s.tls_handshakes.Get()));
      for (size_t r = 0; r < s.tls_handshake_failures.size(); ++r) {
        b->Counter("tandem_tls_handshake_failures_total",
                   "TLS handshakes with clients that failed, by reason",
                   {{"listener", listener}, {"reason", kHandshakeFailures[r]}},
                   static_cast<double>(s.tls_handshake_failures[r].Get()));
      }
      for (size_t r = 0; r < s.proxy_protocol.size(); ++r) {
        b->Counter("tandem_proxy_protocol_total",
                   "Connections on PROXY protocol listeners, by what became "
                   "of their header",
                   {{"listener", listener}, {"result", kProxyResults[r]}},
                   static_cast<double>(s.proxy_protocol[r].Get()));
      }
      b->Counter("tandem_h2_connections_total",
                 "Client connections that spoke HTTP/2",
                 {{"listener", listener}},
                 static_cast<double>(s.h2_connections.Get()));
      b->Counter("tandem_h2_streams_total", "HTTP/2 streams begun by clients",
                 {{"listener", listener}},
                 static_cast<double>(s.h2_streams.Get()));
      b->Counter("tandem_h2_resets_received_total",
                 "RST_STREAM frames received from HTTP/2 clients",
                 {{"listener", listener}},
                 static_cast<double>(s.h2_resets_received.Get()));
      for (size_t r = 0; r < s.h2_errors.size(); ++r) {
        b->Counter("tandem_h2_goaway_total",
                   "HTTP/2 connections tandem ended, by the error code of its "
                   "GOAWAY (or flood / bad_preface: dropped without one)",
                   {{"listener", listener}, {"reason", kH2Errors[r]}},
                   static_cast<double>(s.h2_errors[r].Get()));
      }
      b->Counter("tandem_downstream_connections_total",
                 "Client connections accepted", {{"listener", listener}},
                 static_cast<double>(s.connections_accepted.Get()));
      b->Gauge("tandem_downstream_connections_open", "Client connections open",
               {{"listener", listener}},
               static_cast<double>(s.connections_open.Get()));
      b->Gauge("tandem_listener_accept_paused",
               "Listening sockets (one per loop thread) not accepting for lack "
               "of descriptors or memory",
               {{"listener", listener}},
               static_cast<double>(s.accept_paused.Get()));
      AddRateLimitMetrics(b, "listener", listener, s.rate);
      b->Counter("tandem_downstream_received_bytes_total",
                 "Bytes received from clients", {{"listener", listener}},
                 static_cast<double>(s.bytes_received.Get()));
      b->Counter("tandem_downstream_sent_body_bytes_total",
                 "Response body bytes sent to clients",
                 {{"listener", listener}},
                 static_cast<double>(s.bytes_sent.Get()));
    });
    stats.VisitClusters([&](const std::string& cluster, const ClusterStats& s) {
      b->Histogram("tandem_request_duration_seconds",
                   "Time from a request head to the end of its response",
                   {{"cluster", cluster}}, s.request_duration);
      for (size_t r = 0; r < s.retries.size(); ++r) {
        b->Counter("tandem_retries_total",
                   "Tries after a failed one, by what failed",
                   {{"cluster", cluster},
                    {"reason", std::string(kFailureTraits[r].retry_reason)}},
                   static_cast<double>(s.retries[r].Get()));
      }
      for (size_t r = 0; r < s.hedges.size(); ++r) {
        b->Counter("tandem_hedges_total",
                   "Hedges: second tries raced against a slow first one, by "
                   "which answered first (or a racing try failed)",
                   {{"cluster", cluster}, {"result", kHedgeResults[r]}},
                   static_cast<double>(s.hedges[r].Get()));
      }
      for (size_t l = 0; l < s.breaker_overflows.size(); ++l) {
        b->Counter("tandem_circuit_breaker_overflows_total",
                   "Requests a circuit breaker made wait or turned away, by "
                   "limit",
                   {{"cluster", cluster}, {"limit", kBreakerLimits[l]}},
                   static_cast<double>(s.breaker_overflows[l].Get()));
      }
      AddRateLimitMetrics(b, "cluster", cluster, s.rate);
      for (size_t p = 0; p < s.shed.size(); ++p) {
        b->Counter("tandem_shed_total",
                   "Queued requests answered 503 to make room for one of "
                   "higher priority, by their priority (0 highest, 7 lowest)",
                   {{"cluster", cluster}, {"priority", std::to_string(p)}},
                   static_cast<double>(s.shed[p].Get()));
      }
      b->Gauge("tandem_queue_length",
               "Requests waiting for a backend below its limit",
               {{"cluster", cluster}}, static_cast<double>(s.queued.Get()));
      b->Counter("tandem_queue_timeouts_total",
                 "Queued requests answered 503 after queue_timeout",
                 {{"cluster", cluster}},
                 static_cast<double>(s.queue_timeouts.Get()));
      b->Histogram("tandem_queue_wait_seconds",
                   "Time requests waited in the queue", {{"cluster", cluster}},
                   s.queue_wait);
      b->Counter(
          "tandem_no_backend_total", "Requests that found no eligible backend",
          {{"cluster", cluster}}, static_cast<double>(s.no_backend.Get()));
    });
    stats.VisitBackends([&](const std::string& cluster,
                            const std::string& backend, const BackendStats& s) {
      std::vector<Label> labels = {{"cluster", cluster}, {"backend", backend}};
      for (size_t c = 0; c < 6; ++c) {
        auto with_class = labels;
        with_class.push_back({"code_class", kClassNames[c]});
        b->Counter("tandem_backend_responses_total",
                   "Exchanges that ended on a backend, by status class sent to "
                   "the client",
                   with_class, static_cast<double>(s.responses[c].Get()));
      }
      b->Histogram("tandem_backend_request_duration_seconds",
                   "Time from a request head to the end of its response, for "
                   "exchanges that ended on this backend",
                   labels, s.request_duration);
      b->Counter("tandem_backend_connect_failures_total",
                 "Failed connects to a backend", labels,
                 static_cast<double>(s.connect_failures.Get()));
      b->Counter(
          "tandem_backend_resets_total",
          "Backend connections closed or reset before a complete response",
          labels, static_cast<double>(s.upstream_resets.Get()));
      b->Counter("tandem_backend_timeouts_total",
                 "Backend tries that timed out", labels,
                 static_cast<double>(s.upstream_timeouts.Get()));
      b->Counter("tandem_backend_hang_suspicions_total",
                 "Times a loop suspected the backend hung: its oldest request "
                 "far older than the cluster's recent p99",
                 labels, static_cast<double>(s.hang_suspicions.Get()));
      b->Counter("tandem_backend_passed_over_slow_total",
                 "Requests a pick sent elsewhere because the backend answers "
                 "several times slower than the fastest of its cluster",
                 labels, static_cast<double>(s.passed_over_slow.Get()));
      b->Counter("tandem_backend_stray_closes_total",
                 "Pooled backend connections closed because the backend sent "
                 "bytes while they were idle",
                 labels, static_cast<double>(s.stray_closes.Get()));
      b->Counter("tandem_upstream_connections_total",
                 "Connections opened to a backend", labels,
                 static_cast<double>(s.connections_opened.Get()));
      b->Counter("tandem_upstream_connect_seconds_total",
                 "Time spent connecting to a backend (divide by connections "
                 "for the mean)",
                 labels, static_cast<double>(s.connect_micros.Get()) / 1e6);
      b->Gauge("tandem_upstream_connections_open",
               "Connections to a backend open (connecting, in use or idle)",
               labels, static_cast<double>(s.connections_open.Get()));
      b->Gauge("tandem_upstream_connections_idle",
               "Idle pooled connections to a backend", labels,
               static_cast<double>(s.idle_connections.Get()));
      b->Gauge("tandem_backend_inflight", "Requests in flight on a backend",
               labels, static_cast<double>(s.inflight.Get()));
    });
  }
}

void AddProcessMetrics(MetricsBuilder* b) {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 &&
      limit.rlim_cur != RLIM_INFINITY) {
    b->Gauge("tandem_process_max_fds",
             "Descriptors tandem may open (soft limit)", {},
             static_cast<double>(limit.rlim_cur));
  }
  // Reading the directory takes a descriptor: at the limit the gauge is left
  // out rather than guessed.
  DIR* directory = opendir("/proc/self/fd");
  if (directory == nullptr) return;
  uint64_t open = 0;
  while (dirent* entry = readdir(directory)) {
    if (entry->d_name[0] != '.') ++open;
  }
  closedir(directory);
  b->Gauge(
      "tandem_process_open_fds",
      "Descriptors tandem has open (sockets, files, event loops)", {},
      static_cast<double>(open > 0 ? open - 1 : 0));  // not the directory's
}

}  // namespace tandem::dispatcher
