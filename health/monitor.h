// The health monitor: on its own thread and event loop it runs every
// backend's active checks and cold-standby commands, feeds their results and
// the data path's outcome reports to each backend's state machines
// (BackendHealth, ColdStandby), applies the standby policy, and publishes an
// immutable HealthSnapshot after every change. The decisions are those of
// the pure types and functions docs/health.md lists; it never routes.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "algorithms/policy.h"
#include "algorithms/rng.h"
#include "conf/config.h"
#include "health/backend_health.h"
#include "health/check_schedule.h"
#include "health/cold_standby.h"
#include "health/command.h"
#include "health/probe.h"
#include "health/snapshot.h"
#include "net/message_queue.h"

namespace tandem::health {

class HealthMonitor {
 public:
  using PublishFn = std::function<void(std::shared_ptr<const HealthSnapshot>)>;

  // `publish` is called on the monitor's thread with each new snapshot.
  explicit HealthMonitor(PublishFn publish);
  ~HealthMonitor();
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // The data path's TLS client contexts by cluster name: checks of a TLS
  // cluster use the same one (one CA store load per config).
  using ClusterTls =
      std::map<std::string, std::shared_ptr<net::TlsClientContext>>;

  // Starts the thread with `config`; the first snapshot is published before
  // Start returns. False with `error` set on failure.
  bool Start(std::shared_ptr<const conf::Config> config, ClusterTls tls,
             std::string* error);
  // Stops checks and the thread (running commands are killed).
  void Stop();

  // Thread-safe. Backends present in both configs keep their state and
  // history; new ones start unknown.
  void ApplyConfig(std::shared_ptr<const conf::Config> config, ClusterTls tls);
  // Thread-safe: outcomes seen by a loop.
  void Report(OutcomeBatch batch);
  // Thread-safe: a loop suspects `address` of `cluster` hung (`reason`
  // gives the figures). It is ejected, within max_ejection_percent (50 %
  // without an [outlier] table), and checked at once.
  void ReportHang(std::string cluster, std::string address, std::string reason);

  struct ActionResult {
    int status = 200;  // HTTP status for the admin API
    std::string message;
  };
  // Thread-safe; waits for the monitor's thread.
  ActionResult AdminAction(const std::string& cluster,
                           const std::string& address,
                           health::AdminAction action);

  // Thread-safe: the latest snapshot.
  std::shared_ptr<const HealthSnapshot> snapshot() const;

 private:
  struct Cluster;
  struct Backend {
    Cluster* cluster = nullptr;  // owner, for timer callbacks
    const conf::Backend* config = nullptr;
    std::string address;
    std::unique_ptr<BackendHealth> health;
    std::unique_ptr<Prober> prober;
    std::unique_ptr<CommandRunner> command;
    struct event* timer = nullptr;  // next check
    bool check_scheduled = false;
    ColdStandby cold{ColdStandbySettings{}};  // cold backups only
    TimePoint refused_until{};
    TimePoint last_traffic_check{};  // a check run because traffic failed
    bool active = false;             // as the policy last said
    uint64_t checks_passed = 0;
    uint64_t checks_failed = 0;
    double check_seconds = 0;
    std::array<uint64_t, std::size(kEjectionKindNames)> ejections_by{};
    std::array<uint64_t, 7> transitions_to{};
    // Outcomes of the current outlier interval (what reached the worker).
    uint64_t rate_successes = 0;
    uint64_t rate_failures = 0;
  };
  struct Cluster {
    HealthMonitor* monitor = nullptr;
    const conf::Cluster* config = nullptr;
    std::vector<std::unique_ptr<Backend>> backends;
    bool panic = false;
    std::vector<PolicyEvent> events;
    std::shared_ptr<net::TlsClientContext> tls;  // checks of a TLS cluster
    TimePoint rate_since{};  // start of the current outlier interval
  };

  static void TickCb(evutil_socket_t, short, void* arg);
  static void CheckCb(evutil_socket_t, short, void* arg);
  static void PublishCb(evutil_socket_t, short, void* arg);

  void Run();
  // Backend `address` of cluster `cluster` in the current config: both null
  // when there is no such cluster, the backend null when it has no such
  // backend.
  std::pair<Cluster*, Backend*> Find(std::string_view cluster,
                                     std::string_view address);
  void Apply(std::shared_ptr<const conf::Config> config, const ClusterTls& tls);
  void OnReport(const OutcomeBatch& batch);
  void OnHang(const std::string& cluster, const std::string& address,
              const std::string& reason);
  void Tick();
  void ScheduleCheck(Cluster& cluster, Backend& backend, bool first);
  void RunCheck(Cluster& cluster, Backend& backend);
  void OnProbe(Cluster& cluster, Backend& backend, const ProbeResult& result);
  static CheckSubject SubjectOf(const Backend& backend);
  bool ShouldCheck(const Cluster& cluster, const Backend& backend) const;
  void StopChecks(Backend& backend);
  // Cold standby: the decisions are the ColdStandby's, the commands run here.
  void Activate(Cluster& cluster, Backend& backend);
  void Deactivate(Cluster& cluster, Backend& backend);
  void RunCommand(Backend& backend, bool activate);
  void MaybeEject(Cluster& cluster, Backend& backend);
  // How many backends of `cluster` are ejected, and whether its
  // max_ejection_percent lets one more go.
  static size_t Ejected(const Cluster& cluster);
  static bool EjectionRoom(const Cluster& cluster);
  // End of an outlier interval: ejects the backends whose success rate or
  // failure percentage is an outlier (health/success_rate.h), within the cap.
  void JudgeRates(Cluster& cluster, TimePoint now);
  // Backends found in DNS that left its answer drain, once another backend
  // of the cluster serves.
  void DrainVanished(Cluster& cluster);
  // Reruns the policy of every cluster and publishes (coalesced per loop
  // iteration).
  void MarkDirty();
  void Publish();
  void AddEvent(Cluster& cluster, std::string message);
  // Logs and counts the transitions made since `before` (a transition_count()).
  void LogTransitions(const Cluster& cluster, Backend& backend, size_t before);
  // Shows the activation changes made since `before` (a change_count()) as
  // cluster events.
  void ShowActivation(Cluster& cluster, const Backend& backend,
                      uint64_t before);

  PublishFn publish_fn_;
  std::thread thread_;
  struct event_base* base_ = nullptr;
  struct event* tick_ = nullptr;
  struct event* publish_event_ = nullptr;
  net::MessageQueue<HealthMonitor> messages_;
  algorithms::Rng rng_;

  std::shared_ptr<const conf::Config> config_;
  std::vector<std::unique_ptr<Cluster>> clusters_;
  uint64_t version_ = 0;
  TimePoint last_ramp_publish_{};
  TimePoint last_counters_publish_{};
  bool counters_changed_ = false;
  bool publish_pending_ = false;

  mutable std::mutex snapshot_mutex_;
  std::shared_ptr<const HealthSnapshot> snapshot_;
};

}  // namespace tandem::health
