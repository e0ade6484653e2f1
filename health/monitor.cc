// The health monitor; see monitor.h.
#include "health/monitor.h"

#include <event2/event.h>
#include <sys/time.h>

#include <algorithm>
#include <future>
#include <random>
#include <tuple>

#include "algorithms/hash.h"
#include "health/ejection_cap.h"
#include "health/settings.h"
#include "health/success_rate.h"
#include "net/log.h"
#include "net/posix.h"
#include "net/proxy_protocol.h"

namespace tandem::health {
namespace {

using net::Log;
using net::LogLevel;
using net::ToTimeval;

constexpr timeval kTickInterval = {0, 100 * 1000};
// How long a refused connect keeps a backend out of panic routing.
constexpr auto kRefusedWindow = std::chrono::seconds(10);
// Slow-start weights are republished this often while a ramp runs.
constexpr auto kRampPublishInterval = std::chrono::milliseconds(500);
constexpr size_t kMaxEvents = 32;

int64_t WallMs() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  return static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
}

}  // namespace

HealthMonitor::HealthMonitor(PublishFn publish)
    : publish_fn_(std::move(publish)), rng_(std::random_device{}()) {}

HealthMonitor::~HealthMonitor() { Stop(); }

bool HealthMonitor::Start(std::shared_ptr<const conf::Config> config,
                          ClusterTls tls, std::string* error) {
  base_ = event_base_new();
  if (base_ == nullptr || !messages_.Init(base_, this)) {
    *error = "health: cannot create an event loop";
    return false;
  }
  tick_ = event_new(base_, -1, EV_PERSIST, TickCb, this);
  publish_event_ = event_new(base_, -1, 0, PublishCb, this);
  if (tick_ == nullptr || publish_event_ == nullptr ||
      event_add(tick_, &kTickInterval) != 0) {
    *error = "health: cannot create timers";
    return false;
  }
  Apply(std::move(config), tls);
  Publish();
  thread_ = std::thread([this] { Run(); });
  return true;
}

void HealthMonitor::Run() { event_base_loop(base_, EVLOOP_NO_EXIT_ON_EMPTY); }

void HealthMonitor::Stop() {
  if (thread_.joinable()) {
    messages_.Post(
        [](HealthMonitor& self) { event_base_loopbreak(self.base_); });
    thread_.join();
  }
  for (auto& cluster : clusters_) {
    for (auto& backend : cluster->backends) StopChecks(*backend);
  }
  clusters_.clear();
  if (tick_ != nullptr) event_free(tick_);
  if (publish_event_ != nullptr) event_free(publish_event_);
  tick_ = publish_event_ = nullptr;
  messages_.Reset();
  if (base_ != nullptr) event_base_free(base_);
  base_ = nullptr;
}

void HealthMonitor::ApplyConfig(std::shared_ptr<const conf::Config> config,
                                ClusterTls tls) {
  messages_.Post([config = std::move(config),
                  tls = std::move(tls)](HealthMonitor& self) mutable {
    self.Apply(std::move(config), tls);
  });
}

void HealthMonitor::Report(OutcomeBatch batch) {
  messages_.Post([batch = std::move(batch)](HealthMonitor& self) {
    self.OnReport(batch);
  });
}

std::shared_ptr<const HealthSnapshot> HealthMonitor::snapshot() const {
  std::lock_guard<std::mutex> lock(snapshot_mutex_);
  return snapshot_;
}

void HealthMonitor::Apply(std::shared_ptr<const conf::Config> config,
                          const ClusterTls& tls) {
  // Backends that stay keep their state machine, history and activation.
  std::map<std::pair<std::string, std::string>, std::unique_ptr<Backend>>
      previous;
  // Clusters that stay keep their events and panic (a DNS change applies a
  // config too, and must not wipe the explanation of the last failover).
  std::map<std::string, std::pair<std::vector<PolicyEvent>, bool>> events;
  for (auto& cluster : clusters_) {
    for (auto& backend : cluster->backends) {
      StopChecks(*backend);
      previous[{cluster->config->name, backend->address}] = std::move(backend);
    }
    events[cluster->config->name] = {std::move(cluster->events),
                                     cluster->panic};
  }
  clusters_.clear();
  config_ = std::move(config);
  for (const conf::Cluster& cluster_config : config_->clusters) {
    auto cluster = std::make_unique<Cluster>();
    cluster->monitor = this;
    cluster->config = &cluster_config;
    auto kept_events = events.find(cluster_config.name);
    const bool known = kept_events != events.end();
    if (known) {
      cluster->events = std::move(kept_events->second.first);
      cluster->panic = kept_events->second.second;
    }
    if (cluster_config.tls.enabled) {
      // Checks speak TLS as the data path does, with its context.
      auto it = tls.find(cluster_config.name);
      if (it != tls.end()) cluster->tls = it->second;
    }
    HealthSettings settings = HealthSettingsFor(cluster_config);
    bool checks = settings.checks;
    for (const conf::Backend& backend_config : cluster_config.backends) {
      std::unique_ptr<Backend> backend;
      auto it =
          previous.find({cluster_config.name, backend_config.address.text});
      if (it != previous.end()) {
        backend = std::move(it->second);
        previous.erase(it);
        backend->health->set_settings(settings);
      } else {
        backend = std::make_unique<Backend>();
        backend->address = backend_config.address.text;
        backend->health = std::make_unique<BackendHealth>(settings);
      }
      backend->config = &backend_config;
      backend->cluster = cluster.get();
      // A cold backup keeps its activation; any other backend forgets it.
      ColdStandbySettings cold =
          ColdStandbySettingsFor(cluster_config, backend_config);
      if (IsCold(backend_config)) {
        backend->cold.set_settings(cold);
      } else {
        backend->cold = ColdStandby(cold);
      }
      backend->timer = event_new(base_, -1, 0, CheckCb, backend.get());
      if (checks) {
        backend->prober = std::make_unique<Prober>(
            base_, cluster_config.health, backend_config.address, cluster->tls,
            cluster_config.send_proxy != 0
                ? net::LocalProxyHeader(cluster_config.send_proxy)
                : std::string());
      }
      if (!backend->command)
        backend->command = std::make_unique<CommandRunner>(base_);
      cluster->backends.push_back(std::move(backend));
    }
    if (checks && !known) {
      Log(LogLevel::kInfo, "health",
          "backends take traffic after their first passing check",
          {{"cluster", cluster_config.name},
           {"check", settings.check_name},
           {"interval_ms", cluster_config.health.interval.count()}});
    }
    clusters_.push_back(std::move(cluster));
  }
  previous.clear();  // backends gone from the config (checks stopped above)
  for (auto& cluster : clusters_) {
    for (auto& backend : cluster->backends)
      ScheduleCheck(*cluster, *backend, true);
  }
  MarkDirty();
}

CheckSubject HealthMonitor::SubjectOf(const Backend& backend) {
  CheckSubject subject;
  subject.state = backend.health->state();
  subject.changing = backend.health->changing();
  subject.cold = IsCold(*backend.config);
  subject.activation = backend.cold.state();
  subject.warm_idle = backend.config->role == conf::Role::kBackup &&
                      backend.config->standby == conf::Standby::kWarm &&
                      !backend.active;
  return subject;
}

bool HealthMonitor::ShouldCheck(const Cluster& cluster,
                                const Backend& backend) const {
  return ChecksRun(cluster.config->health, SubjectOf(backend));
}

void HealthMonitor::StopChecks(Backend& backend) {
  if (backend.prober) backend.prober->Cancel();
  if (backend.timer != nullptr) {
    event_free(backend.timer);
    backend.timer = nullptr;
  }
  backend.check_scheduled = false;
  backend.prober.reset();
}

void HealthMonitor::ScheduleCheck(Cluster& cluster, Backend& backend,
                                  bool first) {
  const conf::HealthCheck& check = cluster.config->health;
  CheckSubject subject = SubjectOf(backend);
  if (!ChecksRun(check, subject) || backend.timer == nullptr) return;
  timeval tv = ToTimeval(NextCheckDelay(check, subject, first, rng_));
  if (evtimer_add(backend.timer, &tv) == 0) backend.check_scheduled = true;
}

void HealthMonitor::CheckCb(evutil_socket_t, short, void* arg) {
  auto* backend = static_cast<Backend*>(arg);
  backend->check_scheduled = false;
  backend->cluster->monitor->RunCheck(*backend->cluster, *backend);
}

void HealthMonitor::RunCheck(Cluster& cluster, Backend& backend) {
  if (!ShouldCheck(cluster, backend) || !backend.prober) return;
  if (backend.prober->running()) {
    ScheduleCheck(cluster, backend, false);
    return;
  }
  Backend* target = &backend;
  backend.prober->Start([this, target](const ProbeResult& result) {
    OnProbe(*target->cluster, *target, result);
  });
}

void HealthMonitor::OnProbe(Cluster& cluster, Backend& backend,
                            const ProbeResult& result) {
  auto now = Clock::now();
  int64_t wall = WallMs();
  uint64_t before = backend.health->transition_count();
  auto weight_before = backend.health->feedback_weight();
  const bool starting = backend.cold.starting();
  if (result.passed) {
    ++backend.checks_passed;
    backend.health->OnCheckPassed(now, wall, result.detail);
  } else {
    ++backend.checks_failed;
    // A cold backup just started is expected to refuse for a moment: that
    // is not "down" (which would then need `rise` passes), only not yet up.
    if (!starting) backend.health->OnCheckFailed(now, wall, result.detail);
  }
  backend.check_seconds += static_cast<double>(result.duration.count()) / 1e6;
  if (result.drain) backend.health->SetFeedbackDrain(now, wall, *result.drain);
  // A response without Tandem-Weight means full weight again; a check that
  // got no response says nothing about the load.
  if (result.status != 0)
    backend.health->SetFeedbackWeight(result.weight_percent);
  bool dirty = backend.health->transition_count() != before ||
               backend.health->feedback_weight() != weight_before;
  counters_changed_ = true;  // check counters for /metrics, refreshed by Tick
  if (weight_before != backend.health->feedback_weight()) {
    Log(LogLevel::kInfo, "health", "worker feedback changed the weight",
        {{"cluster", cluster.config->name},
         {"backend", backend.address},
         {"weight_percent", backend.health->feedback_weight().value_or(100)}});
  }
  uint64_t cold_before = backend.cold.change_count();
  if (result.passed && backend.cold.OnCheckPassed(now)) {
    ShowActivation(cluster, backend, cold_before);
    dirty = true;
  }
  LogTransitions(cluster, backend, before);
  if (dirty) MarkDirty();
  ScheduleCheck(cluster, backend, false);
}

std::pair<HealthMonitor::Cluster*, HealthMonitor::Backend*> HealthMonitor::Find(
    std::string_view cluster, std::string_view address) {
  for (auto& c : clusters_) {
    if (c->config->name != cluster) continue;
    for (auto& b : c->backends) {
      if (b->address == address) return {c.get(), b.get()};
    }
    return {c.get(), nullptr};
  }
  return {nullptr, nullptr};
}

void HealthMonitor::OnReport(const OutcomeBatch& batch) {
  auto now = Clock::now();
  for (const OutcomeReport& report : batch.reports) {
    Cluster* cluster = nullptr;
    Backend* backend = nullptr;
    if (batch.config == config_) {
      if (report.cluster < clusters_.size() &&
          report.backend < clusters_[report.cluster]->backends.size()) {
        cluster = clusters_[report.cluster].get();
        backend = cluster->backends[report.backend].get();
      }
    } else if (batch.config && report.cluster < batch.config->clusters.size() &&
               report.backend <
                   batch.config->clusters[report.cluster].backends.size()) {
      // A report about the previous config: find the same backend by name.
      const conf::Cluster& old = batch.config->clusters[report.cluster];
      std::tie(cluster, backend) =
          Find(old.name, old.backends[report.backend].address.text);
    }
    if (backend == nullptr) continue;
    backend->health->OnTraffic(report.successes, report.failures, report.kind);
    backend->rate_successes += report.successes;
    // A connection that could not be made says nothing of the worker's
    // answers (health checks judge reachability).
    if (report.kind != TrafficFailure::kConnect)
      backend->rate_failures += report.failures;
    if (report.refused) {
      bool was = now < backend->refused_until;
      backend->refused_until = now + kRefusedWindow;
      if (!was && cluster->config->panic_threshold > 0) MarkDirty();
    }
    MaybeEject(*cluster, *backend);
    // Failed traffic may call for a check now (see TrafficCallsForCheck).
    if (backend->prober && !backend->prober->running() &&
        TrafficCallsForCheck(cluster->config->health, report.failures,
                             report.kind, backend->health->serving(), now,
                             backend->last_traffic_check)) {
      backend->last_traffic_check = now;
      if (backend->timer != nullptr) evtimer_del(backend->timer);
      backend->check_scheduled = false;
      RunCheck(*cluster, *backend);
    }
  }
}

namespace {

// The cluster's [outlier] table, or its defaults: success-rate detection and
// the ejection cap apply without the table too.
const conf::Outlier& OutlierOf(const conf::Cluster& cluster) {
  static const conf::Outlier kDefaults;
  return cluster.outlier ? *cluster.outlier : kDefaults;
}

}  // namespace

size_t HealthMonitor::Ejected(const Cluster& cluster) {
  size_t ejected = 0;
  for (const auto& b : cluster.backends) {
    if (b->health->state() == BackendState::kEjected) ++ejected;
  }
  return ejected;
}

bool HealthMonitor::EjectionRoom(const Cluster& cluster) {
  return EjectionAllowed(Ejected(cluster), cluster.backends.size(),
                         OutlierOf(*cluster.config).max_ejection_percent);
}

void HealthMonitor::ReportHang(std::string cluster, std::string address,
                               std::string reason) {
  messages_.Post([cluster = std::move(cluster), address = std::move(address),
                  reason = std::move(reason)](HealthMonitor& self) {
    self.OnHang(cluster, address, reason);
  });
}

void HealthMonitor::OnHang(const std::string& cluster_name,
                           const std::string& address,
                           const std::string& reason) {
  auto [cluster, backend] = Find(cluster_name, address);
  if (backend == nullptr) return;
  if (!backend->health->hung()) {
    if (!EjectionRoom(*cluster)) {
      Log(LogLevel::kWarn, "health",
          "hang suspicion not acted on: max_ejection_percent reached",
          {{"cluster", cluster_name},
           {"backend", address},
           {"reason", reason}});
      return;
    }
    ++backend->ejections_by[static_cast<size_t>(EjectionKind::kSuspectedHang)];
  }
  const size_t before = backend->health->transition_count();
  backend->health->SuspectHung(Clock::now(), WallMs(), reason);
  LogTransitions(*cluster, *backend, before);
  if (backend->prober && !backend->prober->running()) {
    if (backend->timer != nullptr) evtimer_del(backend->timer);
    backend->check_scheduled = false;
    RunCheck(*cluster, *backend);
  }
  MarkDirty();
}

void HealthMonitor::JudgeRates(Cluster& cluster, TimePoint now) {
  const conf::Outlier& outlier = OutlierOf(*cluster.config);
  std::vector<RateSample> samples;
  for (auto& backend : cluster.backends) {
    // An ejected, down or draining backend has no say in this interval.
    const bool judged = backend->health->serving();
    samples.push_back(
        judged ? RateSample{backend->rate_successes, backend->rate_failures}
               : RateSample{});
    backend->rate_successes = 0;
    backend->rate_failures = 0;
  }
  RateSettings settings;
  settings.minimum_hosts = outlier.success_rate_minimum_hosts;
  settings.request_volume = outlier.success_rate_request_volume;
  settings.stdev_factor = outlier.success_rate_stdev_factor;
  settings.failure_percentage_threshold = outlier.failure_percentage_threshold;
  for (const RateOutlier& verdict : RateOutliers(samples, settings)) {
    Backend& backend = *cluster.backends[verdict.index];
    if (!EjectionRoom(cluster)) {
      Log(LogLevel::kWarn, "health",
          "outlier not ejected: max_ejection_percent reached",
          {{"cluster", cluster.config->name},
           {"backend", backend.address},
           {"reason", verdict.reason}});
      continue;
    }
    const size_t before = backend.health->transition_count();
    backend.health->EjectOutlier(now, WallMs(), verdict.reason);
    ++backend.ejections_by[static_cast<size_t>(
        verdict.failure_percentage ? EjectionKind::kFailurePercentage
                                   : EjectionKind::kSuccessRate)];
    LogTransitions(cluster, backend, before);
    MarkDirty();
  }
}

void HealthMonitor::MaybeEject(Cluster& cluster, Backend& backend) {
  if (!backend.health->WantsEjection()) return;
  if (!EjectionRoom(cluster)) {
    const size_t ejected = Ejected(cluster);
    const uint32_t percent = OutlierOf(*cluster.config).max_ejection_percent;
    backend.health->DeclineEjection();
    std::string message = "not ejecting " + backend.address + ": " +
                          std::to_string(ejected) + " of " +
                          std::to_string(cluster.backends.size()) +
                          " backends already ejected (max_ejection_percent " +
                          std::to_string(percent) + ")";
    Log(LogLevel::kWarn, "health", message,
        {{"cluster", cluster.config->name}});
    AddEvent(cluster, message);
    MarkDirty();
    return;
  }
  uint64_t before = backend.health->transition_count();
  backend.health->Eject(Clock::now(), WallMs());
  ++backend
        .ejections_by[static_cast<size_t>(EjectionKind::kConsecutiveFailures)];
  LogTransitions(cluster, backend, before);
  MarkDirty();
}

void HealthMonitor::TickCb(evutil_socket_t, short, void* arg) {
  static_cast<HealthMonitor*>(arg)->Tick();
}

void HealthMonitor::Tick() {
  auto now = Clock::now();
  int64_t wall = WallMs();
  bool dirty = false;
  bool transitions = false;
  bool ramp = false;
  for (auto& cluster : clusters_) {
    const conf::Duration interval = OutlierOf(*cluster->config).interval;
    if (cluster->rate_since == TimePoint{}) {
      cluster->rate_since = now;
    } else if (now - cluster->rate_since >= interval) {
      JudgeRates(*cluster, now);
      cluster->rate_since = now;
    }
    for (auto& backend : cluster->backends) {
      auto deadline = backend->health->NextDeadline();
      if (deadline && *deadline <= now) {
        uint64_t before = backend->health->transition_count();
        if (backend->health->Tick(now, wall)) transitions = true;
        LogTransitions(*cluster, *backend, before);
        if (!backend->check_scheduled) ScheduleCheck(*cluster, *backend, false);
      }
      // A slow-start ramp changes weights continuously: republish now and then.
      if (backend->health->state() == BackendState::kSlowStart &&
          now - last_ramp_publish_ >= kRampPublishInterval) {
        ramp = true;
      }
      uint64_t cold_before = backend->cold.change_count();
      if (backend->cold.Tick(now)) {
        ShowActivation(*cluster, *backend, cold_before);
        dirty = true;
      }
      if (backend->refused_until != TimePoint{} &&
          now >= backend->refused_until) {
        backend->refused_until = TimePoint{};
        if (cluster->config->panic_threshold > 0) dirty = true;
      }
    }
  }
  if (ramp) last_ramp_publish_ = now;
  // Check counters move without any state change: refresh what /metrics and
  // /status read now and then (loops only hear of real changes, see Publish).
  bool counters =
      counters_changed_ && now - last_counters_publish_ >= kRampPublishInterval;
  if (counters) last_counters_publish_ = now;
  if (dirty || transitions || ramp || counters) MarkDirty();
}

void HealthMonitor::Activate(Cluster& cluster, Backend& backend) {
  uint64_t before = backend.cold.change_count();
  if (!backend.cold.Promote(Clock::now())) return;
  Log(LogLevel::kInfo, "health", "activating cold backup",
      {{"cluster", cluster.config->name},
       {"backend", backend.address},
       {"command", backend.config->activate}});
  ShowActivation(cluster, backend, before);
  RunCommand(backend, true);
}

void HealthMonitor::Deactivate(Cluster& cluster, Backend& backend) {
  uint64_t before = backend.cold.change_count();
  if (!backend.cold.Demote(Clock::now())) return;
  // No more checks until it is activated again (ShouldCheck says so).
  if (backend.prober) backend.prober->Cancel();
  if (backend.timer != nullptr) evtimer_del(backend.timer);
  backend.check_scheduled = false;
  uint64_t transitions = backend.health->transition_count();
  backend.health->MarkStopped(Clock::now(), WallMs(),
                              "cold backup deactivated");
  LogTransitions(cluster, backend, transitions);
  ShowActivation(cluster, backend, before);
  Log(LogLevel::kInfo, "health", "deactivating cold backup",
      {{"cluster", cluster.config->name},
       {"backend", backend.address},
       {"command", backend.config->deactivate}});
  if (!backend.config->deactivate.empty()) RunCommand(backend, false);
}

void HealthMonitor::RunCommand(Backend& backend, bool activate) {
  const std::string& command =
      activate ? backend.config->activate : backend.config->deactivate;
  const std::string cluster_name = backend.cluster->config->name;
  Backend* target = &backend;
  backend.command->Run(
      command, backend.cluster->config->activate_timeout,
      [this, target, activate, cluster_name](const CommandResult& result) {
        std::string outcome = result.Describe();
        Log(result.ok() ? LogLevel::kInfo : LogLevel::kError, "health",
            std::string(activate ? "activate" : "deactivate") + " command " +
                outcome,
            {{"cluster", cluster_name},
             {"backend", target->address},
             {"duration_ms", result.duration.count()},
             {"output", result.OutputTail()}});
        if (!activate) return;
        Cluster& owner = *target->cluster;
        uint64_t before = target->cold.change_count();
        target->cold.OnCommandResult(Clock::now(), result.ok(), outcome);
        ShowActivation(owner, *target, before);
        // Now it must pass its check before it is promoted.
        if (result.ok()) ScheduleCheck(owner, *target, true);
        MarkDirty();
      });
}

HealthMonitor::ActionResult HealthMonitor::AdminAction(
    const std::string& cluster, const std::string& address,
    health::AdminAction action) {
  auto promise = std::make_shared<std::promise<ActionResult>>();
  std::future<ActionResult> future = promise->get_future();
  messages_.Post([promise, cluster, address, action](HealthMonitor& self) {
    auto [found_cluster, found] = self.Find(cluster, address);
    if (found_cluster == nullptr) {
      promise->set_value({404, "no cluster " + cluster});
      return;
    }
    if (found == nullptr) {
      promise->set_value(
          {404, "no backend " + address + " in cluster " + cluster});
      return;
    }
    auto now = Clock::now();
    int64_t wall = WallMs();
    uint64_t before = found->health->transition_count();
    switch (action) {
      case health::AdminAction::kDrain:
        found->health->Drain(now, wall, "drained by admin");
        break;
      case health::AdminAction::kDisable:
        found->health->Disable(now, wall, "disabled by admin");
        break;
      case health::AdminAction::kEnable:
        found->health->Enable(now, wall, "enabled by admin");
        if (!found->check_scheduled)
          self.ScheduleCheck(*found_cluster, *found, true);
        break;
    }
    self.LogTransitions(*found_cluster, *found, before);
    self.MarkDirty();
    promise->set_value(
        {200, std::string(kAdminActionNames[static_cast<size_t>(action)]) +
                  " " + address + ": " +
                  std::string(StateName(found->health->state()))});
  });
  if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return {503, "the health monitor did not answer"};
  }
  return future.get();
}

void HealthMonitor::LogTransitions(const Cluster& cluster, Backend& backend,
                                   size_t before) {
  uint64_t count = backend.health->transition_count();
  if (count == before) return;
  const auto& log = backend.health->transitions();
  size_t fresh = std::min<uint64_t>(count - before, log.size());
  for (size_t i = log.size() - fresh; i < log.size(); ++i) {
    const Transition& t = log[i];
    ++backend.transitions_to[static_cast<size_t>(t.to)];
    bool bad = t.to == BackendState::kDown || t.to == BackendState::kEjected;
    Log(bad ? LogLevel::kWarn : LogLevel::kInfo, "health",
        "backend state changed",
        {{"cluster", cluster.config->name},
         {"backend", backend.address},
         {"from", StateName(t.from)},
         {"to", StateName(t.to)},
         {"reason", t.reason}});
  }
}

void HealthMonitor::ShowActivation(Cluster& cluster, const Backend& backend,
                                   uint64_t before) {
  uint64_t count = backend.cold.change_count();
  const auto& log = backend.cold.changes();
  size_t fresh = std::min<uint64_t>(count - before, log.size());
  for (size_t i = log.size() - fresh; i < log.size(); ++i) {
    const ActivationChange& change = log[i];
    // Silent, as it has always been: the policy may ask this backup again.
    if (change.from == Activation::kFailed &&
        change.to == Activation::kInactive) {
      continue;
    }
    AddEvent(cluster, change.reason);
  }
}

void HealthMonitor::AddEvent(Cluster& cluster, std::string message) {
  cluster.events.push_back({WallMs(), std::move(message)});
  if (cluster.events.size() > kMaxEvents)
    cluster.events.erase(cluster.events.begin());
}

void HealthMonitor::MarkDirty() {
  if (publish_pending_ || publish_event_ == nullptr) return;
  publish_pending_ = true;
  event_active(publish_event_, EV_TIMEOUT, 0);
}

void HealthMonitor::PublishCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<HealthMonitor*>(arg);
  self->publish_pending_ = false;
  self->Publish();
}

void HealthMonitor::DrainVanished(Cluster& cluster) {
  const bool checks =
      cluster.config->health.kind != conf::HealthCheck::Kind::kNone;
  const auto serves = [&](const Backend& backend) {
    const BackendState state = backend.health->state();
    return backend.health->serving() &&
           !(checks && state == BackendState::kUnknown);
  };
  bool others_serve = false;
  for (const auto& backend : cluster.backends) {
    if (!backend->config->vanished && serves(*backend)) others_serve = true;
  }
  for (auto& backend : cluster.backends) {
    const conf::Backend& config = *backend->config;
    if (config.source.empty()) continue;
    // Gone from DNS, it keeps serving while nothing else can: a replaced
    // address hands over once its successor has passed a check.
    const bool drain = config.vanished && others_serve;
    if (drain == backend->health->vanished()) continue;
    const size_t before = backend->health->transition_count();
    backend->health->SetVanished(
        Clock::now(), WallMs(), drain,
        drain ? "gone from the DNS answer (" + config.source +
                    "); draining until its hold ends"
        : config.vanished ? "gone from the DNS answer (" + config.source +
                                "), but no other backend serves"
                          : "back in the DNS answer (" + config.source + ")");
    LogTransitions(cluster, *backend, before);
  }
}

void HealthMonitor::Publish() {
  auto now = Clock::now();
  auto snapshot = std::make_shared<HealthSnapshot>();
  snapshot->version = ++version_;
  snapshot->config = config_;
  for (auto& cluster_ptr : clusters_) {
    Cluster& cluster = *cluster_ptr;
    DrainVanished(cluster);
    const conf::Cluster& config = *cluster.config;
    const bool checks = config.health.kind != conf::HealthCheck::Kind::kNone;
    std::vector<algorithms::PolicyBackend> inputs(cluster.backends.size());
    for (size_t i = 0; i < cluster.backends.size(); ++i) {
      const Backend& backend = *cluster.backends[i];
      algorithms::PolicyBackend& input = inputs[i];
      input.role = RoleOf(backend.config->role);
      input.standby = StandbyOf(backend.config->standby);
      input.state = backend.health->state();
      // With checks, "unknown" has not been proven healthy: no traffic yet.
      if (checks && input.state == BackendState::kUnknown)
        input.state = BackendState::kDown;
      input.activation = backend.cold.state();
      input.weight = backend.health->EffectiveWeight(
          algorithms::ScaledWeight(backend.config->weight), now);
      input.id = algorithms::Hash64(backend.address);
      input.refused_recently = now < backend.refused_until;
    }
    // Until every primary has been checked once, "not up" only means "not
    // checked yet": neither a cold activation nor panic routing (which would
    // send traffic to backends never proven healthy) is called for.
    bool primaries_pending = false;
    for (const auto& backend : cluster.backends) {
      if (checks && backend->config->role == conf::Role::kPrimary &&
          !backend->health->checked_once()) {
        primaries_pending = true;
      }
    }
    algorithms::PolicyResult result = algorithms::ApplyPolicy(
        inputs, PolicyOptionsFor(config, primaries_pending));

    for (size_t index : result.activate) {
      if (primaries_pending) break;
      Backend& backend = *cluster.backends[index];
      if (!backend.command->running()) Activate(cluster, backend);
    }
    for (size_t index : result.deactivate) {
      Backend& backend = *cluster.backends[index];
      if (!backend.command->running()) Deactivate(cluster, backend);
    }
    if (result.panic != cluster.panic) {
      cluster.panic = result.panic;
      std::string message =
          result.panic
              ? "panic: " + std::to_string(result.serving) + " of " +
                    std::to_string(result.target) +
                    " backends healthy, below panic_threshold; routing over "
                    "all "
                    "running backends except those refusing connections"
              : "panic over: " + std::to_string(result.serving) + " of " +
                    std::to_string(result.target) + " backends healthy";
      Log(result.panic ? LogLevel::kWarn : LogLevel::kInfo, "health", message,
          {{"cluster", config.name}});
      AddEvent(cluster, message);
    }
    ClusterStatus status;
    status.name = config.name;
    status.panic = result.panic;
    status.serving = result.serving;
    status.target = result.target;
    status.views = result.views;
    for (size_t i = 0; i < cluster.backends.size(); ++i) {
      Backend& backend = *cluster.backends[i];
      bool active = result.views[i].eligible;
      if (active != backend.active &&
          backend.config->role == conf::Role::kBackup && !result.panic) {
        std::string message =
            (active ? "backup " + backend.address + " promoted: "
                    : "backup " + backend.address + " demoted: ") +
            std::to_string(result.serving) + " serving, min_active " +
            std::to_string(config.min_active);
        Log(LogLevel::kInfo, "health", message, {{"cluster", config.name}});
        AddEvent(cluster, message);
      }
      backend.active = active;
      BackendStatus b;
      b.address = backend.address;
      b.state = backend.health->state();
      b.active = active;
      b.weight = backend.config->weight;
      b.view_weight = result.views[i].weight;
      if (IsCold(*backend.config)) b.activation = backend.cold.state();
      b.refused_recently = inputs[i].refused_recently;
      b.last_check = backend.health->last_check();
      b.transitions.assign(backend.health->transitions().begin(),
                           backend.health->transitions().end());
      b.checks_passed = backend.checks_passed;
      b.checks_failed = backend.checks_failed;
      b.check_seconds = backend.check_seconds;
      b.ejections_by = backend.ejections_by;
      b.transitions_to = backend.transitions_to;
      status.backends.push_back(std::move(b));
    }
    status.events = cluster.events;
    snapshot->clusters.push_back(std::move(status));
  }
  counters_changed_ = false;
  // Loops rebuild their pickers from a snapshot: only send one when what
  // they use (eligibility, weights, the reserve's states) changed.
  bool routing_changed = !snapshot_ || snapshot_->config != snapshot->config ||
                         RoutingDiffers(*snapshot_, *snapshot);
  {
    std::lock_guard<std::mutex> lock(snapshot_mutex_);
    snapshot_ = snapshot;
  }
  if (publish_fn_ && routing_changed) publish_fn_(snapshot);
}

}  // namespace tandem::health
