// `tandem --demo`; see demo.h.
#include "demo/demo.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>

namespace tandem::demo {

DemoWorkers::~DemoWorkers() {
  if (base_) event_base_loopbreak(base_.get());
  if (thread_.joinable()) thread_.join();
  workers_.clear();
}

bool DemoWorkers::Start(size_t count, std::string* error) {
  base_ = net::NewEventBase(net::BaseLocking::kLocked);
  if (!base_) {
    *error = "cannot create the demo workers' event loop";
    return false;
  }
  for (size_t i = 0; i < count; ++i) {
    auto worker = std::make_unique<DemoWorker>(
        base_.get(), "worker-" + std::to_string(i + 1));
    DemoWorkerStart started = worker->Start("127.0.0.1:0");
    if (!started.ok()) {
      *error = "demo worker: " + started.error;
      return false;
    }
    ports_.push_back(started.port);
    workers_.push_back(std::move(worker));
  }
  thread_ = std::thread([base = base_.get()] {
    // Runs until the destructor breaks the loop; the persistent listeners
    // keep it from returning early.
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
  });
  return true;
}

DemoCertificate::~DemoCertificate() {
  if (!cert_file_.empty()) unlink(cert_file_.c_str());
  if (!key_file_.empty()) unlink(key_file_.c_str());
  if (!directory_.empty()) rmdir(directory_.c_str());
}

bool DemoCertificate::Create(std::string* error) {
  char pattern[] = "/tmp/tandem-demo-XXXXXX";
  if (mkdtemp(pattern) == nullptr) {
    *error = "cannot create a temporary directory for the demo certificate";
    return false;
  }
  directory_ = pattern;
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  bool ok = key != nullptr && cert != nullptr;
  if (ok) {
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 30L * 24 * 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(
        name, "CN", MBSTRING_ASC,
        reinterpret_cast<const unsigned char*>("tandem demo"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509V3_CTX context;
    X509V3_set_ctx_nodb(&context);
    X509V3_set_ctx(&context, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* san = X509V3_EXT_conf_nid(
        nullptr, &context, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    ok = san != nullptr && X509_add_ext(cert, san, -1) == 1 &&
         X509_sign(cert, key, EVP_sha256()) > 0;
    X509_EXTENSION_free(san);
  }
  cert_file_ = directory_ + "/demo.pem";
  key_file_ = directory_ + "/demo.key";
  if (ok) {
    FILE* out = std::fopen(cert_file_.c_str(), "w");
    ok = out != nullptr && PEM_write_X509(out, cert) == 1;
    if (out != nullptr) std::fclose(out);
  }
  if (ok) {
    FILE* out = std::fopen(key_file_.c_str(), "w");
    ok = out != nullptr && PEM_write_PrivateKey(out, key, nullptr, nullptr, 0,
                                                nullptr, nullptr) == 1;
    if (out != nullptr) std::fclose(out);
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  if (!ok) *error = "cannot make the demo certificate";
  return ok;
}

std::string DemoConfig(const std::vector<uint16_t>& ports,
                       const DemoCertificate* certificate) {
  std::string config =
      R"(# The embedded demo: two compute workers and a hot backup, in process.
[global]
threads = 0
grace_period = "5s"
access_log = "stdout"

[admin]
listen = "127.0.0.1:9901"
token = "demo"

[listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"

%TLS%
[clusters.compute]
policy = "primary-backup"
algorithm = "round-robin"
min_active = 2
retries = 2
connect_timeout = "1s"
request_timeout = "30s"

[clusters.compute.health]
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
)";
  std::string tls;
  if (certificate != nullptr) {
    tls =
        "[listeners.web-tls]\nlisten = \"127.0.0.1:8443\"\ncluster = "
        "\"compute\"\n"
        "tls_cert = \"" +
        certificate->cert_file() + "\"\ntls_key = \"" +
        certificate->key_file() + "\"\n";
  }
  config.replace(config.find("%TLS%"), 5, tls);
  for (size_t i = 0; i < ports.size(); ++i) {
    bool backup = i + 1 == ports.size() && ports.size() > 1;
    config += "\n[[clusters.compute.backends]]\naddress = \"127.0.0.1:" +
              std::to_string(ports[i]) + "\"\n";
    config += backup ? "role = \"backup\"\nstandby = \"hot\"\n"
                     : "role = \"primary\"\n";
  }
  return config;
}

std::string DemoBanner() {
  return R"(
tandem demo: two compute workers and a hot backup behind http://127.0.0.1:8080

  curl http://127.0.0.1:8080/                      # which worker answered
  curl -k https://127.0.0.1:8443/                  # the same over TLS (self-signed)
  curl 'http://127.0.0.1:8080/compute?rounds=50000' # real CPU work per request
  curl http://127.0.0.1:9901/status                # state of every backend (JSON)
  curl http://127.0.0.1:9901/metrics               # Prometheus metrics
  open http://127.0.0.1:9901/                      # the dashboard

Ctrl-C stops it.
)";
}

}  // namespace tandem::demo
