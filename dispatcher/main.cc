// tandem's command line: run a config, check it, or run the embedded demo.
#include <event2/thread.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "conf/load.h"
#include "demo/demo.h"
#include "dispatcher/server.h"
#include "net/log.h"

namespace {

constexpr char kUsage[] = R"(Usage: tandem -c FILE [--check]
       tandem --demo
       tandem --version | --help

  -c, --config FILE  run with the TOML config FILE (reloaded on SIGHUP)
      --check        validate FILE: exit 0, or print every error and exit 1
      --demo         run the embedded demo: built-in compute workers behind
                     127.0.0.1:8080, dashboard on http://127.0.0.1:9901/
      --version      print the version
  -h, --help         this text

Signals: SIGHUP reloads the config; SIGTERM/SIGINT drain and stop.
)";

int Check(const std::string& path) {
  tandem::conf::LoadResult result = tandem::conf::LoadConfigFile(path);
  for (const auto& warning : result.warnings) {
    std::fprintf(stderr, "%s (warning)\n", warning.ToString().c_str());
  }
  if (!result.ok()) {
    for (const auto& error : result.errors)
      std::fprintf(stderr, "%s\n", error.ToString().c_str());
    std::fprintf(stderr, "%s: %zu error%s\n", path.c_str(),
                 result.errors.size(), result.errors.size() == 1 ? "" : "s");
    return 1;
  }
  std::printf("%s: ok\n", path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any event base exists, so every base can be woken from another
  // thread (the demo workers' loop is stopped that way).
  if (evthread_use_pthreads() != 0) {
    std::fprintf(stderr, "tandem: libevent has no thread support\n");
    return 1;
  }
  std::string config_path;
  bool check = false;
  bool demo = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-c" || arg == "--config") && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--check") {
      check = true;
    } else if (arg == "--demo") {
      demo = true;
    } else if (arg == "--version") {
      std::printf("tandem %s\n", tandem::dispatcher::kVersion);
      return 0;
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "tandem: unknown argument '%s'\n\n%s", arg.c_str(),
                   kUsage);
      return 2;
    }
  }
  if (demo) {
    tandem::demo::DemoWorkers workers;
    std::string error;
    if (!workers.Start(3, &error)) {
      std::fprintf(stderr, "tandem: %s\n", error.c_str());
      return 1;
    }
    tandem::demo::DemoCertificate certificate;
    bool https = certificate.Create(&error);
    if (!https)
      std::fprintf(stderr, "tandem: %s; the demo runs without HTTPS\n",
                   error.c_str());
    tandem::dispatcher::ServerOptions options;
    options.config_path = "(demo)";
    options.config_text = tandem::demo::DemoConfig(
        workers.ports(), https ? &certificate : nullptr);
    std::fputs(tandem::demo::DemoBanner().c_str(), stderr);
    return tandem::dispatcher::Server(options).Run();
  }
  if (config_path.empty()) {
    std::fprintf(stderr,
                 "tandem: no config given (-c FILE), or try --demo\n\n%s",
                 kUsage);
    return 2;
  }
  if (check) return Check(config_path);
  tandem::dispatcher::ServerOptions options;
  options.config_path = config_path;
  return tandem::dispatcher::Server(options).Run();
}
