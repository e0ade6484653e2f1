// `tandem --demo`: three built-in compute workers (two primaries and a hot
// backup) on their own thread, and the config that puts tandem in front.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "demo/demo_worker.h"
#include "net/event_ptr.h"

namespace tandem::demo {

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
  net::EventBasePtr base_;
  std::vector<std::unique_ptr<DemoWorker>> workers_;
  std::vector<uint16_t> ports_;
  std::thread thread_;
};

// A self-signed certificate for 127.0.0.1 and localhost, written as PEM into
// a fresh temporary directory (removed by the destructor), for the demo's
// HTTPS listener.
class DemoCertificate {
 public:
  DemoCertificate() = default;
  ~DemoCertificate();
  DemoCertificate(const DemoCertificate&) = delete;
  DemoCertificate& operator=(const DemoCertificate&) = delete;

  bool Create(std::string* error);
  const std::string& cert_file() const { return cert_file_; }
  const std::string& key_file() const { return key_file_; }

 private:
  std::string directory_;
  std::string cert_file_;
  std::string key_file_;
};

// The demo's TOML config for workers on `ports` (the last one a hot backup);
// with a certificate, an HTTPS listener on 127.0.0.1:8443 too.
std::string DemoConfig(const std::vector<uint16_t>& ports,
                       const DemoCertificate* certificate = nullptr);

// What to try, printed at start.
std::string DemoBanner();

}  // namespace tandem::demo
