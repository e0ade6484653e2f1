// The process: loads the configuration, binds listeners, runs one event loop
// per thread, and a control loop on the main thread for signals, the admin
// listener, reloads and shutdown.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "conf/config.h"
#include "conf/load.h"
#include "dispatcher/admin/admin_server.h"
#include "dispatcher/admin/metrics.h"
#include "dispatcher/config_watch.h"
#include "dispatcher/discovery/discovery.h"
#include "dispatcher/loop.h"
#include "dispatcher/systemd.h"
#include "health/monitor.h"
#include "net/event_ptr.h"

namespace tandem::dispatcher {

extern const char* const kVersion;

struct ServerOptions {
  std::string config_path;  // the file to load and reload
  // Config text to run instead of a file (the demo); config_path then only
  // names it.
  std::string config_text;
};

class Server : private AdminHandler {
 public:
  explicit Server(ServerOptions options);
  ~Server() override;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Runs until SIGTERM/SIGINT and the drain that follows. Returns the exit
  // code: 0 after a clean stop, 1 when start-up failed. evthread_use_pthreads()
  // must have been called before.
  int Run();

 private:
  struct ReloadStatus {
    bool ok = true;
    long long at_unix = 0;
    std::vector<std::string> errors;
    // Keys ("global.threads") whose new value waits for a restart.
    std::vector<std::string> restart_required;
  };

  static void SignalCb(evutil_socket_t signal, short, void* arg);
  static void DrainDelayCb(evutil_socket_t, short, void* arg);
  static void AdminRetireCb(evutil_socket_t, short, void* arg);
  static void DiscoveryCb(evutil_socket_t, short, void* arg);

  conf::LoadResult Load();
  // Binds what `config` listens on that is not bound yet; reuses the rest.
  bool BindListeners(
      const conf::Config& config,
      std::map<std::string, std::vector<evutil_socket_t>>* sockets,
      std::string* error);
  // Builds the TLS contexts `config` needs; false with `error` on failure.
  bool BuildTls(const conf::Config& config,
                std::shared_ptr<const TlsContexts>* tls, std::string* error);
  void Apply(std::shared_ptr<const conf::Config> config,
             std::map<std::string, std::vector<evutil_socket_t>> sockets,
             std::shared_ptr<const TlsContexts> tls,
             std::shared_ptr<const AccessLogFile> access_log);
  bool ReloadNow(const std::string& trigger, std::vector<std::string>* errors);
  void BeginShutdown();
  // The access log `global` asks for (null for "off"); false with `error`
  // when the file cannot be opened.
  bool OpenAccessLog(const conf::Global& global,
                     std::shared_ptr<const AccessLogFile>* file,
                     std::string* error);
  // Binds `admin`'s listener; false with `error` on failure.
  bool StartAdmin(const conf::Admin& admin,
                  std::unique_ptr<AdminServer>* server, std::string* error);
  // The reload's admin listener: `started` (bound in advance) replaces the
  // running one, else the running one follows `admin` (token, or closing
  // when the table is gone).
  void ApplyAdmin(const std::optional<conf::Admin>& admin,
                  std::unique_ptr<AdminServer> started);
  // Stops the running admin listener accepting; it is freed a moment later,
  // so the reply to the request that asked for this reload still goes out.
  void RetireAdmin();
  // Keys of `next` that differ from what the process started with and that
  // only a restart applies.
  std::vector<std::string> RestartRequired(const conf::Config& next) const;
  // Shared counters for backends with max_inflight / max_connections, kept
  // across reloads for backends that stay.
  void PrepareLimits(const conf::Config& config);
  void AddHealthMetrics(MetricsBuilder* builder);
  void AddDiscoveryMetrics(MetricsBuilder* builder);
  // What DNS found changed: the file's config with the new backends goes to
  // health and the loops, as a reload's would.
  void ApplyDiscovered();

  // AdminHandler.
  bool Ready() override;
  std::string StatusJson() override;
  std::string MetricsText() override;
  AdminReply Reload() override;
  AdminReply BackendAction(const std::string& cluster,
                           const std::string& address,
                           const std::string& action) override;

  ServerOptions options_;
  // What runs: the file's config with what DNS found (docs/discovery.md).
  std::shared_ptr<const conf::Config> config_;
  std::shared_ptr<const conf::Config> file_config_;  // as loaded
  std::shared_ptr<const TlsContexts> tls_;
  std::shared_ptr<const AccessLogFile> access_log_;
  net::EventBasePtr control_base_;
  std::vector<net::EventPtr> signal_events_;
  net::EventPtr drain_delay_event_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<std::thread> threads_;
  // Bound listening sockets by listen address, one per loop.
  std::map<std::string, std::vector<evutil_socket_t>> sockets_;
  std::unique_ptr<AdminServer> admin_;
  std::vector<std::unique_ptr<AdminServer>> retired_admins_;
  net::EventPtr admin_retire_event_;
  // Owns events on control_base_, so declared after it.
  std::unique_ptr<Discovery> discovery_;
  net::EventPtr discovery_event_;  // coalesces the changes of one turn
  std::unique_ptr<ConfigWatch> watch_;
  std::string loaded_text_;  // the config file as Load() last read it
  std::unique_ptr<SystemdNotifier> systemd_;
  std::unique_ptr<health::HealthMonitor> health_;
  std::shared_ptr<const std::map<std::pair<std::string, std::string>,
                                 std::shared_ptr<SharedLimits>>>
      limits_;
  ReloadStatus last_reload_;
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_failed_ = 0;
  uint32_t started_threads_ = 0;  // global.threads as the process started
  bool ready_ = false;
  bool draining_ = false;
};

}  // namespace tandem::dispatcher
