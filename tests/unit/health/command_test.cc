// Tests of the cold-standby command runner: real /bin/sh processes on the
// test's event loop, with pid files the commands write for the checks.
#include "health/command.h"

#include <doctest/doctest.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "tests/unit/health/test_loop.h"

namespace tandem::health {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kBound{10'000};
constexpr milliseconds kTimeout{10'000};

using testing::Loop;

// Runs `command` to completion on a fresh runner.
CommandResult RunCommand(const std::string& command,
                         milliseconds timeout = kTimeout) {
  Loop loop;
  CommandRunner runner(loop.base());
  int calls = 0;
  CommandResult result;
  runner.Run(command, timeout, [&](const CommandResult& r) {
    ++calls;
    result = r;
    loop.Stop();
  });
  CHECK(calls == 0);  // never from Run itself
  CHECK(runner.running());
  REQUIRE(loop.Run());
  CHECK(calls == 1);
  CHECK_FALSE(runner.running());
  return result;
}

// A path in a fresh temporary directory, removed with it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    path_ = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
            "/command_test-XXXXXX";
    REQUIRE(mkdtemp(path_.data()) != nullptr);
  }
  ~TempDir() { (void)!std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

pid_t ReadPid(const std::string& path) {
  std::ifstream in(path);
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

// True once `pid` has exited (gone, or a zombie), waiting at most kBound.
bool WaitDead(pid_t pid) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return errno == ESRCH;
  pollfd exited{pidfd, POLLIN, 0};
  int ready = poll(&exited, 1, static_cast<int>(kBound.count()));
  close(pidfd);
  return ready == 1;
}

bool Alive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() &&
         line[paren + 2] != 'Z';
}

// The n-th (0-based) file descriptor number not in use.
int FreeFd(int n) {
  for (int fd = 0;; ++fd) {
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF && n-- == 0) return fd;
  }
}

// Lowers the soft limit on open files for the scope, so that only the first
// `spare` free descriptors can be opened.
class FdLimit {
 public:
  explicit FdLimit(int spare) {
    REQUIRE(getrlimit(RLIMIT_NOFILE, &saved_) == 0);
    rlimit lowered = saved_;
    lowered.rlim_cur =
        static_cast<rlim_t>(spare == 0 ? FreeFd(0) : FreeFd(spare - 1) + 1);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &lowered) == 0);
  }
  ~FdLimit() { CHECK(setrlimit(RLIMIT_NOFILE, &saved_) == 0); }

 private:
  rlimit saved_{};
};

TEST_CASE("a result says how the command ended, and the end of its output") {
  CommandResult result;
  result.exit_code = 0;
  result.output = "started\n";
  CHECK(result.Describe() == "succeeded");
  CHECK(result.OutputTail() == "started");
  result.exit_code = 1;
  CHECK(result.Describe() == "exited with status 1");
  result.exit_code = -1;
  result.signal = 9;
  CHECK(result.Describe() == "killed by signal 9");
  result.timed_out = true;
  CHECK(result.Describe() == "timed out");
  result.timed_out = false;
  result.signal = 0;
  result.error = "no process to spare";
  CHECK(result.Describe() == "could not start: no process to spare");

  result.output = std::string(100, 'a') + std::string(512, 'b') + "\r\n";
  CHECK(result.OutputTail() == "..." + std::string(512, 'b'));
}

TEST_CASE("a command that exits 0 is ok") {
  CommandResult result = RunCommand("true");
  CHECK(result.ok());
  CHECK(result.exit_code == 0);
  CHECK_FALSE(result.timed_out);
  CHECK(result.signal == 0);
  CHECK(result.error.empty());
  CHECK(result.output.empty());
  CHECK(result.duration < kBound);
}

TEST_CASE("a command that exits 3 is not ok and reports 3") {
  CommandResult result = RunCommand("echo failing; exit 3");
  CHECK_FALSE(result.ok());
  CHECK(result.exit_code == 3);
  CHECK_FALSE(result.timed_out);
  CHECK(result.signal == 0);
  CHECK(result.error.empty());
  CHECK(result.output == "failing\n");
}

TEST_CASE("stdout and stderr are captured together, in order") {
  CommandResult result = RunCommand("echo out; echo err >&2; echo again");
  CHECK(result.ok());
  CHECK(result.output == "out\nerr\nagain\n");
}

TEST_CASE("the output keeps only its last 4 KiB") {
  CommandResult result = RunCommand("seq 1 5000");
  CHECK(result.ok());
  std::ostringstream all;
  for (int i = 1; i <= 5000; ++i) all << i << "\n";
  std::string expected = all.str();
  REQUIRE(expected.size() > 4096);
  CHECK(result.output.size() == 4096);
  CHECK(result.output == expected.substr(expected.size() - 4096));
}

TEST_CASE("stdin is /dev/null") {
  CommandResult result = RunCommand("cat; echo done");
  CHECK(result.ok());
  CHECK(result.output == "done\n");
}

TEST_CASE("a command killed by a signal reports the signal") {
  CommandResult result = RunCommand("kill -TERM $$");
  CHECK_FALSE(result.ok());
  CHECK(result.exit_code == -1);
  CHECK(result.signal == SIGTERM);
  CHECK_FALSE(result.timed_out);
}

TEST_CASE("a command past its timeout is killed with its process group") {
  TempDir dir;
  std::string pid_file = dir.File("sleep.pid");
  auto started = std::chrono::steady_clock::now();
  CommandResult result =
      RunCommand("sleep 30 & echo $! > " + pid_file + "; echo waiting; wait",
                 milliseconds(200));
  CHECK(std::chrono::steady_clock::now() - started < milliseconds(5000));
  CHECK_FALSE(result.ok());
  CHECK(result.timed_out);
  CHECK(result.exit_code == -1);
  CHECK(result.signal == SIGKILL);
  // libevent's timers run on the coarse monotonic clock (a few ms a tick).
  CHECK(result.duration >= milliseconds(190));
  CHECK(result.output == "waiting\n");
  pid_t sleeper = ReadPid(pid_file);
  REQUIRE(sleeper > 0);
  CHECK(WaitDead(sleeper));
}

TEST_CASE("a plain sleep past its timeout finishes fast") {
  auto started = std::chrono::steady_clock::now();
  CommandResult result = RunCommand("sleep 30", milliseconds(200));
  CHECK(std::chrono::steady_clock::now() - started < milliseconds(5000));
  CHECK(result.timed_out);
  CHECK(result.exit_code == -1);
}

TEST_CASE(
    "completion is the shell's exit, not the end of a background daemon's "
    "output") {
  TempDir dir;
  std::string pid_file = dir.File("daemon.pid");
  auto started = std::chrono::steady_clock::now();
  CommandResult result = RunCommand(
      "sleep 5 & echo $! > " + pid_file + "; echo started", milliseconds(4000));
  CHECK(std::chrono::steady_clock::now() - started < milliseconds(3000));
  CHECK(result.ok());
  CHECK(result.output == "started\n");
  pid_t daemon = ReadPid(pid_file);
  REQUIRE(daemon > 0);
  // Left running: only a timeout kills the group.
  CHECK(Alive(daemon));
  CHECK(kill(daemon, SIGKILL) == 0);
  CHECK(WaitDead(daemon));
}

TEST_CASE("a command that cannot start reports why, from the loop") {
  CommandResult empty = RunCommand("");
  CHECK_FALSE(empty.ok());
  CHECK(empty.error == "empty command");
  CHECK(empty.exit_code == -1);

  CommandResult nul = RunCommand(std::string("echo a\0b", 8));
  CHECK_FALSE(nul.ok());
  CHECK(nul.error == "command holds a NUL byte");

  Loop loop;
  CommandRunner runner(loop.base());
  CommandResult result;
  int calls = 0;
  {
    FdLimit limit(0);  // not even the output file can be opened
    runner.Run("true", kTimeout, [&](const CommandResult& r) {
      ++calls;
      result = r;
      loop.Stop();
    });
  }
  CHECK(calls == 0);
  REQUIRE(loop.Run());
  CHECK(calls == 1);
  CHECK_FALSE(result.ok());
  CHECK(result.exit_code == -1);
  CHECK(result.error.find("cannot create an output file") != std::string::npos);
}

TEST_CASE("without a pidfd, the exit is found by polling") {
  Loop loop;
  CommandRunner runner(loop.base());
  CommandResult result;
  {
    // The output file and /dev/null fit; pidfd_open does not.
    FdLimit limit(2);
    runner.Run("echo polled; exit 7", kTimeout, [&](const CommandResult& r) {
      result = r;
      loop.Stop();
    });
  }
  REQUIRE(loop.Run());
  CHECK(result.error.empty());
  CHECK(result.exit_code == 7);
  CHECK(result.output == "polled\n");
}

TEST_CASE(
    "the command starts with a clean signal state and no inherited "
    "descriptors") {
  // As in tandem: SIGPIPE ignored, signals blocked on loop threads, and a
  // descriptor some library left without close-on-exec.
  struct sigaction ignore {};
  struct sigaction saved_pipe {};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(sigaction(SIGPIPE, &ignore, &saved_pipe) == 0);
  sigset_t block;
  sigset_t saved_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGHUP);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &block, &saved_mask) == 0);
  int leaked = fcntl(STDERR_FILENO, F_DUPFD, 100);  // no FD_CLOEXEC
  REQUIRE(leaked >= 100);

  CommandResult result = RunCommand(
      "test -e /proc/$$/fd/" + std::to_string(leaked) +
      " && echo leaked; exec grep -E '^Sig(Blk|Ign)' /proc/self/status");

  close(leaked);
  REQUIRE(pthread_sigmask(SIG_SETMASK, &saved_mask, nullptr) == 0);
  REQUIRE(sigaction(SIGPIPE, &saved_pipe, nullptr) == 0);
  CHECK(result.ok());
  // Read by the process the shell became (a shell blocks signals while it
  // waits for a child). glibc's posix_spawn leaves its two internal real-time
  // signals (32 and 33) ignored; no standard signal may be ignored or blocked.
  CHECK(result.output.find("leaked") == std::string::npos);
  unsigned long long blocked = 0;
  unsigned long long ignored = 0;
  REQUIRE(std::sscanf(result.output.c_str(), "SigBlk:\t%llx\nSigIgn:\t%llx",
                      &blocked, &ignored) == 2);
  CAPTURE(result.output);
  CHECK(blocked == 0);
  CHECK((ignored & 0x7fffffffULL) == 0);  // signals 1-31
}

TEST_CASE("destroying a running runner kills and reaps, without a callback") {
  TempDir dir;
  std::string pid_file = dir.File("pids");
  Loop loop;
  auto runner = std::make_unique<CommandRunner>(loop.base());
  int calls = 0;
  runner->Run("sleep 30 & echo $! $$ > " + pid_file + ".tmp; mv " + pid_file +
                  ".tmp " + pid_file + "; wait",
              kTimeout, [&](const CommandResult&) { ++calls; });
  // Wait (bounded) for the pid file, running the loop meanwhile.
  auto deadline = std::chrono::steady_clock::now() + kBound;
  while (access(pid_file.c_str(), F_OK) != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    loop.Run(milliseconds(10));
  }
  std::ifstream in(pid_file);
  long sleeper = 0;
  long shell = 0;
  in >> sleeper >> shell;
  REQUIRE(sleeper > 0);
  REQUIRE(shell > 0);

  runner.reset();
  CHECK(calls == 0);
  // The shell was reaped by the runner: no zombie is left to this process.
  int status = 0;
  CHECK(waitpid(static_cast<pid_t>(shell), &status, WNOHANG) == -1);
  CHECK(errno == ECHILD);
  CHECK(WaitDead(static_cast<pid_t>(sleeper)));
  CHECK_FALSE(loop.Run(milliseconds(50)));
  CHECK(calls == 0);
}

TEST_CASE("the callback may run the next command or destroy the runner") {
  Loop loop;
  auto runner = std::make_unique<CommandRunner>(loop.base());
  std::string outputs;
  runner->Run("echo one", kTimeout, [&](const CommandResult& first) {
    outputs += first.output;
    runner->Run("echo two", kTimeout, [&](const CommandResult& second) {
      outputs += second.output;
      runner.reset();
      loop.Stop();
    });
  });
  REQUIRE(loop.Run());
  CHECK(outputs == "one\ntwo\n");
  CHECK(runner == nullptr);
}

}  // namespace
}  // namespace tandem::health
