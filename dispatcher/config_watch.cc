// Watching the config file; see config_watch.h.
#include "dispatcher/config_watch.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tandem::dispatcher {
namespace {

// Editors write in several steps; a ConfigMap swap is a few renames. Wait
// for quiet before reading.
constexpr timeval kSettle = {0, 200 * 1000};
constexpr uint32_t kMask =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB;

// The file's whole content; empty (and false) when it cannot be read.
bool ReadWholeFile(const std::string& path, std::string* content) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    content->clear();
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  *content = text.str();
  return true;
}

}  // namespace

ConfigWatch::ConfigWatch(event_base* base, std::string path,
                         std::function<void()> changed)
    : base_(base), path_(std::move(path)), changed_(std::move(changed)) {
  size_t slash = path_.rfind('/');
  directory_ = slash == std::string::npos
                   ? "."
                   : path_.substr(0, slash == 0 ? 1 : slash);
  name_ = slash == std::string::npos ? path_ : path_.substr(slash + 1);
}

ConfigWatch::~ConfigWatch() {
  read_event_.reset();
  settle_event_.reset();
  if (fd_ >= 0) close(fd_);
}

bool ConfigWatch::Start(std::string* error) {
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) {
    *error = std::string("inotify: ") + strerror(errno);
    return false;
  }
  // The directory, not the file: a rename replaces the file's inode, and a
  // ConfigMap swaps the `..data` symlink next to it.
  if (inotify_add_watch(fd_, directory_.c_str(), kMask) < 0) {
    *error = "inotify watch " + directory_ + ": " + strerror(errno);
    return false;
  }
  WatchTarget();
  read_event_.reset(event_new(base_, fd_, EV_READ | EV_PERSIST, ReadCb, this));
  settle_event_.reset(evtimer_new(base_, SettleCb, this));
  if (!read_event_ || !settle_event_ ||
      event_add(read_event_.get(), nullptr) != 0) {
    *error = "cannot watch the config file";
    return false;
  }
  return true;
}

void ConfigWatch::ReadCb(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<ConfigWatch*>(arg);
  alignas(inotify_event) char buffer[4096];
  bool relevant = false;
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    for (char* p = buffer; p < buffer + n;) {
      auto* event = reinterpret_cast<inotify_event*>(p);
      std::string name = event->len > 0 ? event->name : "";
      // The file itself, or a ConfigMap's data directory swap.
      if (name == self->name_ || name == self->target_name_ ||
          name == "..data" || event->mask & IN_Q_OVERFLOW) {
        relevant = true;
      }
      p += sizeof(inotify_event) + event->len;
    }
  }
  if (relevant) evtimer_add(self->settle_event_.get(), &kSettle);
}

void ConfigWatch::SettleCb(evutil_socket_t, short, void* arg) {
  static_cast<ConfigWatch*>(arg)->Check();
}

void ConfigWatch::WatchTarget() {
  // A symlinked file is edited where it really lives: watch that directory
  // too (and follow it when a swap moves it).
  char* real = realpath(path_.c_str(), nullptr);
  if (real == nullptr) return;
  std::string target = real;
  free(real);
  size_t slash = target.rfind('/');
  std::string directory = target.substr(0, slash == 0 ? 1 : slash);
  target_name_ = target.substr(slash + 1);
  if (directory == target_directory_ || directory == directory_) return;
  if (target_watch_ >= 0) inotify_rm_watch(fd_, target_watch_);
  target_watch_ = inotify_add_watch(fd_, directory.c_str(), kMask);
  target_directory_ = directory;
}

void ConfigWatch::Check() {
  WatchTarget();
  std::string content;
  // A file being replaced may be missing for a moment; the next event
  // brings it back.
  if (!ReadWholeFile(path_, &content)) return;
  if (content == content_) return;
  content_ = content;
  changed_();
}

}  // namespace tandem::dispatcher
