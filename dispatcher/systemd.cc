// systemd's notify protocol; see systemd.h.
#include "dispatcher/systemd.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <string>

namespace tandem::dispatcher {

SystemdNotifier::SystemdNotifier(event_base* base) : base_(base) {}

void SystemdNotifier::Ready(std::string_view status) {
  std::string message = "READY=1\nSTATUS=" + std::string(status);
  sd_notify(0, message.c_str());
}

void SystemdNotifier::Reloading() {
  // Type=notify-reload wants the monotonic time with RELOADING=1.
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  unsigned long long micros =
      static_cast<unsigned long long>(now.tv_sec) * 1000000ULL +
      now.tv_nsec / 1000;
  std::string message = "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(micros);
  sd_notify(0, message.c_str());
}

void SystemdNotifier::Stopping() { sd_notify(0, "STOPPING=1"); }

void SystemdNotifier::StartWatchdog() {
  uint64_t micros = 0;
  if (sd_watchdog_enabled(0, &micros) <= 0 || micros == 0) return;
  watchdog_.reset(event_new(base_, -1, EV_PERSIST, WatchdogCb, this));
  uint64_t half = micros / 2;
  timeval interval = {static_cast<time_t>(half / 1000000),
                      static_cast<suseconds_t>(half % 1000000)};
  if (watchdog_) event_add(watchdog_.get(), &interval);
  sd_notify(0, "WATCHDOG=1");
}

void SystemdNotifier::WatchdogCb(evutil_socket_t, short, void*) {
  // The control loop is alive if this timer runs: that is what the watchdog
  // asks.
  sd_notify(0, "WATCHDOG=1");
}

}  // namespace tandem::dispatcher
