// Runs activate/deactivate shell commands; see command.h. The process is made
// with posix_spawn, never fork, since tandem is one process with threads.
#include "health/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

extern char** environ;

#include "net/posix.h"

namespace tandem::health {
namespace {

using net::ErrorText;
using net::ToTimeval;

constexpr off_t kMaxOutputBytes = 4096;
// How often the fallback checks for the shell's exit without a pidfd.
constexpr timeval kPollInterval{0, 10 * 1000};
// How long the destructor waits for a killed shell before leaving it.
constexpr int kReapWaitMs = 1000;
constexpr const char* kShell = "/bin/sh";

// `fd` moved to a number above 2 if it sits on one, so that the dup2 calls
// onto 0, 1 and 2 in the child cannot overwrite it (tandem may run with
// standard streams closed); -1 stays -1.
int AboveStdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int error = errno;
  close(fd);
  errno = error;
  return moved;
}

// An unlinked file in $TMPDIR (else /tmp) for the command's output, or -1
// with `error` set. A file and not a pipe: a daemon the command leaves behind
// writes on after we stopped reading, which into a pipe would kill it.
int OpenOutputFile(std::string* error) {
  const char* dir = std::getenv("TMPDIR");
  if (dir == nullptr || *dir == '\0') dir = "/tmp";
  int fd = AboveStdio(open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd >= 0) return fd;
  // File systems without O_TMPFILE: create, then unlink at once.
  std::string path = std::string(dir) + "/tandem-command-XXXXXX";
  fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    *error = "cannot create an output file in " + std::string(dir) + ": " +
             ErrorText(errno);
    return -1;
  }
  if (unlink(path.c_str()) != 0) {
    *error = "cannot unlink " + path + ": " + ErrorText(errno);
    close(fd);
    return -1;
  }
  fd = AboveStdio(fd);
  if (fd < 0) *error = "cannot move the output file: " + ErrorText(errno);
  return fd;
}

// The last kMaxOutputBytes of the file; what could be read on an error.
std::string ReadTail(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return "";
  off_t offset = std::max<off_t>(0, st.st_size - kMaxOutputBytes);
  std::string tail(static_cast<size_t>(st.st_size - offset), '\0');
  size_t filled = 0;
  while (filled < tail.size()) {
    // pread leaves the offset the command's processes share untouched.
    ssize_t n = pread(fd, tail.data() + filled, tail.size() - filled,
                      offset + static_cast<off_t>(filled));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    filled += static_cast<size_t>(n);
  }
  tail.resize(filled);
  return tail;
}

int PidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

pid_t WaitNoHang(pid_t pid, int* status) {
  pid_t r;
  do {
    r = waitpid(pid, status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  return r;
}

// A file descriptor closed when it goes out of scope.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// posix_spawn's attribute objects, destroyed in one place.
class SpawnSetup {
 public:
  SpawnSetup() = default;
  ~SpawnSetup() {
    if (actions_ready_) posix_spawn_file_actions_destroy(&actions_);
    if (attr_ready_) posix_spawnattr_destroy(&attr_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  // 0 or an errno.
  int Init(int stdin_fd, int output_fd) {
    if (int e = posix_spawn_file_actions_init(&actions_)) return e;
    actions_ready_ = true;
    if (int e = posix_spawnattr_init(&attr_)) return e;
    attr_ready_ = true;
    if (int e = posix_spawn_file_actions_adddup2(&actions_, stdin_fd, 0))
      return e;
    if (int e = posix_spawn_file_actions_adddup2(&actions_, output_fd, 1))
      return e;
    if (int e = posix_spawn_file_actions_adddup2(&actions_, output_fd, 2))
      return e;
#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    // A daemon the command starts must not inherit tandem's sockets, even one
    // some library opened without close-on-exec.
    if (int e = posix_spawn_file_actions_addclosefrom_np(&actions_, 3))
      return e;
#endif
    // Its own process group, so a timeout can kill everything it started;
    // a clean signal state, since loop threads run with signals blocked and
    // tandem ignores SIGPIPE.
    short flags =
        POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (int e = posix_spawnattr_setflags(&attr_, flags)) return e;
    if (int e = posix_spawnattr_setpgroup(&attr_, 0)) return e;
    sigset_t none;
    sigset_t all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    if (int e = posix_spawnattr_setsigmask(&attr_, &none)) return e;
    if (int e = posix_spawnattr_setsigdefault(&attr_, &all)) return e;
    return 0;
  }

  const posix_spawn_file_actions_t* actions() const { return &actions_; }
  const posix_spawnattr_t* attr() const { return &attr_; }

 private:
  posix_spawn_file_actions_t actions_{};
  posix_spawnattr_t attr_{};
  bool actions_ready_ = false;
  bool attr_ready_ = false;
};

}  // namespace

std::string CommandResult::Describe() const {
  if (ok()) return "succeeded";
  if (timed_out) return "timed out";
  if (!error.empty()) return "could not start: " + error;
  if (signal != 0) return "killed by signal " + std::to_string(signal);
  return "exited with status " + std::to_string(exit_code);
}

std::string CommandResult::OutputTail() const {
  std::string text = output;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
    text.pop_back();
  if (text.size() > 512) text = "..." + text.substr(text.size() - 512);
  return text;
}

CommandRunner::CommandRunner(event_base* base) : base_(base) {
  timer_.reset(evtimer_new(base_, TimeoutCb, this));
  poll_.reset(event_new(base_, -1, EV_PERSIST, ExitCb, this));
  deliver_.reset(evtimer_new(base_, DeliverCb, this));
  if (!timer_ || !poll_ || !deliver_) throw std::bad_alloc();
}

CommandRunner::~CommandRunner() {
  if (running_ && pid_ > 0) {
    int status = 0;
    // A shell that already exited is reaped without touching the daemons it
    // left running; a live one is killed with all it started.
    if (WaitNoHang(pid_, &status) == 0) {
      KillGroup();
      if (pidfd_ >= 0) {
        pollfd pfd{pidfd_, POLLIN, 0};
        while (poll(&pfd, 1, kReapWaitMs) < 0 && errno == EINTR) {
        }
        (void)WaitNoHang(pid_, &status);
      } else {
        const timespec step{0, 1000 * 1000};
        for (int i = 0; i < kReapWaitMs && WaitNoHang(pid_, &status) == 0;
             ++i) {
          nanosleep(&step, nullptr);
        }
      }
    }
    pid_ = -1;
  }
  Release();
}

void CommandRunner::Run(const std::string& command,
                        std::chrono::milliseconds timeout, Callback done) {
  assert(!running_ && "CommandRunner::Run while a command is running");
  running_ = true;
  result_ = CommandResult{};
  done_ = std::move(done);
  started_ = std::chrono::steady_clock::now();

  timeval deadline = ToTimeval(timeout);
  std::string error;
  if (command.empty()) {
    error = "empty command";
  } else if (command.find('\0') != std::string::npos) {
    error = "command holds a NUL byte";
  } else if (evtimer_add(timer_.get(), &deadline) != 0) {
    error = "cannot arm the command's timer";
  } else if ((output_fd_ = OpenOutputFile(&error)) >= 0) {
    // Held until the exit is watched, so that the watch never depends on a
    // descriptor the spawn just gave back.
    UniqueFd null_fd(AboveStdio(open("/dev/null", O_RDONLY | O_CLOEXEC)));
    if (null_fd.get() < 0) {
      error = "cannot open /dev/null: " + ErrorText(errno);
    } else if ((error = Spawn(command, null_fd.get())).empty()) {
      WatchExit();
      return;
    }
  }
  result_.error = std::move(error);
  Release();
  // The callback must not run inside Run: deliver it from the loop.
  event_active(deliver_.get(), EV_TIMEOUT, 1);
}

std::string CommandRunner::Spawn(const std::string& command, int stdin_fd) {
  SpawnSetup setup;
  int e = setup.Init(stdin_fd, output_fd_);
  if (e == 0) {
    std::string arg0 = "sh";
    std::string arg1 = "-c";
    std::string script = command;
    char* argv[] = {arg0.data(), arg1.data(), script.data(), nullptr};
    pid_t pid = -1;
    e = posix_spawn(&pid, kShell, setup.actions(), setup.attr(), argv, environ);
    if (e == 0) pid_ = pid;
  }
  if (e != 0) {
    return std::string("cannot spawn ") + kShell + ": " + ErrorText(e);
  }
  return "";
}

void CommandRunner::WatchExit() {
  pidfd_ = PidfdOpen(pid_);
  if (pidfd_ >= 0) {
    exit_.reset(event_new(base_, pidfd_, EV_READ | EV_PERSIST, ExitCb, this));
    if (exit_ && event_add(exit_.get(), nullptr) == 0) return;
    exit_.reset();
    close(pidfd_);
    pidfd_ = -1;
  }
  // No pidfd (Linux before 5.3, or no descriptor to spare): poll.
  timeval interval = kPollInterval;
  if (evtimer_add(poll_.get(), &interval) == 0) return;
  // Nothing can tell us when it ends: end it now rather than lose track.
  result_.error = "cannot watch the command for its exit";
  KillGroup();
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  pid_ = -1;
  event_del(timer_.get());
  event_active(deliver_.get(), EV_TIMEOUT, 1);
}

bool CommandRunner::TryReap() {
  int status = 0;
  pid_t r = WaitNoHang(pid_, &status);
  if (r == 0) return false;
  if (r < 0) {
    // Only a SIGCHLD set to SIG_IGN lets the kernel reap it before us.
    result_.error = "its exit status was lost: " + ErrorText(errno);
  } else if (WIFEXITED(status)) {
    result_.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result_.signal = WTERMSIG(status);
  }
  pid_ = -1;
  Finish();
  return true;
}

void CommandRunner::OnTimeout() {
  // It may have exited in the same loop iteration; then its daemons live on.
  if (TryReap()) return;
  result_.timed_out = true;
  KillGroup();
  // The exit watch reaps it and delivers the result.
}

void CommandRunner::KillGroup() {
  // Never kill(-1) or kill(0): only the group of the shell we spawned.
  if (pid_ > 1) (void)kill(-pid_, SIGKILL);
}

void CommandRunner::Finish() {
  if (output_fd_ >= 0) result_.output = ReadTail(output_fd_);
  Release();
  running_ = false;
  CommandResult result = std::move(result_);
  if (result.timed_out) result.exit_code = -1;
  result.duration = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started_);
  Callback done = std::move(done_);
  done_ = nullptr;
  // Last: `done` may Run again or destroy this runner.
  if (done) done(result);
}

void CommandRunner::Release() {
  event_del(timer_.get());
  event_del(poll_.get());
  event_del(deliver_.get());
  exit_.reset();
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  if (output_fd_ >= 0) close(output_fd_);
  output_fd_ = -1;
}

void CommandRunner::ExitCb(evutil_socket_t, short, void* arg) {
  static_cast<CommandRunner*>(arg)->TryReap();
}

void CommandRunner::TimeoutCb(evutil_socket_t, short, void* arg) {
  static_cast<CommandRunner*>(arg)->OnTimeout();
}

void CommandRunner::DeliverCb(evutil_socket_t, short, void* arg) {
  static_cast<CommandRunner*>(arg)->Finish();
}

}  // namespace tandem::health
