// tandem-worker: the demo compute worker as a process, for tests, benchmarks
// and cold-standby activation; one event loop per thread, each with its own
// SO_REUSEPORT listener on the same port.
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "demo/demo_worker.h"
#include "net/event_ptr.h"

namespace {

using tandem::demo::DemoWorker;
using tandem::demo::DemoWorkerShared;
using tandem::demo::DemoWorkerStart;

constexpr unsigned kMaxThreads = 256;

constexpr char kUsage[] =
    R"(usage: tandem-worker [--listen ADDRESS:PORT] [--name NAME]
                     [--port-file PATH] [--threads N]

The demo compute worker of tandem as a process.

  --listen ADDRESS:PORT  where to listen (default 127.0.0.1:0; port 0 picks a
                         free port)
  --name NAME            the name sent in X-Worker and bodies, [A-Za-z0-9._-]
                         (default "worker")
  --port-file PATH       also write the bound port there, atomically (rename)
  --threads N            event loops, each with an SO_REUSEPORT listener on
                         the same port (default 1)
  --help                 print this and exit

Prints "listening on ADDRESS:PORT" once it accepts connections, and exits 0 on
SIGTERM or SIGINT.

Endpoints: GET / | GET /healthz | POST /control/health?status=N |
POST /control/fail?status=N[&percent=P] | POST /control/delay?ms=N[&percent=P] | GET|POST /compute?rounds=N | GET /bytes?n=N[&chunked=1] | POST|PUT /sink |
GET /status/CODE | GET /sleep?ms=N | GET /stats | GET /echo (WebSocket upgrade)
)";

struct Options {
  std::string listen = "127.0.0.1:0";
  std::string name = "worker";
  std::string port_file;
  unsigned threads = 1;
};

// Fills `options` from argv. Returns the exit code when the process should
// stop here (after --help, or a usage error already printed).
std::optional<int> ParseArguments(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string_view key = arg;
    std::optional<std::string_view> value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != arg.npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (key != "--listen" && key != "--name" && key != "--port-file" &&
        key != "--threads") {
      std::fprintf(stderr, "tandem-worker: unknown option %s (see --help)\n",
                   argv[i]);
      return 2;
    }
    if (!value) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "tandem-worker: %s needs a value\n", argv[i]);
        return 2;
      }
      value = argv[++i];
    }
    if (key == "--listen") {
      options.listen = *value;
    } else if (key == "--name") {
      options.name = *value;
    } else if (key == "--port-file") {
      options.port_file = *value;
    } else {
      std::string text(*value);
      char* end = nullptr;
      errno = 0;
      unsigned long threads = std::strtoul(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || errno != 0 || threads < 1 ||
          threads > kMaxThreads) {
        std::fprintf(stderr,
                     "tandem-worker: --threads must be a number from 1 to %u\n",
                     kMaxThreads);
        return 2;
      }
      options.threads = static_cast<unsigned>(threads);
    }
  }
  return std::nullopt;
}

// `listen` ("127.0.0.1:0", "[::1]:0"; Start has checked it has a port) with
// `port` in place of its own.
std::string WithPort(const std::string& listen, uint16_t port) {
  return listen.substr(0, listen.rfind(':')) + ":" + std::to_string(port);
}

// Writes the port to PATH.tmp.PID and renames it over PATH, so a reader sees
// either no file or the whole number.
bool WritePortFile(const std::string& path, uint16_t port) {
  std::string temporary = path + ".tmp." + std::to_string(getpid());
  std::FILE* file = std::fopen(temporary.c_str(), "w");
  if (file == nullptr) {
    std::fprintf(stderr, "tandem-worker: %s: %s\n", temporary.c_str(),
                 std::strerror(errno));
    return false;
  }
  bool written = std::fprintf(file, "%u\n", port) > 0;
  if (std::fclose(file) != 0 || !written) {
    std::fprintf(stderr, "tandem-worker: cannot write %s\n", temporary.c_str());
    std::remove(temporary.c_str());
    return false;
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "tandem-worker: rename to %s: %s\n", path.c_str(),
                 std::strerror(errno));
    std::remove(temporary.c_str());
    return false;
  }
  return true;
}

// Members are destroyed bottom-up: the thread is joined before, and the
// worker freed before its base.
struct Loop {
  tandem::net::EventBasePtr base;
  std::unique_ptr<DemoWorker> worker;
  std::thread thread;
};

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (std::optional<int> exit_code = ParseArguments(argc, argv, options)) {
    return *exit_code;
  }

  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    std::perror("tandem-worker: signal(SIGPIPE)");
    return 1;
  }
  // Only the main thread takes the stop signals, through sigwait; the loop
  // threads inherit the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (int error = pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr)) {
    std::fprintf(stderr, "tandem-worker: pthread_sigmask: %s\n",
                 std::strerror(error));
    return 1;
  }
  // event_base_loopexit() from the main thread must wake the loop threads.
  if (evthread_use_pthreads() != 0) {
    std::fputs("tandem-worker: evthread_use_pthreads failed\n", stderr);
    return 1;
  }

  auto shared = std::make_shared<DemoWorkerShared>();
  std::vector<Loop> loops(options.threads);
  std::string address = options.listen;
  for (Loop& loop : loops) {
    loop.base = tandem::net::NewEventBase(tandem::net::BaseLocking::kLocked);
    if (!loop.base) {
      std::fputs("tandem-worker: cannot create an event base\n", stderr);
      return 1;
    }
    loop.worker =
        std::make_unique<DemoWorker>(loop.base.get(), options.name, shared);
    DemoWorkerStart started =
        loop.worker->Start(address, /*reuse_port=*/options.threads > 1);
    if (!started.ok()) {
      std::fprintf(stderr, "tandem-worker: %s\n", started.error.c_str());
      return 1;
    }
    // Every further loop binds the port the first one got.
    address = WithPort(options.listen, started.port);
  }
  if (!options.port_file.empty() &&
      !WritePortFile(options.port_file, loops.front().worker->port())) {
    return 1;
  }
  std::printf("listening on %s\n", address.c_str());
  std::fflush(stdout);

  std::atomic<bool> failed = false;
  for (Loop& loop : loops) {
    loop.thread = std::thread([&loop, &failed] {
      if (event_base_dispatch(loop.base.get()) == -1) {
        std::fputs("tandem-worker: event loop failed\n", stderr);
        failed = true;
        kill(getpid(), SIGTERM);
      }
    });
  }

  int signal_number = 0;
  if (int error = sigwait(&stop_signals, &signal_number)) {
    std::fprintf(stderr, "tandem-worker: sigwait: %s\n", std::strerror(error));
    failed = true;
  }
  for (Loop& loop : loops) {
    if (event_base_loopexit(loop.base.get(), nullptr) != 0) {
      // The loop would never return to be joined.
      std::fputs("tandem-worker: event_base_loopexit failed\n", stderr);
      std::_Exit(1);
    }
  }
  for (Loop& loop : loops) loop.thread.join();
  loops.clear();
  return failed ? 1 : 0;
}
