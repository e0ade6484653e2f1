// Runs a cold standby's activate or deactivate shell command off the event
// loop: posix_spawn into its own process group, completion on the shell's
// exit (pidfd, else a waitpid poll), output kept in an unlinked file.
#pragma once

#include <event2/event.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace tandem::health {

struct CommandResult {
  int exit_code = -1;  // -1 when killed, timed out or not started
  bool timed_out = false;
  int signal = 0;      // the signal that ended it, if any
  std::string output;  // the last 4 KiB of its stdout+stderr
  std::chrono::milliseconds duration{0};
  // Why it could not start (or, rarely, why its exit status is unknown);
  // empty otherwise.
  std::string error;
  bool ok() const { return error.empty() && !timed_out && exit_code == 0; }
  // How it ended, for logs and events: "succeeded", "timed out", "could not
  // start: <why>", "killed by signal 9", "exited with status 1".
  std::string Describe() const;
  // The output for one log field: its last 512 bytes (after "..." when cut),
  // final line ends dropped.
  std::string OutputTail() const;
};

// Runs one command at a time on an event loop; every member is called on that
// loop's thread. Completion is the shell's exit, not the end of its output:
// a daemon the command leaves running in the background keeps the output
// file open (it is unlinked, and grows with whatever that daemon writes, so
// commands should redirect their daemons' output) and keeps running.
class CommandRunner {
 public:
  using Callback = std::function<void(const CommandResult&)>;

  // `base` must outlive the runner. Throws std::bad_alloc when libevent
  // cannot allocate its events.
  explicit CommandRunner(event_base* base);
  // Kills a running command's process group with SIGKILL and reaps the shell
  // (waiting at most a second for it to die); the callback is not called.
  ~CommandRunner();

  CommandRunner(const CommandRunner&) = delete;
  CommandRunner& operator=(const CommandRunner&) = delete;

  // Runs `/bin/sh -c command` in a new process group, stdin from /dev/null,
  // stdout and stderr to a temporary file, signal mask and dispositions reset,
  // file descriptors above 2 closed. Requires !running(). `done` is called
  // once, on the loop, never from Run itself: when the shell exits (exit_code
  // or signal set); when `timeout` passes first (the whole process group is
  // killed with SIGKILL, timed_out set); or when the command could not start
  // (error set: an empty command, one holding a NUL byte, no file descriptor
  // or process to spare). From `done`, the caller may Run again or destroy
  // the runner.
  void Run(const std::string& command, std::chrono::milliseconds timeout,
           Callback done);
  bool running() const { return running_; }

 private:
  struct EventDeleter {
    void operator()(event* ev) const { event_free(ev); }
  };
  using EventPtr = std::unique_ptr<event, EventDeleter>;

  // Spawns the shell with output to output_fd_; "" on success, else why not.
  std::string Spawn(const std::string& command, int stdin_fd);
  // Arms exit detection: a pidfd event, else the waitpid poll timer.
  void WatchExit();
  // Reaps the shell if it has exited; true when it has (and the result is
  // delivered, which may destroy this runner).
  bool TryReap();
  void OnTimeout();
  // SIGKILL to the shell's process group (pid_ names it).
  void KillGroup();
  // Collects the output, frees what the run held, then calls the callback.
  void Finish();
  void Release();

  static void ExitCb(evutil_socket_t fd, short events, void* arg);
  static void TimeoutCb(evutil_socket_t fd, short events, void* arg);
  static void DeliverCb(evutil_socket_t fd, short events, void* arg);

  event_base* base_;
  EventPtr timer_;    // the command's deadline
  EventPtr poll_;     // the waitpid poll, when there is no pidfd
  EventPtr deliver_;  // delivers a failure to start, from the loop
  EventPtr exit_;     // readable pidfd: the shell exited

  bool running_ = false;
  pid_t pid_ = -1;  // the shell, also its process group; -1 once reaped
  int pidfd_ = -1;
  int output_fd_ = -1;  // the unlinked output file
  std::chrono::steady_clock::time_point started_;
  CommandResult result_;
  Callback done_;
};

}  // namespace tandem::health
