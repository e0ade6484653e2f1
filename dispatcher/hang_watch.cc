// Hang detection, the loop's part (and, on the same tick, the decay of
// p2c-ewma's latencies and which backends are passed over as slow)
// (docs/retries.md, "Hang detection"): a backend whose oldest request awaiting
// a response head is far older than its cluster's recent p99 on this loop takes
// no new request here, its requests that may be retried go elsewhere, and
// health/ is told, which ejects it until a check passes.
#include <algorithm>
#include <chrono>
#include <string>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/attempt.h"
#include "health/monitor.h"
#include "net/log.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often the loop looks while requests are in flight.
constexpr timeval kHangWatchInterval = {0, 10 * 1000};
// Suspected when the oldest awaiting request is older than this many times
// the cluster's p99, and than the floor.
constexpr int64_t kHangFactor = 8;
constexpr milliseconds kHangFloor{50};
// A suspicion lasts this long on the loop; health/ decides beyond it.
constexpr milliseconds kSuspicion{1000};
// A request that waited past the threshold on one backend and was answered
// by another at least this many times faster makes the first suspect.
constexpr int64_t kPromptFactor = 4;
// Requests still being sent are passed over, up to this many.
constexpr int kLookAhead = 8;

// Since when the oldest request of `backend` that has been sent awaits its
// response head.
std::optional<Clock::time_point> OldestAwaiting(const BackendRuntime& backend) {
  int looked = 0;
  for (const Attempt* c = backend.awaiting_first;
       c != nullptr && looked < kLookAhead; c = c->next_awaiting(), ++looked) {
    if (std::optional<Clock::time_point> since = c->AwaitingSince())
      return since;
  }
  return std::nullopt;
}

// Whether a backend other than `suspect` shows the cluster still answers:
// it takes requests, is not suspected itself, answered a request sent after
// `since` (the suspect's oldest), and none of its own has waited half the
// threshold. A cluster slowing down as a whole (every backend with old
// requests) has no such peer; a frozen backend holding every client (its
// peers idle) has one.
bool PeerDoingWell(const ClusterRuntime& runtime, size_t suspect,
                   Clock::time_point since, Clock::duration threshold,
                   Clock::time_point now) {
  for (size_t o = 0; o < runtime.backends.size(); ++o) {
    const BackendRuntime& peer = runtime.backends[o];
    if (o == suspect || !peer.eligible ||
        peer.suspected_until != Clock::time_point{} ||
        peer.answered_sent_at <= since) {
      continue;
    }
    const std::optional<Clock::time_point> oldest = OldestAwaiting(peer);
    if (!oldest || now - *oldest < threshold / 2) return true;
  }
  return false;
}

long long Ms(Clock::duration d) {
  return std::chrono::duration_cast<milliseconds>(d).count();
}

}  // namespace

void Loop::ArmHangWatch() {
  hang_watch_armed_ = true;
  evtimer_add(hang_watch_event_.get(), &kHangWatchInterval);
}

void Loop::HangWatchCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  self->hang_watch_armed_ = false;
  const Clock::time_point now = Clock::now();
  bool watching = self->current_ && self->CheckHangs(*self->current_, now);
  for (auto& generation : self->retired_) {
    watching = self->CheckHangs(*generation, now) || watching;
  }
  if (watching) self->ArmHangWatch();
}

void Loop::RetryAwaiting(BackendRuntime& backend) {
  // A retry moves the connection to another backend's list: step first.
  Attempt* next = nullptr;
  for (Attempt* c = backend.awaiting_first; c != nullptr; c = next) {
    next = c->next_awaiting();
    c->RetryOffHungBackend();
  }
}

bool Loop::CheckHangs(Generation& generation, Clock::time_point now) {
  bool watching = false;
  for (ClusterRuntime& runtime : generation.clusters_) {
    const conf::Cluster& config = *runtime.config;
    if (config.picker.algorithm == algorithms::Algorithm::kP2cEwma) {
      // Latencies decay while a backend is not picked, so a backend left
      // aside for being slow is tried again after a while.
      for (size_t b = 0; b < runtime.backends.size(); ++b) {
        runtime.latency_us[b] = static_cast<uint32_t>(
            std::min(runtime.backends[b].latency.Value(now), 4.0e9));
      }
    }
    if (runtime.avoid_slow) UpdateSlow(runtime, now);
    bool reapply = false;
    for (BackendRuntime& backend : runtime.backends) {
      if (backend.suspected_until != Clock::time_point{} &&
          now >= backend.suspected_until) {
        backend.suspected_until = {};
        reapply = true;
      }
      watching = watching || backend.awaiting_first != nullptr ||
                 backend.suspected_until != Clock::time_point{};
    }
    const std::optional<std::chrono::microseconds> p99 =
        runtime.head_times.p99();
    if (config.hang_detection && p99) {
      const Clock::duration threshold =
          std::max<Clock::duration>(kHangFactor * *p99, kHangFloor);
      for (size_t b = 0; b < runtime.backends.size(); ++b) {
        BackendRuntime& backend = runtime.backends[b];
        if (backend.suspected_until != Clock::time_point{} || !backend.eligible)
          continue;
        const std::optional<Clock::time_point> since = OldestAwaiting(backend);
        if (!since || now - *since <= threshold) continue;
        // The last backend that takes requests is never suspected.
        if (!PeerDoingWell(runtime, b, *since, threshold, now)) continue;
        reapply = true;
        watching = true;
        net::Log(net::LogLevel::kWarn, "proxy", "backend suspected hung",
                 {{"cluster", config.name},
                  {"backend", backend.config->address.text},
                  {"oldest_ms", Ms(now - *since)},
                  {"p99_us", p99->count()},
                  {"threshold_ms", Ms(threshold)},
                  {"loop", index_}});
        Suspect(runtime, backend, now,
                "suspected hung: oldest request " +
                    std::to_string(Ms(now - *since)) +
                    " ms without a response head, cluster p99 " +
                    std::to_string(std::max<long long>(Ms(*p99), 0)) + " ms");
      }
    }
    // Eligibility first, so the retries below go elsewhere.
    if (reapply) generation.ApplyHealth(health_.get());
    for (BackendRuntime& backend : runtime.backends) {
      if (backend.suspected_until != Clock::time_point{}) {
        RetryAwaiting(backend);
      }
    }
  }
  return watching;
}

void Loop::Suspect(ClusterRuntime& runtime, BackendRuntime& backend,
                   Clock::time_point now, const std::string& reason) {
  backend.suspected_until = now + kSuspicion;
  backend.stats->hang_suspicions.Add();
  if (health_monitor_ != nullptr) {
    health_monitor_->ReportHang(runtime.config->name,
                                backend.config->address.text, reason);
  }
}

void Loop::SuspectUnanswered(ClusterRuntime& runtime, size_t suspect,
                             Clock::duration waited, size_t answered_by,
                             Clock::duration answered_in) {
  const conf::Cluster& config = *runtime.config;
  BackendRuntime& backend = runtime.backends[suspect];
  if (!config.hang_detection ||
      backend.suspected_until != Clock::time_point{} || !backend.eligible) {
    return;
  }
  const std::optional<std::chrono::microseconds> p99 = runtime.head_times.p99();
  if (!p99 ||
      waited <= std::max<Clock::duration>(kHangFactor * *p99, kHangFloor) ||
      answered_in * kPromptFactor > waited) {
    return;
  }
  // The generation the request runs under (a reload may have followed).
  Generation* generation =
      current_ && current_->Holds(runtime) ? current_.get() : nullptr;
  for (auto& g : retired_) {
    if (g->Holds(runtime)) generation = g.get();
  }
  if (generation == nullptr) return;
  const Clock::time_point now = Clock::now();
  const std::string& other = runtime.backends[answered_by].config->address.text;
  net::Log(net::LogLevel::kWarn, "proxy", "backend suspected hung",
           {{"cluster", config.name},
            {"backend", backend.config->address.text},
            {"unanswered_ms", Ms(waited)},
            {"answered_by", other},
            {"answered_ms", Ms(answered_in)},
            {"p99_us", p99->count()},
            {"loop", index_}});
  Suspect(runtime, backend, now,
          "suspected hung: a request waited " + std::to_string(Ms(waited)) +
              " ms on it without a response head; " + other +
              " answered it in " + std::to_string(Ms(answered_in)) + " ms");
  generation->ApplyHealth(health_.get());
  RetryAwaiting(backend);
  if (!hang_watch_armed_) ArmHangWatch();
}

void Loop::UpdateSlow(ClusterRuntime& runtime, Clock::time_point now) {
  for (size_t b = 0; b < runtime.backends.size(); ++b)
    runtime.slow_views[b].eligible = runtime.backends[b].eligible;
  const algorithms::SlowFound found =
      algorithms::FindSlow(runtime.slow_views, runtime.slow_next);
  runtime.slow_count = found.count;
  if (runtime.slow_next == runtime.slow) return;
  for (size_t b = 0; b < runtime.backends.size(); ++b) {
    if (runtime.slow_next[b] == runtime.slow[b]) continue;
    BackendRuntime& backend = runtime.backends[b];
    const uint32_t median = runtime.slow_views[b].estimate.value_us();
    if (runtime.slow_next[b]) {
      backend.slow_since = now;
      backend.slow_probe_at = now;
      net::Log(net::LogLevel::kWarn, "proxy", "backend passed over as slow",
               {{"cluster", runtime.config->name},
                {"backend", backend.config->address.text},
                {"median_us", median},
                {"fastest_us", found.fastest_us},
                {"loop", index_}});
    } else {
      net::Log(net::LogLevel::kInfo, "proxy",
               "backend no longer passed over as slow",
               {{"cluster", runtime.config->name},
                {"backend", backend.config->address.text},
                {"median_us", median},
                {"fastest_us", found.fastest_us},
                {"after_ms", Ms(now - backend.slow_since)},
                {"loop", index_}});
      backend.slow_since = {};
    }
  }
  runtime.slow.swap(runtime.slow_next);
}

}  // namespace tandem::dispatcher
