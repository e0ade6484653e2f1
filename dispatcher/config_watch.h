// Watches the config file through its directory (inotify), so an editor's
// write-and-rename and a Kubernetes ConfigMap update (the `..data` symlink
// swap) are both seen; calls back once the changes settle and the content
// really differs.
#pragma once

#include <functional>
#include <string>

#include "net/event_ptr.h"

namespace tandem::dispatcher {

class ConfigWatch {
 public:
  // `changed` runs on `base`'s thread after the file's content changed.
  ConfigWatch(event_base* base, std::string path,
              std::function<void()> changed);
  ~ConfigWatch();
  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;

  // False (with `error`) when inotify is not available; tandem then reloads
  // on SIGHUP and POST /admin/reload only.
  bool Start(std::string* error);
  // The content just loaded, so an event that changes nothing is ignored.
  void set_loaded_content(std::string content) {
    content_ = std::move(content);
  }

 private:
  static void ReadCb(evutil_socket_t fd, short, void* arg);
  static void SettleCb(evutil_socket_t, short, void* arg);
  void Check();
  void WatchTarget();

  event_base* base_;
  std::string path_;
  std::string directory_;
  std::string name_;
  std::function<void()> changed_;
  int fd_ = -1;
  net::EventPtr read_event_;
  net::EventPtr settle_event_;
  std::string content_;
  std::string target_directory_;  // where a symlinked file really is
  std::string target_name_;
  int target_watch_ = -1;
};

}  // namespace tandem::dispatcher
