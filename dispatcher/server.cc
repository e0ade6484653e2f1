// The process; see server.h.
#include "dispatcher/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <mutex>

#include "net/escape.h"
#include "net/log.h"

namespace tandem::dispatcher {

const char* const kVersion = "0.1.0";

namespace {

// The wall clock now, in seconds. Not time(): on Linux it reads the coarse
// clock, which lags by up to a scheduler tick, so a reload made just after a
// second began could be stamped with the second before (a client comparing
// it with its own clock saw that).
long long UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

using net::AppendJsonString;
using net::Log;
using net::LogLevel;

const char* PolicyName(conf::Policy policy) {
  return policy == conf::Policy::kPrimaryBackup ? "primary-backup"
                                                : "all-active";
}

const char* StandbyName(conf::Standby standby) {
  switch (standby) {
    case conf::Standby::kHot:
      return "hot";
    case conf::Standby::kWarm:
      return "warm";
    case conf::Standby::kCold:
      return "cold";
  }
  return "hot";
}

uint16_t BoundPort(evutil_socket_t fd) {
  sockaddr_storage bound;
  socklen_t length = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0)
    return 0;
  return ntohs(bound.ss_family == AF_INET6
                   ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
}

// A listening socket on `address`, with SO_REUSEPORT so every loop thread
// can have its own (the kernel spreads connections over them).
evutil_socket_t OpenListenSocket(const conf::SocketAddress& address,
                                 uint16_t port, std::string* error) {
  sockaddr_storage storage = address.storage;
  if (storage.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(port);
  }
  evutil_socket_t fd =
      socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + strerror(errno);
    return -1;
  }
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    *error = std::string("setsockopt: ") + strerror(errno);
    close(fd);
    return -1;
  }
  if (storage.ss_family == AF_INET6) {
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&storage), address.length) != 0) {
    *error = "bind " + address.text + ": " + strerror(errno);
    close(fd);
    return -1;
  }
  if (listen(fd, 4096) != 0) {
    *error = "listen " + address.text + ": " + strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

// "2026-11-26T10:00:01.234Z"
std::string FormatUnixMs(int64_t unix_ms) {
  std::string seconds = net::FormatUtcSeconds(unix_ms / 1000);
  char millis[8];
  std::snprintf(millis, sizeof(millis), ".%03dZ",
                static_cast<int>(unix_ms % 1000));
  seconds.pop_back();  // the 'Z'
  return seconds + millis;
}

// Tells systemd the reload is over when it goes out of scope.
struct ReloadNotice {
  SystemdNotifier* notifier;
  ~ReloadNotice() {
    if (notifier != nullptr) notifier->Ready("serving");
  }
};

// The CPUs tandem may really use: its affinity mask (cpusets), capped by a
// cgroup v2 CPU quota (a container's CPU limit), at least 1.
size_t UsableCpus() {
  size_t cpus = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    cpus = std::max(1, CPU_COUNT(&set));
  }
  if (FILE* file = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char quota[32] = {};
    unsigned long long period = 0;
    if (std::fscanf(file, "%31s %llu", quota, &period) == 2 && period > 0 &&
        std::strcmp(quota, "max") != 0) {
      unsigned long long limit =
          (std::strtoull(quota, nullptr, 10) + period - 1) / period;
      cpus = std::max<size_t>(1, std::min<size_t>(cpus, limit));
    }
    std::fclose(file);
  }
  return cpus;
}

// Listening sockets are kept across reloads by address; a listener on port 0
// has a port of its own, so it is kept by name.
std::string SocketKey(const conf::Listener& listener) {
  if (listener.listen.port() == 0)
    return listener.name + "|" + listener.listen.text;
  return listener.listen.text;
}

std::string HostOf(const conf::SocketAddress& address) {
  const std::string& text = address.text;
  size_t colon = text.rfind(':');
  return colon == std::string::npos ? text : text.substr(0, colon);
}

// How long a moved or removed admin listener still answers on connections
// already open: enough for the reply to the reload call itself.
constexpr timeval kAdminRetireDelay = {1, 0};

// The longest a reload waits for the loops to take the new config.
constexpr std::chrono::milliseconds kApplyWait{2000};

}  // namespace

Server::Server(ServerOptions options) : options_(std::move(options)) {}

Server::~Server() {
  watch_.reset();
  admin_.reset();
  retired_admins_.clear();
  admin_retire_event_.reset();
  if (health_) health_->Stop();
  loops_.clear();  // the last user of the access log file closes it
  health_.reset();
}

conf::LoadResult Server::Load() {
  if (!options_.config_text.empty()) {
    return conf::ParseConfig(options_.config_text, options_.config_path);
  }
  return conf::LoadConfigFile(options_.config_path, &loaded_text_);
}

bool Server::OpenAccessLog(const conf::Global& global,
                           std::shared_ptr<const AccessLogFile>* file,
                           std::string* error) {
  file->reset();
  if (global.access_log == "off") return true;
  // Opened anew on every reload, even when the path stays, so that a
  // rotated file is let go (logrotate's postrotate can send SIGHUP).
  *file = AccessLogFile::Open(global.access_log, error);
  return *file != nullptr;
}

bool Server::StartAdmin(const conf::Admin& admin,
                        std::unique_ptr<AdminServer>* server,
                        std::string* error) {
  auto started = std::make_unique<AdminServer>(
      control_base_.get(), static_cast<AdminHandler*>(this));
  if (!started->Start(admin, error)) return false;
  *server = std::move(started);
  return true;
}

void Server::ApplyAdmin(const std::optional<conf::Admin>& admin,
                        std::unique_ptr<AdminServer> started) {
  if (started) {
    if (admin_) RetireAdmin();
    admin_ = std::move(started);
    Log(LogLevel::kInfo, "admin", "admin listener ready",
        {{"address",
          HostOf(admin->listen) + ":" + std::to_string(admin_->port())}});
    return;
  }
  if (!admin) {
    if (admin_) RetireAdmin();
    return;
  }
  if (admin_) admin_->set_token(admin->token);
}

void Server::RetireAdmin() {
  Log(LogLevel::kInfo, "admin", "admin listener closed",
      {{"address", HostOf(config_->admin->listen) + ":" +
                       std::to_string(admin_->port())}});
  admin_->StopAccepting();
  retired_admins_.push_back(std::move(admin_));
  if (evtimer_add(admin_retire_event_.get(), &kAdminRetireDelay) != 0) {
    // Not freed before shutdown then; it accepts nothing meanwhile.
    Log(LogLevel::kWarn, "admin", "cannot arm the admin retire timer");
  }
}

void Server::AdminRetireCb(evutil_socket_t, short, void* arg) {
  static_cast<Server*>(arg)->retired_admins_.clear();
}

std::vector<std::string> Server::RestartRequired(
    const conf::Config& next) const {
  std::vector<std::string> keys;
  // The loops, their threads and their sockets are made once, at start-up.
  if (next.global.threads != started_threads_) keys.push_back("global.threads");
  return keys;
}

bool Server::BindListeners(
    const conf::Config& config,
    std::map<std::string, std::vector<evutil_socket_t>>* sockets,
    std::string* error) {
  std::vector<evutil_socket_t> opened;
  for (const conf::Listener& listener : config.listeners) {
    const std::string key = SocketKey(listener);
    if (sockets->count(key)) continue;
    if (auto it = sockets_.find(key); it != sockets_.end()) {
      (*sockets)[key] = it->second;
      continue;
    }
    std::vector<evutil_socket_t> fds;
    uint16_t port = listener.listen.port();
    for (size_t i = 0; i < loops_.size(); ++i) {
      evutil_socket_t fd = OpenListenSocket(listener.listen, port, error);
      if (fd < 0) {
        *error = "listener \"" + listener.name + "\": " + *error;
        for (evutil_socket_t f : opened) close(f);
        for (evutil_socket_t f : fds) close(f);
        return false;
      }
      if (i == 0)
        port = BoundPort(fd);  // port 0: the others share the chosen one
      fds.push_back(fd);
    }
    opened.insert(opened.end(), fds.begin(), fds.end());
    std::string where = HostOf(listener.listen);
    if (where.find(':') != std::string::npos && where.front() != '[')
      where = "[" + where + "]";
    Log(LogLevel::kInfo, "dispatcher", "listener ready",
        {{"listener", listener.name},
         {"address", where + ":" + std::to_string(port)},
         {"cluster", listener.cluster},
         {"tls", listener.tls() ? "on" : "off"}});
    (*sockets)[key] = std::move(fds);
  }
  return true;
}

void Server::PrepareLimits(const conf::Config& config) {
  auto limits = std::make_shared<std::map<std::pair<std::string, std::string>,
                                          std::shared_ptr<SharedLimits>>>();
  for (const conf::Cluster& cluster : config.clusters) {
    // The cluster's own entry (an empty address) holds its circuit breakers.
    for (size_t b = 0; b <= cluster.backends.size(); ++b) {
      const bool own = b == cluster.backends.size();
      if (own ? !cluster.has_breakers()
              : cluster.backends[b].max_inflight == 0 &&
                    cluster.backends[b].max_connections == 0) {
        continue;
      }
      std::pair<std::string, std::string> key{
          cluster.name, own ? std::string() : cluster.backends[b].address.text};
      std::shared_ptr<SharedLimits> shared;
      if (limits_) {
        auto it = limits_->find(key);
        if (it != limits_->end()) shared = it->second;
      }
      // An adaptive limiter is made with its entry and kept while its
      // settings stay the same (its limit and minRTT carry over a reload).
      const bool adaptive = own && cluster.concurrency_adaptive;
      if (shared &&
          (adaptive ? !shared->adaptive ||
                          shared->adaptive->config() != cluster.adaptive
                    : shared->adaptive != nullptr)) {
        shared.reset();
      }
      if (!shared) {
        shared = std::make_shared<SharedLimits>();
        if (adaptive) {
          shared->adaptive = std::make_shared<AdaptiveLimiter>(
              cluster.adaptive,
              std::hash<std::string>{}(cluster.name) ^
                  static_cast<uint64_t>(std::chrono::steady_clock::now()
                                            .time_since_epoch()
                                            .count()));
        }
      }
      (*limits)[key] = std::move(shared);
    }
  }
  // Rate limits: an entry of its own each, made with its limiter and never
  // changed once shared; kept while the limit's settings stay the same.
  const auto rate_entry = [&](const std::string& kind, const std::string& name,
                              const std::optional<conf::RateLimit>& limit) {
    if (!limit) return;
    std::pair<std::string, std::string> key{kind, name};
    if (limits_) {
      auto it = limits_->find(key);
      if (it != limits_->end() && it->second->rate_limiter &&
          it->second->rate_limiter->config() == *limit) {
        (*limits)[key] = it->second;
        return;
      }
    }
    auto shared = std::make_shared<SharedLimits>();
    shared->rate_limiter = std::make_shared<RateLimiter>(*limit);
    (*limits)[key] = std::move(shared);
  };
  for (const conf::Listener& listener : config.listeners)
    rate_entry("rate:listener", listener.name, listener.rate_limit);
  for (const conf::Cluster& cluster : config.clusters)
    rate_entry("rate:cluster", cluster.name, cluster.rate_limit);
  limits_ = std::move(limits);
}

bool Server::BuildTls(const conf::Config& config,
                      std::shared_ptr<const TlsContexts>* tls,
                      std::string* error) {
  auto contexts = std::make_shared<TlsContexts>();
  for (const conf::Listener& listener : config.listeners) {
    if (!listener.tls()) continue;
    auto context = net::TlsServerContext::Create(listener, error);
    if (!context) return false;
    contexts->listeners[listener.name] = std::move(context);
  }
  for (const conf::Cluster& cluster : config.clusters) {
    if (!cluster.tls.enabled) continue;
    auto context = net::TlsClientContext::Create(cluster.tls, error);
    if (!context) {
      *error = "cluster " + cluster.name + ": " + *error;
      return false;
    }
    contexts->clusters[cluster.name] = std::move(context);
  }
  *tls = std::move(contexts);
  return true;
}

void Server::Apply(std::shared_ptr<const conf::Config> config,
                   std::map<std::string, std::vector<evutil_socket_t>> sockets,
                   std::shared_ptr<const TlsContexts> tls,
                   std::shared_ptr<const AccessLogFile> access_log) {
  PrepareLimits(*config);
  tls_ = tls;
  access_log_ = access_log;
  // A reload is logged (and answered) once every loop serves the new config,
  // so a request sent after "config reloaded" sees it. A loop only runs
  // non-blocking work, so this wait is short; it is bounded all the same.
  struct Applied {
    std::mutex mutex;
    std::condition_variable done;
    size_t left;
  };
  auto applied = std::make_shared<Applied>();
  applied->left = loops_.size();
  for (size_t i = 0; i < loops_.size(); ++i) {
    std::vector<ListenSocket> mine;
    for (const conf::Listener& listener : config->listeners) {
      mine.push_back({listener.name, sockets.at(SocketKey(listener))[i]});
    }
    auto apply = [config, mine = std::move(mine), limits = limits_, tls,
                  access_log, applied](Loop& loop) mutable {
      loop.SetAccessLog(std::move(access_log),
                        config->global.access_log_format);
      loop.set_limits(std::move(limits));
      loop.ApplyConfig(config, std::move(mine), tls);
      std::lock_guard<std::mutex> lock(applied->mutex);
      if (--applied->left == 0) applied->done.notify_one();
    };
    if (threads_.empty()) {
      // Start-up: the loops do not run yet, so the config is in place
      // before tandem says it is ready.
      apply(*loops_[i]);
    } else {
      loops_[i]->Post(std::move(apply));
    }
  }
  {
    std::unique_lock<std::mutex> lock(applied->mutex);
    if (!applied->done.wait_for(lock, kApplyWait,
                                [&] { return applied->left == 0; })) {
      Log(LogLevel::kWarn, "conf", "a loop has not taken the new config yet",
          {{"waited_ms", kApplyWait.count()}});
    }
  }
  sockets_ = std::move(sockets);
  config_ = std::move(config);
}

int Server::Run() {
  signal(SIGPIPE, SIG_IGN);
  conf::LoadResult result = Load();
  for (const conf::Diagnostic& warning : result.warnings) {
    Log(LogLevel::kWarn, "conf", warning.ToString());
  }
  if (!result.ok()) {
    for (const conf::Diagnostic& error : result.errors) {
      std::fprintf(stderr, "%s\n", error.ToString().c_str());
    }
    return 1;
  }
  last_reload_.at_unix = UnixNow();
  const conf::Config& config = *result.config;

  std::string error;
  std::shared_ptr<const AccessLogFile> access_log;
  if (!OpenAccessLog(config.global, &access_log, &error)) {
    Log(LogLevel::kError, "dispatcher", error);
    return 1;
  }
  started_threads_ = config.global.threads;
  control_base_.reset(event_base_new());
  if (!control_base_) {
    Log(LogLevel::kError, "dispatcher", "cannot create the control event loop");
    return 1;
  }
  size_t threads = config.global.threads;
  if (threads == 0) threads = UsableCpus();
  for (size_t i = 0; i < threads; ++i) {
    loops_.push_back(
        std::make_unique<Loop>(i, access_log, config.global.access_log_format));
    if (!loops_.back()->Init(&error)) {
      Log(LogLevel::kError, "dispatcher", error);
      return 1;
    }
  }
  std::shared_ptr<const TlsContexts> tls;
  if (!BuildTls(config, &tls, &error)) {
    Log(LogLevel::kError, "dispatcher", error);
    return 1;
  }
  std::map<std::string, std::vector<evutil_socket_t>> sockets;
  if (!BindListeners(config, &sockets, &error)) {
    Log(LogLevel::kError, "dispatcher", error);
    return 1;
  }
  discovery_event_.reset(
      event_new(control_base_.get(), -1, 0, DiscoveryCb, this));
  discovery_ = std::make_unique<Discovery>(control_base_.get(), [this] {
    event_active(discovery_event_.get(), EV_TIMEOUT, 0);
  });
  if (!discovery_->Follow(config, &error)) {
    Log(LogLevel::kError, "discovery", error);
    return 1;
  }
  file_config_ = result.config;
  std::shared_ptr<const conf::Config> running = discovery_->Merge(file_config_);
  // Health decides; every loop gets each new snapshot as a message.
  health_ = std::make_unique<health::HealthMonitor>(
      [this](std::shared_ptr<const health::HealthSnapshot> snapshot) {
        for (auto& loop : loops_) {
          loop->Post([snapshot](Loop& l) { l.ApplyHealth(snapshot); });
        }
      });
  for (auto& loop : loops_) loop->set_health(health_.get());
  if (!health_->Start(running, tls->clusters, &error)) {
    Log(LogLevel::kError, "health", error);
    return 1;
  }
  admin_retire_event_.reset(
      evtimer_new(control_base_.get(), AdminRetireCb, this));
  if (!admin_retire_event_) {
    Log(LogLevel::kError, "admin", "cannot create the admin retire timer");
    return 1;
  }
  if (config.admin) {
    std::unique_ptr<AdminServer> admin;
    if (!StartAdmin(*config.admin, &admin, &error)) {
      Log(LogLevel::kError, "admin", error);
      return 1;
    }
    ApplyAdmin(config.admin, std::move(admin));
  }
  Apply(running, std::move(sockets), std::move(tls), std::move(access_log));

  // Loop threads leave signals to the main thread's control loop.
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &previous);
  for (auto& loop : loops_)
    threads_.emplace_back([raw = loop.get()] { raw->Run(); });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);

  for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
    net::EventPtr ev(evsignal_new(control_base_.get(), sig, SignalCb, this));
    if (!ev || event_add(ev.get(), nullptr) != 0) {
      Log(LogLevel::kError, "dispatcher", "cannot install signal handlers");
      return 1;
    }
    signal_events_.push_back(std::move(ev));
  }
  drain_delay_event_.reset(
      evtimer_new(control_base_.get(), DrainDelayCb, this));
  if (options_.config_text.empty()) {
    watch_ = std::make_unique<ConfigWatch>(control_base_.get(),
                                           options_.config_path, [this] {
                                             std::vector<std::string> errors;
                                             ReloadNow("file change", &errors);
                                           });
    watch_->set_loaded_content(loaded_text_);
    if (!watch_->Start(&error)) {
      Log(LogLevel::kWarn, "conf",
          "config file not watched; reload with SIGHUP", {{"error", error}});
      watch_.reset();
    }
  }
  ready_ = true;
  systemd_ = std::make_unique<SystemdNotifier>(control_base_.get());
  systemd_->Ready("serving");
  systemd_->StartWatchdog();
  Log(LogLevel::kInfo, "dispatcher", "tandem started",
      {{"version", kVersion}, {"threads", threads}, {"config", config.path}});

  event_base_dispatch(control_base_.get());

  for (auto& thread : threads_) thread.join();
  health_->Stop();
  Log(LogLevel::kInfo, "dispatcher", "tandem stopped");
  return 0;
}

void Server::SignalCb(evutil_socket_t signal, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  if (signal == SIGHUP) {
    std::vector<std::string> errors;
    self->ReloadNow("SIGHUP", &errors);
    return;
  }
  self->BeginShutdown();
}

void Server::BeginShutdown() {
  if (draining_) return;
  draining_ = true;
  ready_ = false;
  if (systemd_) systemd_->Stopping();
  const conf::Global& global = config_->global;
  Log(LogLevel::kInfo, "dispatcher", "shutting down",
      {{"drain_delay_ms", global.drain_delay.count()},
       {"grace_period_ms", global.grace_period.count()}});
  // Fail /readyz first and keep serving for drain_delay, so whoever routes to
  // tandem (a Service, keepalived) stops before the listeners close.
  timeval tv = {
      static_cast<time_t>(global.drain_delay.count() / 1000),
      static_cast<suseconds_t>((global.drain_delay.count() % 1000) * 1000)};
  evtimer_add(drain_delay_event_.get(), &tv);
}

void Server::DrainDelayCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  auto grace = self->config_->global.grace_period;
  for (auto& loop : self->loops_) {
    loop->Post([grace](Loop& l) { l.BeginShutdown(grace); });
  }
  event_base_loopexit(self->control_base_.get(), nullptr);
}

bool Server::ReloadNow(const std::string& trigger,
                       std::vector<std::string>* errors) {
  if (draining_) {
    errors->push_back("shutting down");
    return false;
  }
  if (systemd_) systemd_->Reloading();
  ReloadNotice notice{systemd_.get()};  // READY=1 again however it ends
  conf::LoadResult result = Load();
  // What was parsed, good or bad, is what the file watch compares against.
  if (watch_) watch_->set_loaded_content(loaded_text_);
  last_reload_.at_unix = UnixNow();
  for (const conf::Diagnostic& error : result.errors)
    errors->push_back(error.ToString());
  std::map<std::string, std::vector<evutil_socket_t>> sockets;
  std::shared_ptr<const TlsContexts> tls;
  std::shared_ptr<const AccessLogFile> access_log;
  std::unique_ptr<AdminServer> admin;  // when the admin listener moves
  std::string error;
  // Everything that can fail is made before anything changes, listeners
  // last: their sockets are the one thing not freed by going out of scope.
  if (result.ok()) {
    const std::optional<conf::Admin>& next_admin = result.config->admin;
    const std::optional<conf::Admin>& running_admin = config_->admin;
    bool admin_moves =
        next_admin && (!running_admin ||
                       next_admin->listen.text != running_admin->listen.text);
    if (!BuildTls(*result.config, &tls, &error) ||
        !OpenAccessLog(result.config->global, &access_log, &error)) {
      errors->push_back(error);
    } else if (admin_moves && !StartAdmin(*next_admin, &admin, &error)) {
      errors->push_back(error);
    } else if (!discovery_->Follow(*result.config, &error)) {
      errors->push_back(error);
    } else if (!BindListeners(*result.config, &sockets, &error)) {
      errors->push_back(error);
      // Back to the running config's names; what they found is kept.
      std::string ignored;
      discovery_->Follow(*file_config_, &ignored);
    }
  }
  if (!errors->empty()) {
    ++reloads_failed_;
    last_reload_.ok = false;
    last_reload_.errors = *errors;
    Log(LogLevel::kError, "conf",
        "reload rejected, the running config keeps serving",
        {{"trigger", trigger}, {"errors", errors->size()}});
    for (const std::string& e : *errors) Log(LogLevel::kError, "conf", e);
    return false;
  }
  for (const conf::Diagnostic& warning : result.warnings) {
    Log(LogLevel::kWarn, "conf", warning.ToString());
  }
  const conf::Config& next = *result.config;
  last_reload_.restart_required = RestartRequired(next);
  if (!last_reload_.restart_required.empty()) {
    std::string keys;
    for (const std::string& key : last_reload_.restart_required)
      keys += (keys.empty() ? "" : ",") + key;
    Log(LogLevel::kWarn, "conf", "some changes take effect at the next restart",
        {{"keys", keys}});
  }
  ApplyAdmin(next.admin, std::move(admin));
  file_config_ = result.config;
  std::shared_ptr<const conf::Config> running = discovery_->Merge(file_config_);
  health_->ApplyConfig(running, tls->clusters);
  Apply(running, std::move(sockets), std::move(tls), std::move(access_log));
  ++reloads_ok_;
  last_reload_.ok = true;
  last_reload_.errors.clear();
  Log(LogLevel::kInfo, "conf", "config reloaded", {{"trigger", trigger}});
  return true;
}

bool Server::Ready() {
  // Not before every DNS name has been asked once: a cluster found in DNS
  // has no backend until then.
  return ready_ && !draining_ && discovery_->Settled();
}

void Server::DiscoveryCb(evutil_socket_t, short, void* arg) {
  static_cast<Server*>(arg)->ApplyDiscovered();
}

namespace {

// Whether the backends of two configs with the same clusters differ in what
// DNS can change.
bool SameBackends(const conf::Config& a, const conf::Config& b) {
  if (a.clusters.size() != b.clusters.size()) return false;
  for (size_t c = 0; c < a.clusters.size(); ++c) {
    const auto& x = a.clusters[c].backends;
    const auto& y = b.clusters[c].backends;
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i].address.text != y[i].address.text ||
          x[i].weight != y[i].weight || x[i].role != y[i].role ||
          x[i].vanished != y[i].vanished) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace

void Server::ApplyDiscovered() {
  if (draining_ || !file_config_) return;
  std::shared_ptr<const conf::Config> running = discovery_->Merge(file_config_);
  if (SameBackends(*running, *config_)) return;
  health_->ApplyConfig(running, tls_->clusters);
  Apply(running, sockets_, tls_, access_log_);
  Log(LogLevel::kInfo, "discovery", "backends found in DNS applied");
}

AdminReply Server::Reload() {
  std::vector<std::string> errors;
  AdminReply reply;
  if (ReloadNow("admin", &errors)) {
    reply.body = "reloaded\n";
    return reply;
  }
  reply.status = 422;
  reply.body = "reload rejected:\n";
  for (const std::string& e : errors) reply.body += e + "\n";
  return reply;
}

AdminReply Server::BackendAction(const std::string& cluster,
                                 const std::string& address,
                                 const std::string& action) {
  AdminReply reply;
  std::optional<health::AdminAction> parsed = health::ParseAdminAction(action);
  if (!parsed) {
    reply.status = 404;
    reply.body = "no action " + action + " (drain, enable or disable)\n";
    return reply;
  }
  health::HealthMonitor::ActionResult result =
      health_->AdminAction(cluster, address, *parsed);
  reply.status = result.status;
  reply.body = result.message + "\n";
  Log(result.status == 200 ? LogLevel::kInfo : LogLevel::kWarn, "admin",
      "backend action",
      {{"cluster", cluster},
       {"backend", address},
       {"action", action},
       {"status", result.status}});
  return reply;
}

std::string Server::StatusJson() {
  std::shared_ptr<const health::HealthSnapshot> snapshot = health_->snapshot();
  // In-flight requests per backend, summed over the loops.
  std::map<std::pair<std::string, std::string>, int64_t> inflight;
  for (const auto& loop : loops_) {
    loop->stats().VisitBackends([&](const std::string& cluster,
                                    const std::string& backend,
                                    const BackendStats& s) {
      inflight[{cluster, backend}] += s.inflight.Get();
    });
  }
  std::string out;
  out.reserve(4096);
  out.append("{\"version\":");
  AppendJsonString(kVersion, &out);
  out.append(",\"config\":{\"path\":");
  AppendJsonString(config_->path, &out);
  out.append(",\"last_reload\":{\"ok\":");
  out.append(last_reload_.ok ? "true" : "false");
  out.append(",\"at\":");
  AppendJsonString(net::FormatUtcSeconds(last_reload_.at_unix), &out);
  out.append(",\"errors\":[");
  for (size_t i = 0; i < last_reload_.errors.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendJsonString(last_reload_.errors[i], &out);
  }
  out.append("],\"restart_required\":[");
  for (size_t i = 0; i < last_reload_.restart_required.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendJsonString(last_reload_.restart_required[i], &out);
  }
  out.append("]}},\"ready\":");
  out.append(Ready() ? "true" : "false");
  out.append(",\"listeners\":[");
  for (size_t i = 0; i < config_->listeners.size(); ++i) {
    const conf::Listener& listener = config_->listeners[i];
    if (i > 0) out.push_back(',');
    out.append("{\"name\":");
    AppendJsonString(listener.name, &out);
    out.append(",\"address\":");
    auto it = sockets_.find(SocketKey(listener));
    std::string address = listener.listen.text;
    if (it != sockets_.end() && !it->second.empty()) {
      address = HostOf(listener.listen) + ":" +
                std::to_string(BoundPort(it->second[0]));
    }
    AppendJsonString(address, &out);
    out.append(",\"cluster\":");
    AppendJsonString(listener.cluster, &out);
    out.append(",\"tls\":");
    out.append(listener.tls() ? "true" : "false");
    out.push_back('}');
  }
  out.append("],\"clusters\":[");
  for (size_t c = 0; c < config_->clusters.size(); ++c) {
    const conf::Cluster& cluster = config_->clusters[c];
    if (c > 0) out.push_back(',');
    out.append("{\"name\":");
    AppendJsonString(cluster.name, &out);
    out.append(",\"policy\":");
    AppendJsonString(PolicyName(cluster.policy), &out);
    out.append(",\"algorithm\":");
    AppendJsonString(algorithms::AlgorithmName(cluster.picker.algorithm), &out);
    const health::ClusterStatus* status =
        snapshot ? snapshot->Find(cluster.name) : nullptr;
    out.append(",\"panic\":");
    out.append(status != nullptr && status->panic ? "true" : "false");
    if (status != nullptr) {
      out.append(",\"serving\":" + std::to_string(status->serving) +
                 ",\"min_active\":" + std::to_string(cluster.min_active));
    }
    // The most requests the cluster sends to its backends at once
    // (docs/dashboard.md): max_requests, or the sum of the backends'
    // max_inflight when every backend has one, whichever is lower; null
    // when neither bounds it.
    uint64_t by_backends = 0;
    bool every_backend_bounded = !cluster.backends.empty();
    for (const conf::Backend& backend : cluster.backends) {
      if (backend.max_inflight == 0) every_backend_bounded = false;
      by_backends += backend.max_inflight;
    }
    const char* limit_from = "unlimited";
    uint64_t limit = 0;
    if (cluster.max_requests > 0) {
      limit_from = "max_requests";
      limit = cluster.max_requests;
    }
    if (every_backend_bounded && (limit == 0 || by_backends < limit)) {
      limit_from = "max_inflight";
      limit = by_backends;
    }
    if (cluster.concurrency_adaptive && limits_) {
      // The adaptive limit now (below max_requests when that is lower).
      auto it = limits_->find({cluster.name, std::string()});
      if (it != limits_->end() && it->second->adaptive) {
        const uint64_t adaptive = it->second->adaptive->limit();
        if (limit == 0 || adaptive < limit) {
          limit = adaptive;
          limit_from = "adaptive";
        }
      }
    }
    out.append(",\"concurrency_limit\":");
    out.append(limit > 0 ? std::to_string(limit) : "null");
    out.append(",\"concurrency_limit_from\":");
    AppendJsonString(limit_from, &out);
    out.append(",\"backends\":[");
    for (size_t b = 0; b < cluster.backends.size(); ++b) {
      const conf::Backend& backend = cluster.backends[b];
      const health::BackendStatus* health = nullptr;
      if (status != nullptr) {
        for (const health::BackendStatus& candidate : status->backends) {
          if (candidate.address == backend.address.text) health = &candidate;
        }
      }
      if (b > 0) out.push_back(',');
      out.append("{\"address\":");
      AppendJsonString(backend.address.text, &out);
      out.append(",\"source\":");
      AppendJsonString(backend.source.empty() ? "config" : backend.source,
                       &out);
      out.append(",\"role\":");
      AppendJsonString(
          backend.role == conf::Role::kBackup ? "backup" : "primary", &out);
      out.append(",\"standby\":");
      if (backend.role == conf::Role::kBackup) {
        AppendJsonString(StandbyName(backend.standby), &out);
      } else {
        out.append("null");
      }
      out.append(",\"state\":");
      AppendJsonString(
          health != nullptr ? health::StateName(health->state) : "unknown",
          &out);
      out.append(",\"active\":");
      out.append(health != nullptr && health->active ? "true" : "false");
      out.append(",\"weight\":" + std::to_string(backend.weight));
      out.append(",\"effective_weight\":");
      char weight[32];
      double effective = health != nullptr
                             ? static_cast<double>(health->view_weight) /
                                   algorithms::kWeightScale
                             : backend.weight;
      std::snprintf(weight, sizeof(weight), "%g", effective);
      out.append(weight);
      out.append(",\"inflight\":");
      out.append(
          std::to_string(inflight[{cluster.name, backend.address.text}]));
      if (health != nullptr && health->activation) {
        out.append(",\"activation\":");
        AppendJsonString(algorithms::ActivationName(*health->activation), &out);
      }
      out.append(",\"last_check\":");
      AppendJsonString(health != nullptr ? health->last_check : "", &out);
      out.append(",\"transitions\":[");
      if (health != nullptr) {
        for (size_t t = 0; t < health->transitions.size(); ++t) {
          const health::Transition& transition = health->transitions[t];
          if (t > 0) out.push_back(',');
          out.append("{\"at\":");
          AppendJsonString(FormatUnixMs(transition.at_unix_ms), &out);
          out.append(",\"from\":");
          AppendJsonString(health::StateName(transition.from), &out);
          out.append(",\"to\":");
          AppendJsonString(health::StateName(transition.to), &out);
          out.append(",\"reason\":");
          AppendJsonString(transition.reason, &out);
          out.push_back('}');
        }
      }
      out.append("]}");
    }
    out.append("],\"events\":[");
    if (status != nullptr) {
      for (size_t e = 0; e < status->events.size(); ++e) {
        if (e > 0) out.push_back(',');
        out.append("{\"at\":");
        AppendJsonString(FormatUnixMs(status->events[e].at_unix_ms), &out);
        out.append(",\"message\":");
        AppendJsonString(status->events[e].message, &out);
        out.push_back('}');
      }
    }
    out.append("]}");
  }
  out.append("]}\n");
  return out;
}

std::string Server::MetricsText() {
  MetricsBuilder builder;
  builder.Gauge("tandem_build_info", "tandem's version",
                {{"version", kVersion}}, 1);
  builder.Counter("tandem_config_reloads_total", "Config reloads, by result",
                  {{"result", "success"}}, static_cast<double>(reloads_ok_));
  builder.Counter("tandem_config_reloads_total", "Config reloads, by result",
                  {{"result", "failure"}},
                  static_cast<double>(reloads_failed_));
  builder.Gauge("tandem_config_last_reload_success",
                "1 if the last config load or reload succeeded", {},
                last_reload_.ok ? 1 : 0);
  builder.Gauge("tandem_config_last_reload_timestamp_seconds",
                "Unix time of the last config load or reload attempt", {},
                static_cast<double>(last_reload_.at_unix));
  builder.Gauge("tandem_config_restart_required",
                "1 while a changed key waits for a restart (see /status "
                "config.last_reload.restart_required)",
                {}, last_reload_.restart_required.empty() ? 0 : 1);
  builder.Gauge("tandem_ready", "1 while tandem accepts traffic (/readyz)", {},
                Ready() ? 1 : 0);
  if (limits_) {
    for (const auto& [key, shared] : *limits_) {
      if (shared->adaptive) {
        // The cluster's own entry: (name, "").
        builder.Gauge("tandem_adaptive_concurrency_limit",
                      "The adaptive concurrency limit on tries in flight now",
                      {{"cluster", key.first}},
                      static_cast<double>(shared->adaptive->limit()));
        builder.Gauge("tandem_adaptive_min_rtt_seconds",
                      "The adaptive limiter's last minRTT measurement (0: "
                      "none yet)",
                      {{"cluster", key.first}},
                      shared->adaptive->min_rtt_us() / 1e6);
        builder.Gauge("tandem_adaptive_measuring",
                      "1 while the adaptive limiter measures minRTT (the limit "
                      "at min_limit, requests over it queued)",
                      {{"cluster", key.first}},
                      shared->adaptive->measuring() ? 1 : 0);
      }
      if (!shared->rate_limiter) continue;
      // "rate:listener" or "rate:cluster", and the name.
      builder.Gauge("tandem_rate_limit_keys",
                    "Keys a rate limit tracks now (at most its max_keys)",
                    {{key.first.substr(5), key.second}},
                    static_cast<double>(shared->rate_limiter->keys()));
    }
  }
  AddLoopMetrics(loops_, &builder);
  AddProcessMetrics(&builder);
  AddHealthMetrics(&builder);
  AddDiscoveryMetrics(&builder);
  return builder.Serialize();
}

void Server::AddDiscoveryMetrics(MetricsBuilder* builder) {
  for (const Discovery::SourceStatus& source : discovery_->Status()) {
    const std::vector<prometheus::ClientMetric::Label> labels = {
        {"cluster", source.cluster}, {"name", source.name}};
    auto with_result = [&](const char* result) {
      auto out = labels;
      out.push_back({"result", result});
      return out;
    };
    builder->Counter("tandem_dns_lookups_total", "DNS lookups, by result",
                     with_result("ok"), static_cast<double>(source.lookups_ok));
    builder->Counter("tandem_dns_lookups_total", "DNS lookups, by result",
                     with_result("failed"),
                     static_cast<double>(source.lookups_failed));
    builder->Gauge("tandem_dns_backends",
                   "Addresses in the name's last good DNS answer", labels,
                   static_cast<double>(source.current));
    builder->Gauge("tandem_dns_held_backends",
                   "Addresses gone from the DNS answer, draining until their "
                   "hold ends",
                   labels, static_cast<double>(source.held));
  }
}

void Server::AddHealthMetrics(MetricsBuilder* builder) {
  std::shared_ptr<const health::HealthSnapshot> snapshot = health_->snapshot();
  if (!snapshot) return;
  static constexpr algorithms::BackendState kStates[] = {
      algorithms::BackendState::kUnknown,  algorithms::BackendState::kUp,
      algorithms::BackendState::kDown,     algorithms::BackendState::kEjected,
      algorithms::BackendState::kDraining, algorithms::BackendState::kDisabled,
      algorithms::BackendState::kSlowStart};
  for (const health::ClusterStatus& cluster : snapshot->clusters) {
    builder->Gauge("tandem_cluster_panic",
                   "1 while the cluster routes in panic mode",
                   {{"cluster", cluster.name}}, cluster.panic ? 1 : 0);
    builder->Gauge("tandem_cluster_serving_backends",
                   "Healthy backends the policy lets take traffic",
                   {{"cluster", cluster.name}}, cluster.serving);
    for (const health::BackendStatus& backend : cluster.backends) {
      std::vector<prometheus::ClientMetric::Label> labels = {
          {"cluster", cluster.name}, {"backend", backend.address}};
      bool up = backend.state == algorithms::BackendState::kUp ||
                backend.state == algorithms::BackendState::kSlowStart;
      builder->Gauge("tandem_backend_up",
                     "1 when health checks say the backend is up", labels,
                     up ? 1 : 0);
      builder->Gauge("tandem_backend_active",
                     "1 when the policy lets the backend take traffic now",
                     labels, backend.active ? 1 : 0);
      builder->Gauge(
          "tandem_backend_effective_weight",
          "Weight pickers use: slow start and worker feedback applied", labels,
          static_cast<double>(backend.view_weight) / algorithms::kWeightScale);
      for (algorithms::BackendState state : kStates) {
        auto with_state = labels;
        with_state.push_back({"state", std::string(health::StateName(state))});
        builder->Gauge("tandem_backend_state",
                       "1 for the backend's current state", with_state,
                       backend.state == state ? 1 : 0);
        builder->Counter(
            "tandem_backend_transitions_total",
            "State changes, by the state entered", with_state,
            static_cast<double>(
                backend.transitions_to[static_cast<size_t>(state)]));
      }
      for (size_t kind = 0; kind < std::size(health::kEjectionKindNames);
           ++kind) {
        auto with_reason = labels;
        with_reason.push_back(
            {"reason", std::string(health::kEjectionKindNames[kind])});
        builder->Counter("tandem_backend_ejections_total",
                         "Outlier ejections, by what called for them",
                         with_reason,
                         static_cast<double>(backend.ejections_by[kind]));
      }
      auto passed = labels;
      passed.push_back({"result", "passed"});
      auto failed = labels;
      failed.push_back({"result", "failed"});
      builder->Counter("tandem_health_checks_total", "Active checks, by result",
                       passed, static_cast<double>(backend.checks_passed));
      builder->Counter("tandem_health_checks_total", "Active checks, by result",
                       failed, static_cast<double>(backend.checks_failed));
      builder->Counter("tandem_health_check_duration_seconds_total",
                       "Time spent in active checks", labels,
                       backend.check_seconds);
    }
  }
}

}  // namespace tandem::dispatcher
