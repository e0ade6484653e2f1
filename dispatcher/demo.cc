// `tandem --demo`; see demo.h.
#include "dispatcher/demo.h"

namespace tandem::dispatcher {

DemoWorkers::~DemoWorkers() {
  if (base_) event_base_loopbreak(base_.get());
  if (thread_.joinable()) thread_.join();
  workers_.clear();
}

bool DemoWorkers::Start(size_t count, std::string* error) {
  base_.reset(event_base_new());
  if (!base_) {
    *error = "cannot create the demo workers' event loop";
    return false;
  }
  auto shared_health = std::make_shared<DemoWorkerShared>();
  for (size_t i = 0; i < count; ++i) {
    auto worker = std::make_unique<DemoWorker>(base_.get(), "worker-" + std::to_string(i + 1));
    DemoWorkerStart started = worker->Start("127.0.0.1:0");
    if (!started.ok()) {
      *error = "demo worker: " + started.error;
      return false;
    }
    ports_.push_back(started.port);
    workers_.push_back(std::move(worker));
  }
  thread_ = std::thread([base = base_.get()] {
    // Runs until the destructor breaks the loop; the persistent listeners
    // keep it from returning early.
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
  });
  return true;
}

std::string DemoConfig(const std::vector<uint16_t>& ports) {
  std::string config = R"(# The embedded demo: two compute workers and a hot backup, in process.
[global]
threads = 0
grace_period = "5s"
access_log = "stdout"

[admin]
listen = "127.0.0.1:9901"
token = "demo"

[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

[clusters.compute]
policy = "primary-backup"
algorithm = "round-robin"
min_active = 2
retries = 2
connect_timeout = "1s"
request_timeout = "30s"

[clusters.compute.health]
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
)";
  for (size_t i = 0; i < ports.size(); ++i) {
    bool backup = i + 1 == ports.size() && ports.size() > 1;
    config += "\n[[clusters.compute.backends]]\naddress = \"127.0.0.1:" +
              std::to_string(ports[i]) + "\"\n";
    config += backup ? "role = \"backup\"\nstandby = \"hot\"\n" : "role = \"primary\"\n";
  }
  return config;
}

std::string DemoBanner() {
  return R"(
tandem demo: two compute workers and a hot backup behind http://127.0.0.1:8080

  curl http://127.0.0.1:8080/                      # which worker answered
  curl 'http://127.0.0.1:8080/compute?rounds=50000' # real CPU work per request
  curl http://127.0.0.1:9901/status                # state of every backend (JSON)
  curl http://127.0.0.1:9901/metrics               # Prometheus metrics
  open http://127.0.0.1:9901/                      # the dashboard

Ctrl-C stops it.
)";
}

}  // namespace tandem::dispatcher
