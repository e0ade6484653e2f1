// One event-loop thread; see loop.h.
#include "dispatcher/loop.h"

#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <random>

#include "algorithms/hash.h"
#include "conf/log.h"
#include "dispatcher/client_connection.h"

namespace tandem::dispatcher {
namespace {

constexpr timeval kTickInterval = {1, 0};

uint64_t SeedFor(size_t index) {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device() ^ (index * 0x9e3779b97f4a7c15ULL);
}

}  // namespace

Generation::Generation(Loop& loop, std::shared_ptr<const conf::Config> config)
    : config_(std::move(config)) {
  clusters_.resize(config_->clusters.size());
  for (size_t c = 0; c < config_->clusters.size(); ++c) {
    const conf::Cluster& cluster = config_->clusters[c];
    ClusterRuntime& runtime = clusters_[c];
    runtime.config = &cluster;
    runtime.stats = loop.stats().Cluster(cluster.name);
    runtime.picker = algorithms::MakePicker(cluster.picker, loop.rng());
    runtime.inflight.assign(cluster.backends.size(), 0);
    std::vector<algorithms::BackendView> views(cluster.backends.size());
    for (size_t b = 0; b < cluster.backends.size(); ++b) {
      const conf::Backend& backend = cluster.backends[b];
      BackendRuntime backend_runtime;
      backend_runtime.config = &backend;
      backend_runtime.stats = loop.stats().Backend(cluster.name, backend.address.text);
      backend_runtime.pool = &loop.PoolFor(backend, backend_runtime.stats);
      runtime.backends.push_back(backend_runtime);
      views[b].weight = algorithms::ScaledWeight(backend.weight);
      views[b].eligible = true;
      views[b].id = algorithms::Hash64(backend.address.text);
    }
    runtime.picker->Update(views);
  }
  listeners_.resize(config_->listeners.size());
  for (size_t l = 0; l < config_->listeners.size(); ++l) {
    const conf::Listener& listener = config_->listeners[l];
    listeners_[l].config = &listener;
    listeners_[l].cluster = &clusters_[listener.cluster_index];
    listeners_[l].stats = loop.stats().Listener(listener.name);
  }
}

Loop::Loop(size_t index, int access_log_fd, conf::AccessLogFormat access_log_format)
    : index_(index),
      access_log_fd_(access_log_fd),
      access_log_format_(access_log_format),
      rng_(SeedFor(index)) {
  scratch_.reserve(4096);
}

Loop::~Loop() {
  while (connections_ != nullptr) connections_->Abort();
  listeners_.clear();
  pools_.clear();
  access_log_.reset();
  current_.reset();
  retired_.clear();
  tick_event_.reset();
  grace_event_.reset();
  message_event_.reset();
}

bool Loop::Init(std::string* error) {
  base_.reset(event_base_new());
  if (!base_) {
    *error = "cannot create an event base";
    return false;
  }
  message_event_.reset(event_new(base_.get(), -1, EV_PERSIST, MessageCb, this));
  tick_event_.reset(event_new(base_.get(), -1, EV_PERSIST, TickCb, this));
  grace_event_.reset(evtimer_new(base_.get(), GraceCb, this));
  if (!message_event_ || !tick_event_ || !grace_event_ ||
      event_add(message_event_.get(), nullptr) != 0 ||
      event_add(tick_event_.get(), &kTickInterval) != 0) {
    *error = "cannot create loop events";
    return false;
  }
  access_log_ = std::make_unique<AccessLog>(base_.get(), access_log_fd_, access_log_format_);
  return true;
}

void Loop::Run() {
  event_base_dispatch(base_.get());
  access_log_->Flush();
}

void Loop::Post(std::function<void(Loop&)> fn) {
  {
    std::lock_guard<std::mutex> lock(message_mutex_);
    messages_.push_back(std::move(fn));
  }
  // event_active is thread-safe once libevent's pthreads support is on.
  event_active(message_event_.get(), EV_READ, 0);
}

void Loop::MessageCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  std::deque<std::function<void(Loop&)>> messages;
  {
    std::lock_guard<std::mutex> lock(self->message_mutex_);
    messages.swap(self->messages_);
  }
  for (auto& message : messages) message(*self);
}

void Loop::ApplyConfig(std::shared_ptr<const conf::Config> config,
                       std::vector<ListenSocket> sockets) {
  auto generation = std::make_unique<Generation>(*this, std::move(config));
  std::vector<BoundListener> listeners;
  for (ListenSocket& socket : sockets) {
    // A socket already bound by an earlier generation comes back with the
    // same fd: keep its listener so no connection waiting to be accepted is
    // lost.
    bool kept = false;
    for (BoundListener& bound : listeners_) {
      if (bound.listener && evconnlistener_get_fd(bound.listener.get()) == socket.fd) {
        bound.listener_name = socket.listener_name;
        listeners.push_back(std::move(bound));
        kept = true;
        break;
      }
    }
    if (kept) continue;
    ListenerPtr listener(evconnlistener_new(base_.get(), AcceptCb, this,
                                            LEV_OPT_CLOSE_ON_FREE, 0, socket.fd));
    if (!listener) {
      conf::Log(conf::LogLevel::kError, "dispatcher", "cannot listen",
                {{"listener", socket.listener_name}, {"loop", index_}});
      evutil_closesocket(socket.fd);
      continue;
    }
    evconnlistener_set_error_cb(listener.get(), AcceptErrorCb);
    listeners.push_back({socket.listener_name, std::move(listener)});
  }
  listeners_ = std::move(listeners);  // listeners not carried over close here

  if (current_) {
    if (current_->connections_ == 0) {
      current_.reset();
    } else {
      retired_.push_back(std::move(current_));
    }
  }
  current_ = std::move(generation);
}

void Loop::AcceptCb(evconnlistener* listener, evutil_socket_t fd, sockaddr* address,
                    int length, void* arg) {
  static_cast<Loop*>(arg)->OnAccept(listener, fd, address, length);
}

void Loop::OnAccept(evconnlistener* listener, evutil_socket_t fd, sockaddr* address,
                    int length) {
  if (!current_) {
    evutil_closesocket(fd);
    return;
  }
  for (const BoundListener& bound : listeners_) {
    if (bound.listener.get() != listener) continue;
    const auto& configs = current_->config().listeners;
    for (size_t i = 0; i < configs.size(); ++i) {
      if (configs[i].name == bound.listener_name) {
        ClientConnection::Accept(*this, *current_, current_->listener(i), fd, address,
                                 length);
        return;
      }
    }
  }
  evutil_closesocket(fd);
}

void Loop::AcceptErrorCb(evconnlistener*, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  int err = EVUTIL_SOCKET_ERROR();
  // Out of descriptors or memory: log and keep listening; libevent retries on
  // the next readiness.
  conf::Log(conf::LogLevel::kWarn, "dispatcher", "accept failed",
            {{"error", evutil_socket_error_to_string(err)}, {"loop", self->index_}});
}

BackendPool& Loop::PoolFor(const conf::Backend& backend, BackendStats* stats) {
  auto& slot = pools_[backend.address.text];
  if (!slot) slot = std::make_unique<BackendPool>(base_.get(), backend.address, stats);
  return *slot;
}

void Loop::Attach(ClientConnection* connection, Generation* generation) {
  ++generation->connections_;
  connection->next = connections_;
  connection->prev = nullptr;
  if (connections_ != nullptr) connections_->prev = connection;
  connections_ = connection;
  open_connections_.Add(1);
}

void Loop::Detach(ClientConnection* connection, Generation* generation) {
  if (connection->prev != nullptr) connection->prev->next = connection->next;
  if (connection->next != nullptr) connection->next->prev = connection->prev;
  if (connections_ == connection) connections_ = connection->next;
  open_connections_.Add(-1);
  if (--generation->connections_ == 0 && generation != current_.get()) {
    ReleaseGeneration(generation);
  }
  if (shutting_down_) MaybeFinishShutdown();
}

void Loop::ReleaseGeneration(Generation* generation) {
  for (auto it = retired_.begin(); it != retired_.end(); ++it) {
    if (it->get() == generation) {
      retired_.erase(it);
      return;
    }
  }
}

void Loop::TickCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Loop*>(arg);
  if (!self->current_) return;
  for (const conf::Cluster& cluster : self->current_->config().clusters) {
    for (const conf::Backend& backend : cluster.backends) {
      auto it = self->pools_.find(backend.address.text);
      if (it != self->pools_.end()) it->second->CloseIdle(cluster.idle_timeout);
    }
  }
}

void Loop::BeginShutdown(std::chrono::milliseconds grace) {
  if (shutting_down_) return;
  shutting_down_ = true;
  // Take in what the kernel already accepted, so no queued connection is
  // reset when the socket closes; each is served once and closed.
  for (BoundListener& bound : listeners_) {
    evutil_socket_t fd = evconnlistener_get_fd(bound.listener.get());
    evconnlistener_disable(bound.listener.get());
    for (int i = 0; i < 4096; ++i) {
      sockaddr_storage address;
      socklen_t length = sizeof(address);
      evutil_socket_t client = accept4(fd, reinterpret_cast<sockaddr*>(&address), &length,
                                       SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) break;
      OnAccept(bound.listener.get(), client, reinterpret_cast<sockaddr*>(&address),
               static_cast<int>(length));
    }
  }
  listeners_.clear();
  for (ClientConnection* c = connections_; c != nullptr;) {
    ClientConnection* next = c->next;
    c->CloseWhenIdle();
    c = next;
  }
  for (auto& [address, pool] : pools_) pool->CloseIdle(std::chrono::steady_clock::duration::zero());
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
    conf::Log(conf::LogLevel::kWarn, "dispatcher", "grace period over, connections closed",
              {{"connections", aborted}, {"loop", self->index_}});
  }
  self->MaybeFinishShutdown();
}

void Loop::MaybeFinishShutdown() {
  if (connections_ != nullptr) return;
  for (auto& [address, pool] : pools_) pool->CloseIdle(std::chrono::steady_clock::duration::zero());
  event_base_loopexit(base_.get(), nullptr);
}

}  // namespace tandem::dispatcher
