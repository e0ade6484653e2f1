// One event-loop thread; see loop.h.
#include "dispatcher/loop.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>

#include "algorithms/hash.h"
#include "dispatcher/intrusive_list.h"
#include "dispatcher/proxy/client_connection.h"
#include "dispatcher/proxy/parked_connection.h"
#include "health/monitor.h"
#include "net/log.h"
#include "net/posix.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

constexpr timeval kTickInterval = {1, 0};

// A paused listener is tried again after this, doubled while accepting keeps
// failing (nginx waits accept_mutex_delay, 500 ms by default; HAProxy 100 ms).
constexpr std::chrono::milliseconds kAcceptRetryMin{100};
constexpr std::chrono::milliseconds kAcceptRetryMax{1000};
// At most one "accepting paused" line per loop this often; the pauses in
// between are counted in the next line (and all in /metrics).
constexpr std::chrono::seconds kAcceptLogInterval{1};

// Shortages that a failed accept() leaves in place, so that the listener,
// still readable, would fail again at once; nullopt for errors that concern
// one connection only (which the failed accept() dropped).
std::optional<size_t> AcceptPauseReason(int error) {
  switch (error) {
    case EMFILE:
      return 0;
    case ENFILE:
      return 1;
    case ENOBUFS:
      return 2;
    case ENOMEM:
      return 3;
    default:
      return std::nullopt;
  }
}

uint64_t SeedFor(size_t index) {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device() ^
         (index * 0x9e3779b97f4a7c15ULL);
}

}  // namespace

Generation::Generation(Loop& loop, std::shared_ptr<const conf::Config> config,
                       const TlsContexts& tls)
    : config_(std::move(config)) {
  clusters_.resize(config_->clusters.size());
  for (size_t c = 0; c < config_->clusters.size(); ++c) {
    const conf::Cluster& cluster = config_->clusters[c];
    ClusterRuntime& runtime = clusters_[c];
    runtime.index = c;
    runtime.config = &cluster;
    runtime.stats = loop.stats().Cluster(cluster.name);
    runtime.picker = algorithms::MakePicker(cluster.picker, loop.rng());
    runtime.fallback =
        algorithms::MakePicker(algorithms::PickerOptions{}, loop.rng());
    runtime.inflight.assign(cluster.backends.size(), 0);
    runtime.latency_us.assign(cluster.backends.size(), 0);
    const algorithms::Algorithm algorithm = cluster.picker.algorithm;
    runtime.avoid_slow = cluster.avoid_slow_backends &&
                         algorithm != algorithms::Algorithm::kRingHash &&
                         algorithm != algorithms::Algorithm::kMaglev &&
                         algorithm != algorithms::Algorithm::kP2cEwma;
    if (runtime.avoid_slow) {
      runtime.slow_views.resize(cluster.backends.size());
      runtime.slow.assign(cluster.backends.size(), 0);
      runtime.slow_next.assign(cluster.backends.size(), 0);
    }
    runtime.outcomes.assign(cluster.backends.size(), OutcomeCounts{});
    if (cluster.has_breakers()) {
      runtime.breakers = loop.LimitsFor(cluster.name, "");
      if (runtime.breakers) runtime.adaptive = runtime.breakers->adaptive.get();
    }
    if (cluster.rate_limit) {
      runtime.rate = loop.RateLimitFor("rate:cluster", cluster.name,
                                       config_->global.threads);
      runtime.rate.stats = &runtime.stats->rate;
    }
    std::shared_ptr<net::TlsClientContext> cluster_tls;
    if (auto it = tls.clusters.find(cluster.name); it != tls.clusters.end()) {
      cluster_tls = it->second;
    }
    for (const conf::Backend& backend : cluster.backends) {
      BackendRuntime backend_runtime;
      backend_runtime.config = &backend;
      backend_runtime.stats =
          loop.stats().Backend(cluster.name, backend.address.text);
      backend_runtime.pool =
          &loop.PoolFor(cluster, backend, backend_runtime.stats, cluster_tls);
      if (backend.max_inflight > 0 || backend.max_connections > 0) {
        backend_runtime.limits =
            loop.LimitsFor(cluster.name, backend.address.text);
        runtime.has_limits = true;
      }
      backend_runtime.pool->set_shared_connections(
          backend.max_connections > 0
              ? std::shared_ptr<std::atomic<uint32_t>>(
                    backend_runtime.limits,
                    &backend_runtime.limits->connections)
              : nullptr);
      runtime.backends.push_back(backend_runtime);
    }
  }
  listeners_.resize(config_->listeners.size());
  for (size_t l = 0; l < config_->listeners.size(); ++l) {
    const conf::Listener& listener = config_->listeners[l];
    listeners_[l].config = &listener;
    if (auto it = tls.listeners.find(listener.name);
        it != tls.listeners.end()) {
      listeners_[l].tls = it->second;
    }
    listeners_[l].cluster = &clusters_[listener.cluster_index];
    listeners_[l].stats = loop.stats().Listener(listener.name);
    if (listener.rate_limit) {
      listeners_[l].rate = loop.RateLimitFor("rate:listener", listener.name,
                                             config_->global.threads);
      listeners_[l].rate.stats = &listeners_[l].stats->rate;
    }
  }
}

void Generation::ApplyHealth(const health::HealthSnapshot* snapshot) {
  for (ClusterRuntime& runtime : clusters_) {
    const conf::Cluster& cluster = *runtime.config;
    const bool checks = cluster.health.kind != conf::HealthCheck::Kind::kNone;
    const health::ClusterStatus* status =
        snapshot != nullptr ? snapshot->Find(cluster.name) : nullptr;
    std::vector<algorithms::BackendView> views(cluster.backends.size());
    std::vector<algorithms::BackendView> reserve(cluster.backends.size());
    runtime.has_fallback = false;
    runtime.activating = false;
    runtime.cold_standby = false;
    for (size_t b = 0; b < cluster.backends.size(); ++b) {
      const conf::Backend& backend = cluster.backends[b];
      algorithms::BackendView& view = views[b];
      view.id = algorithms::Hash64(backend.address.text);
      view.weight = algorithms::ScaledWeight(backend.weight);
      // Until health/ has spoken, only unchecked primaries take traffic.
      view.eligible = !checks && backend.role == conf::Role::kPrimary;
      reserve[b] = view;
      reserve[b].eligible = false;
      if (status == nullptr) continue;
      const health::BackendStatus* backend_status = nullptr;
      if (snapshot->config == config_ && b < status->views.size()) {
        view = status->views[b];
        backend_status = &status->backends[b];
      } else {
        for (size_t i = 0; i < status->backends.size(); ++i) {
          if (status->backends[i].address == backend.address.text) {
            view = status->views[i];
            backend_status = &status->backends[i];
            break;
          }
        }
      }
      if (backend_status != nullptr &&
          backend.standby == conf::Standby::kCold &&
          backend.role == conf::Role::kBackup && backend_status->activation &&
          *backend_status->activation != algorithms::Activation::kFailed) {
        runtime.cold_standby = true;
      }
      // Started and not yet serving: requests may wait for it.
      if (backend_status != nullptr && backend_status->activation &&
          (*backend_status->activation == algorithms::Activation::kActivating ||
           (*backend_status->activation == algorithms::Activation::kActive &&
            !view.eligible))) {
        runtime.activating = true;
      }
      if (backend_status != nullptr && backend.role == conf::Role::kBackup &&
          !view.eligible) {
        auto state = backend_status->state;
        bool healthy = state == algorithms::BackendState::kUp ||
                       state == algorithms::BackendState::kSlowStart ||
                       (state == algorithms::BackendState::kUnknown && !checks);
        bool running =
            backend.standby != conf::Standby::kCold ||
            backend_status->activation == algorithms::Activation::kActive;
        reserve[b].eligible = healthy && running;
        runtime.has_fallback = runtime.has_fallback || reserve[b].eligible;
      }
    }
    // Backends this loop suspects hung take nothing new, unless that would
    // leave none.
    const auto now = std::chrono::steady_clock::now();
    bool unsuspected = false;
    for (size_t b = 0; b < views.size(); ++b) {
      unsuspected = unsuspected || (views[b].eligible && views[b].weight > 0 &&
                                    runtime.backends[b].suspected_until <= now);
    }
    for (size_t b = 0; b < views.size(); ++b) {
      if (unsuspected && runtime.backends[b].suspected_until > now)
        views[b].eligible = false;
      runtime.backends[b].eligible = views[b].eligible && views[b].weight > 0;
    }
    runtime.picker->Update(views);
    runtime.fallback->Update(reserve);
  }
}

Loop::Loop(size_t index, std::shared_ptr<const AccessLogFile> access_log,
           conf::AccessLogFormat access_log_format)
    : index_(index),
      access_log_file_(std::move(access_log)),
      access_log_format_(access_log_format),
      accept_retry_(kAcceptRetryMin),
      rng_(SeedFor(index)) {
  scratch_.reserve(4096);
}

Loop::~Loop() {
  health_monitor_ = nullptr;
  while (connections_ != nullptr) connections_->Abort();
  while (parked_ != nullptr) parked_->Close();
  DeleteRetired();
  retire_event_.reset();
  listeners_.clear();
  pools_.clear();
  write_behind_.reset();
  access_log_.reset();
  current_.reset();
  retired_.clear();
  tick_event_.reset();
  grace_event_.reset();
  flush_event_.reset();
  queue_poll_event_.reset();
  hang_watch_event_.reset();
  accept_retry_event_.reset();
  messages_.Reset();
}

bool Loop::Init(std::string* error) {
  // Only this loop's thread touches its base, so it needs no lock (messages
  // from other threads arrive through the queue's eventfd).
  base_ = net::NewEventBase(net::BaseLocking::kUnlocked);
  if (!base_) {
    *error = "cannot create an event base";
    return false;
  }
  tick_event_.reset(event_new(base_.get(), -1, EV_PERSIST, TickCb, this));
  grace_event_.reset(evtimer_new(base_.get(), GraceCb, this));
  flush_event_.reset(evtimer_new(base_.get(), FlushOutcomesCb, this));
  queue_poll_event_.reset(
      event_new(base_.get(), -1, EV_PERSIST, QueuePollCb, this));
  accept_retry_event_.reset(evtimer_new(base_.get(), AcceptRetryCb, this));
  hang_watch_event_.reset(evtimer_new(base_.get(), HangWatchCb, this));
  retire_event_.reset(event_new(base_.get(), -1, 0, DeleteRetiredCb, this));
  write_behind_ = std::make_unique<net::WriteBehind>(base_.get());
  // Backend connections' writing is on only while bytes wait for room.
  backend_write_behind_ = std::make_unique<net::WriteBehind>(
      base_.get(), net::WriteEvent::kOnDemand);
  if (!messages_.Init(base_.get(), this) || !tick_event_ || !grace_event_ ||
      !write_behind_->ok() || !backend_write_behind_->ok() || !flush_event_ ||
      !queue_poll_event_ || !accept_retry_event_ || !hang_watch_event_ ||
      !retire_event_ || event_add(tick_event_.get(), &kTickInterval) != 0) {
    *error = "cannot create loop events";
    return false;
  }
  access_log_ = std::make_unique<AccessLog>(
      base_.get(), std::move(access_log_file_), access_log_format_);
  return true;
}

void Loop::Run() {
  // The request path's clock reads, one per turn (net/turn_clock.h).
  net::TurnClock clock(base_.get());
  event_base_dispatch(base_.get());
  access_log_->Flush();
}

void Loop::ApplyConfig(std::shared_ptr<const conf::Config> config,
                       std::vector<ListenSocket> sockets,
                       std::shared_ptr<const TlsContexts> tls) {
  static const TlsContexts kNone;
  auto generation = std::make_unique<Generation>(*this, std::move(config),
                                                 tls ? *tls : kNone);
  std::vector<BoundListener> listeners;
  for (ListenSocket& socket : sockets) {
    // A socket already bound by an earlier generation comes back with the
    // same fd: keep its listener so no connection waiting to be accepted is
    // lost.
    bool kept = false;
    for (BoundListener& bound : listeners_) {
      if (bound.listener &&
          evconnlistener_get_fd(bound.listener.get()) == socket.fd) {
        ListenerStats* stats = stats_.Listener(socket.listener_name);
        if (bound.paused && stats != bound.stats) {
          bound.stats->accept_paused.Add(-1);
          stats->accept_paused.Add(1);
        }
        bound.listener_name = socket.listener_name;
        bound.stats = stats;
        listeners.push_back(std::move(bound));
        bound.paused = false;
        kept = true;
        break;
      }
    }
    if (kept) continue;
    net::ListenerPtr listener(evconnlistener_new(
        base_.get(), AcceptCb, this, LEV_OPT_CLOSE_ON_FREE, 0, socket.fd));
    if (!listener) {
      net::Log(net::LogLevel::kError, "dispatcher", "cannot listen",
               {{"listener", socket.listener_name}, {"loop", index_}});
      evutil_closesocket(socket.fd);
      continue;
    }
    evconnlistener_set_error_cb(listener.get(), AcceptErrorCb);
    listeners.push_back({socket.listener_name, std::move(listener),
                         stats_.Listener(socket.listener_name)});
    // Descriptors are short for the whole process: a new socket waits too.
    if (accept_paused_) SetPaused(listeners.back(), true);
  }
  for (BoundListener& bound : listeners_) {
    if (bound.paused) bound.stats->accept_paused.Add(-1);
  }
  listeners_ = std::move(listeners);  // listeners not carried over close here

  generation->ApplyHealth(health_.get());
  if (current_) {
    FlushOutcomes(*current_);
    if (current_->connections_ == 0) {
      current_.reset();
    } else {
      retired_.push_back(std::move(current_));
    }
  }
  current_ = std::move(generation);
}

void Loop::ApplyHealth(std::shared_ptr<const health::HealthSnapshot> snapshot) {
  health_ = std::move(snapshot);
  if (current_) current_->ApplyHealth(health_.get());
  for (auto& generation : retired_) generation->ApplyHealth(health_.get());
}

RateLimitRuntime Loop::RateLimitFor(const std::string& kind,
                                    const std::string& name, size_t threads) {
  RateLimitRuntime rate;
  rate.shared = LimitsFor(kind, name);
  if (rate.shared->rate_limiter) {
    rate.lease =
        std::make_unique<RateLease>(*rate.shared->rate_limiter, threads);
  }
  return rate;
}

std::shared_ptr<SharedLimits> Loop::LimitsFor(
    const std::string& cluster, const std::string& address) const {
  if (limits_) {
    auto it = limits_->find({cluster, address});
    if (it != limits_->end()) return it->second;
  }
  // Not prepared by the server (a test): a private counter still limits.
  return std::make_shared<SharedLimits>();
}

void Loop::ReportOutcome(ClusterRuntime& cluster, size_t backend, bool success,
                         health::TrafficFailure kind, bool refused) {
  if (health_monitor_ == nullptr) return;
  OutcomeCounts& counts = cluster.outcomes[backend];
  cluster.outcomes_pending = true;
  if (success) {
    ++counts.successes;
    if (!flush_pending_) {
      flush_pending_ = true;
      static constexpr timeval kSuccessBatch = {0, 250 * 1000};
      evtimer_add(flush_event_.get(), &kSuccessBatch);
    }
    return;
  }
  ++counts.failures;
  counts.kind = kind;
  counts.refused = counts.refused || refused;
  // Failures go out at once (coalesced within this loop iteration), so an
  // ejection does not wait for a batch.
  flush_pending_ = true;
  event_active(flush_event_.get(), EV_TIMEOUT, 0);
}

std::unique_ptr<net::HttpParser> Loop::TakeParser(
    net::HttpParser::Type type, net::HttpParser::Handler* handler) {
  auto& spare = spare_parsers_[static_cast<size_t>(type)];
  if (spare.empty()) return std::make_unique<net::HttpParser>(type, handler);
  std::unique_ptr<net::HttpParser> parser = std::move(spare.back());
  spare.pop_back();
  parser->set_handler(handler);
  return parser;
}

void Loop::ReturnParser(std::unique_ptr<net::HttpParser> parser) {
  auto& spare = spare_parsers_[static_cast<size_t>(parser->type())];
  // Enough for the exchanges in flight at once; beyond that, free.
  constexpr size_t kMaxSpare = 1024;
  if (spare.size() >= kMaxSpare) return;
  parser->set_handler(nullptr);
  // A large message (trailers, a big head) must not stay resident in the
  // pool: shed what grew past the usual size.
  parser->Reset();
  parser->ShrinkIfLarge(kMaxIdleParserBytes);
  parser->set_max_head_bytes(net::kDefaultMaxHeadBytes);
  parser->set_max_fields(net::kDefaultMaxFields);
  parser->set_max_body_bytes(0);
  spare.push_back(std::move(parser));
}

net::BufferEventPtr Loop::TakeClientBufferEvent(evutil_socket_t fd) {
  if (spare_bevs_.empty()) {
    return net::BufferEventPtr(
        bufferevent_socket_new(base_.get(), fd, BEV_OPT_CLOSE_ON_FREE));
  }
  net::BufferEventPtr bev = std::move(spare_bevs_.back());
  spare_bevs_.pop_back();
  bufferevent_setfd(bev.get(), fd);
  return bev;
}

void Loop::ReturnClientBufferEvent(net::BufferEventPtr bev) {
  constexpr size_t kMaxSpare = 1024;
  if (spare_bevs_.size() >= kMaxSpare) return;
  bufferevent_setcb(bev.get(), nullptr, nullptr, nullptr, nullptr);
  spare_bevs_.push_back(std::move(bev));
}

void Loop::WatchQueue() {
  if (queue_poll_armed_) return;
  // Slots free up on other threads without telling this one: look again
  // every few milliseconds while anything waits.
  static constexpr timeval kPoll = {0, 5 * 1000};
  if (event_add(queue_poll_event_.get(), &kPoll) == 0) queue_poll_armed_ = true;
}

void Loop::DrainQueue(ClusterRuntime& cluster) {
  while (!cluster.queue.empty()) {
    Exchange* next = cluster.queue.front();
    if (!next->RetryFromQueue()) break;
  }
  while (!cluster.retry_waiters.empty() && cluster.RetryBudgetLeft()) {
    Exchange* next = cluster.retry_waiters.front();
    cluster.retry_waiters.pop_front();
    next->ResumeRetry();
  }
}

void Loop::QueuePollCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  bool waiting = false;
  auto drain = [&](Generation& generation) {
    for (ClusterRuntime& cluster : generation.clusters_) {
      self->DrainQueue(cluster);
      waiting =
          waiting || !cluster.queue.empty() || !cluster.retry_waiters.empty();
    }
  };
  if (self->current_) drain(*self->current_);
  for (auto& generation : self->retired_) drain(*generation);
  if (!waiting) {
    event_del(self->queue_poll_event_.get());
    self->queue_poll_armed_ = false;
  }
}

void Loop::FlushOutcomesCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  self->flush_pending_ = false;
  self->FlushOutcomes();
}

void Loop::FlushOutcomes() {
  if (current_) FlushOutcomes(*current_);
  for (auto& generation : retired_) FlushOutcomes(*generation);
}

void Loop::FlushOutcomes(Generation& generation) {
  if (health_monitor_ == nullptr) return;
  health::OutcomeBatch batch;
  for (ClusterRuntime& cluster : generation.clusters_) {
    if (!cluster.outcomes_pending) continue;
    cluster.outcomes_pending = false;
    for (size_t b = 0; b < cluster.outcomes.size(); ++b) {
      OutcomeCounts& counts = cluster.outcomes[b];
      if (counts.successes == 0 && counts.failures == 0) continue;
      health::OutcomeReport report;
      report.cluster = static_cast<uint32_t>(cluster.index);
      report.backend = static_cast<uint32_t>(b);
      report.successes = counts.successes;
      report.failures = counts.failures;
      report.kind = counts.kind;
      report.refused = counts.refused;
      batch.reports.push_back(report);
      counts = OutcomeCounts{};
    }
  }
  if (batch.reports.empty()) return;
  batch.config = generation.config_;
  health_monitor_->Report(std::move(batch));
}

void Loop::AcceptCb(evconnlistener* listener, evutil_socket_t fd,
                    sockaddr* address, int length, void* arg) {
  static_cast<Loop*>(arg)->OnAccept(listener, fd, address, length);
}

void Loop::OnAccept(evconnlistener* listener, evutil_socket_t fd,
                    sockaddr* address, int length) {
  accept_retry_ = kAcceptRetryMin;  // the shortage, if any, is over
  if (!current_) {
    evutil_closesocket(fd);
    return;
  }
  for (const BoundListener& bound : listeners_) {
    if (bound.listener.get() != listener) continue;
    const auto& configs = current_->config().listeners;
    for (size_t i = 0; i < configs.size(); ++i) {
      if (configs[i].name == bound.listener_name) {
        ClientConnection::Accept(*this, *current_, current_->listener(i), fd,
                                 address, length);
        return;
      }
    }
  }
  evutil_closesocket(fd);
}

void Loop::AcceptErrorCb(evconnlistener*, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  int err = EVUTIL_SOCKET_ERROR();
  if (std::optional<size_t> reason = AcceptPauseReason(err)) {
    self->PauseAccepting(*reason, err);
    return;
  }
  net::Log(net::LogLevel::kWarn, "dispatcher", "accept failed",
           {{"error", net::ErrorText(err)}, {"loop", self->index_}});
}

void Loop::PauseAccepting(size_t reason, int error) {
  // Each listener of the loop may report the same shortage.
  if (accept_paused_) return;
  accept_paused_ = true;
  stats_.accept_pauses[reason].Add();
  for (BoundListener& bound : listeners_) SetPaused(bound, true);
  timeval retry = net::ToTimeval(accept_retry_);
  if (evtimer_add(accept_retry_event_.get(), &retry) != 0) {
    // Without a timer only a closing connection resumes accepting.
    net::Log(net::LogLevel::kError, "dispatcher",
             "cannot arm the accept retry timer", {{"loop", index_}});
  }
  ++accept_pauses_unlogged_;
  auto now = std::chrono::steady_clock::now();
  if (now - accept_pause_logged_ >= kAcceptLogInterval) {
    net::Log(net::LogLevel::kWarn, "dispatcher", "accepting paused",
             {{"error", net::ErrorText(error)},
              {"retry_ms", accept_retry_.count()},
              {"pauses", accept_pauses_unlogged_},
              {"connections", open_connections_.Get()},
              {"loop", index_}});
    accept_pause_logged_ = now;
    accept_pauses_unlogged_ = 0;
  }
  accept_retry_ = std::min(accept_retry_ * 2, kAcceptRetryMax);
}

void Loop::ResumeAccepting() {
  if (!accept_paused_) return;
  accept_paused_ = false;
  event_del(accept_retry_event_.get());
  bool still_paused = false;
  for (BoundListener& bound : listeners_) {
    SetPaused(bound, false);
    still_paused = still_paused || bound.paused;
  }
  if (still_paused) {
    accept_paused_ = true;
    timeval retry = net::ToTimeval(accept_retry_);
    (void)evtimer_add(accept_retry_event_.get(), &retry);
  }
}

void Loop::SetPaused(BoundListener& bound, bool paused) {
  if (bound.paused == paused) return;
  // Both only add or remove the listener's read event: they fail only when
  // epoll cannot take it, and the next accept error or retry tries again.
  int result = paused ? evconnlistener_disable(bound.listener.get())
                      : evconnlistener_enable(bound.listener.get());
  if (result != 0) {
    net::Log(net::LogLevel::kError, "dispatcher",
             paused ? "cannot pause accepting" : "cannot resume accepting",
             {{"listener", bound.listener_name}, {"loop", index_}});
    return;
  }
  bound.paused = paused;
  bound.stats->accept_paused.Add(paused ? 1 : -1);
}

void Loop::AcceptRetryCb(evutil_socket_t, short, void* arg) {
  static_cast<Loop*>(arg)->ResumeAccepting();
}

BackendPool& Loop::PoolFor(const conf::Cluster& cluster,
                           const conf::Backend& backend, BackendStats* stats,
                           const std::shared_ptr<net::TlsClientContext>& tls) {
  // Connections made with one cluster's TLS settings (SNI, verification)
  // are not handed to another's requests.
  std::string key = backend.address.text;
  if (tls) key += "|tls|" + cluster.name;
  const bool http2 = cluster.protocol != conf::UpstreamProtocol::kHttp1;
  if (http2) key += "|h2|" + cluster.name;
  auto& slot = pools_[key];
  if (!slot)
    slot = std::make_unique<BackendPool>(base_.get(), *backend_write_behind_,
                                         backend.address, stats);
  if (http2)
    slot->set_http2(tls != nullptr, cluster.max_requests_per_connection);
  std::string settings;
  if (tls) {
    // What the context verifies and sends; a CA file counts by its contents'
    // identity (a reload re-reads it).
    const conf::UpstreamTls& t = cluster.tls;
    settings = t.sni + '|' + t.verify_name + '|' + (t.verify ? '1' : '0') +
               '|' + t.ca_file;
    struct stat info {};
    if (!t.ca_file.empty() && stat(t.ca_file.c_str(), &info) == 0) {
      settings += '|' + std::to_string(info.st_size) + '|' +
                  std::to_string(info.st_mtim.tv_sec) + '.' +
                  std::to_string(info.st_mtim.tv_nsec);
    }
  }
  slot->set_tls(tls, settings);
  return *slot;
}

void Loop::Attach(FrontConnection* connection, Generation* generation) {
  LinkFront(connections_, connection);
  Count(generation);
}

void Loop::AttachParked(ParkedConnection* connection, Generation* generation) {
  LinkFront(parked_, connection);
  stats_.parked_connections.Add(1);
  Count(generation);
}

void Loop::Retire(ParkedConnection* connection) {
  Unlink(parked_, connection);
  stats_.parked_connections.Add(-1);
  DeferDelete(connection);
}

void Loop::Retire(FrontConnection* connection) {
  Unlink(connections_, connection);
  DeferDelete(connection);
}

void Loop::DeleteRetiredCb(evutil_socket_t, short, void* arg) {
  static_cast<Loop*>(arg)->DeleteRetired();
}

void Loop::DeleteRetired() {
  // A destructor may retire nothing new, but take the list first anyway.
  while (!retired_objects_.empty()) {
    auto objects = std::move(retired_objects_);
    retired_objects_.clear();
    for (auto& [object, deleter] : objects) deleter(object);
  }
}

void Loop::Count(Generation* generation) {
  ++generation->connections_;
  open_connections_.Add(1);
}

void Loop::Forget(Generation* generation) {
  open_connections_.Add(-1);
  // Its descriptor is free again: try the connections waiting at once.
  if (accept_paused_ && !shutting_down_) ResumeAccepting();
  Release(generation);
  if (shutting_down_) MaybeFinishShutdown();
}

void Loop::Release(Generation* generation) {
  if (--generation->connections_ == 0 && generation != current_.get()) {
    ReleaseGeneration(generation);
  }
}

void Loop::Rebind(Generation** generation, ListenerRuntime** listener) {
  Generation* old = *generation;
  if (!current_ || old == current_.get()) return;
  const std::string& name = (*listener)->config->name;
  const auto& configs = current_->config().listeners;
  for (size_t i = 0; i < configs.size(); ++i) {
    if (configs[i].name != name) continue;
    ++current_->connections_;
    *generation = current_.get();
    *listener = &current_->listener(i);
    if (--old->connections_ == 0) ReleaseGeneration(old);
    return;
  }
}

void Loop::ReleaseGeneration(Generation* generation) {
  FlushOutcomes(*generation);
  for (auto it = retired_.begin(); it != retired_.end(); ++it) {
    if (it->get() == generation) {
      retired_.erase(it);
      return;
    }
  }
}

void Loop::TickCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  self->SampleMemory();
  if (!self->current_) return;
  // Through the runtime's own pool pointers: a TLS pool is keyed apart from
  // the plain one of the same address.
  for (const ClusterRuntime& runtime : self->current_->clusters_) {
    for (const BackendRuntime& backend : runtime.backends) {
      backend.pool->CloseIdle(runtime.config->idle_timeout,
                              runtime.config->max_idle_connections);
    }
  }
}

void Loop::SampleMemory() {
  uint64_t buffered = 0;
  for (const FrontConnection* c = connections_; c != nullptr; c = c->next)
    buffered += c->BufferedBytes();
  uint64_t pooled = scratch_.capacity();
  for (const auto& spare : spare_parsers_) {
    for (const auto& parser : spare) pooled += parser->HeldBytes();
  }
  stats_.buffered_bytes.Set(static_cast<int64_t>(buffered));
  stats_.pooled_bytes.Set(static_cast<int64_t>(pooled));
}

void Loop::BeginShutdown(std::chrono::milliseconds grace) {
  if (shutting_down_) return;
  shutting_down_ = true;
  // Take in what the kernel already accepted, so no queued connection is
  // reset when the socket closes; each is served once and closed.
  accept_paused_ = false;
  event_del(accept_retry_event_.get());
  for (BoundListener& bound : listeners_) {
    evutil_socket_t fd = evconnlistener_get_fd(bound.listener.get());
    evconnlistener_disable(bound.listener.get());
    if (bound.paused) bound.stats->accept_paused.Add(-1);
    for (int i = 0; i < 4096; ++i) {
      sockaddr_storage address;
      socklen_t length = sizeof(address);
      evutil_socket_t client =
          accept4(fd, reinterpret_cast<sockaddr*>(&address), &length,
                  SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) break;
      OnAccept(bound.listener.get(), client,
               reinterpret_cast<sockaddr*>(&address), static_cast<int>(length));
    }
  }
  listeners_.clear();
  for (FrontConnection* c = connections_; c != nullptr;) {
    FrontConnection* next = c->next;
    c->CloseWhenIdle();
    c = next;
  }
  while (parked_ != nullptr) parked_->Close();
  for (auto& [address, pool] : pools_)
    pool->CloseIdle(std::chrono::steady_clock::duration::zero());
  timeval tv = {static_cast<time_t>(grace.count() / 1000),
                static_cast<suseconds_t>((grace.count() % 1000) * 1000)};
  evtimer_add(grace_event_.get(), &tv);
  MaybeFinishShutdown();
}

void Loop::GraceCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  int aborted = 0;
  while (self->connections_ != nullptr) {
    self->connections_->Abort();
    ++aborted;
  }
  if (aborted > 0) {
    net::Log(net::LogLevel::kWarn, "dispatcher",
             "grace period over, connections closed",
             {{"connections", aborted}, {"loop", self->index_}});
  }
  self->MaybeFinishShutdown();
}

void Loop::MaybeFinishShutdown() {
  if (connections_ != nullptr || parked_ != nullptr) return;
  for (auto& [address, pool] : pools_)
    pool->CloseIdle(std::chrono::steady_clock::duration::zero());
  event_base_loopexit(base_.get(), nullptr);
}

}  // namespace tandem::dispatcher
