// `tandem --demo`: three built-in compute workers (two primaries and a hot
// backup) on their own thread, and the config that puts tandem in front.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dispatcher/demo_worker.h"
#include "dispatcher/event_ptr.h"

namespace tandem::dispatcher {

class DemoWorkers {
 public:
  DemoWorkers() = default;
  ~DemoWorkers();
  DemoWorkers(const DemoWorkers&) = delete;
  DemoWorkers& operator=(const DemoWorkers&) = delete;

  // Starts `count` workers on 127.0.0.1 ephemeral ports and their thread.
  bool Start(size_t count, std::string* error);
  const std::vector<uint16_t>& ports() const { return ports_; }

 private:
  EventBasePtr base_;
  std::vector<std::unique_ptr<DemoWorker>> workers_;
  std::vector<uint16_t> ports_;
  std::thread thread_;
};

// The demo's TOML config for workers on `ports` (the last one a hot backup).
std::string DemoConfig(const std::vector<uint16_t>& ports);

// What to try, printed at start.
std::string DemoBanner();

}  // namespace tandem::dispatcher
