// systemd's notify protocol (sd_notify): READY=1 once the listeners are up,
// RELOADING=1/READY=1 around a reload, STOPPING=1 on shutdown, and WATCHDOG=1
// pings when the unit sets WatchdogSec. Without NOTIFY_SOCKET all of it is a
// no-op.
#pragma once

#include <string_view>

#include "net/event_ptr.h"

namespace tandem::dispatcher {

class SystemdNotifier {
 public:
  explicit SystemdNotifier(event_base* base);
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  void Ready(std::string_view status);
  void Reloading();
  void Stopping();
  // Starts WATCHDOG=1 pings at half the unit's WatchdogSec, if it has one.
  void StartWatchdog();

 private:
  static void WatchdogCb(evutil_socket_t, short, void* arg);
  event_base* base_;
  net::EventPtr watchdog_;
};

}  // namespace tandem::dispatcher
