// [listeners.NAME]: where clients connect, their limits, and TLS with one
// certificate (tls_cert, tls_key) or several chosen by SNI
// ([[listeners.NAME.certificates]]).
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "conf/priority.h"
#include "conf/readers.h"
#include "conf/tls_files.h"

namespace tandem::conf {
namespace {

constexpr std::string_view kListen = "listen";
constexpr std::string_view kCluster = "cluster";
constexpr std::string_view kTlsCert = "tls_cert";
constexpr std::string_view kTlsKey = "tls_key";
constexpr std::string_view kCertificates = "certificates";
constexpr std::string_view kCert = "cert";  // of a certificate entry
constexpr std::string_view kKey = "key";

// Reports a certificate and key that do not make a pair, at `at` under
// `key`; true when they do.
bool UsablePair(TableReader& reader, Position at, const std::string& key,
                const Certificate& certificate) {
  std::string error;
  if (CheckCertificatePair(certificate.cert_file, certificate.key_file,
                           &error)) {
    return true;
  }
  reader.context().Error(at, key, std::move(error));
  return false;
}

constexpr std::string_view kNeedsBoth = "a certificate needs both cert and key";

std::span<const Key<Certificate>> CertificateKeys() {
  static const Key<Certificate> keys[] = {
      FileKey(kCert, &Certificate::cert_file).Required(kNeedsBoth),
      FileKey(kKey, &Certificate::key_file).Required(kNeedsBoth),
  };
  return keys;
}

// [[listeners.NAME.certificates]], instead of tls_cert and tls_key.
bool ReadCertificates(TableReader& reader, std::string_view key,
                      Listener& listener) {
  const std::string path = reader.KeyPath(key);
  if (reader.Has(kTlsCert) || reader.Has(kTlsKey)) {
    reader.Error(
        *reader.Find(key), key,
        "give either tls_cert and tls_key or [[" + path + "]], not both");
  }
  return ReadTables(reader, key, CertificateSchema(),
                    "needs at least one certificate",
                    [&](size_t, TableReader& entry) {
                      Certificate certificate;
                      ReadKeys(entry, CertificateKeys(), certificate);
                      if (entry.Good(kCert) && entry.Good(kKey) &&
                          UsablePair(entry, entry.PositionOf(kCert),
                                     entry.path(), certificate)) {
                        listener.certificates.push_back(std::move(certificate));
                      }
                    });
}

// tls_cert and tls_key name one certificate, read as a pair at tls_cert; the
// outcome of tls_key is the pair's. Either alone is an error; beside
// [[certificates]] neither is read (the error is reported there).
bool ReadCertificatePair(TableReader& reader, std::string_view key,
                         Listener& listener) {
  if (reader.Has(kCertificates)) return false;
  const std::string_view other = key == kTlsCert ? kTlsKey : kTlsCert;
  if (!reader.Has(other)) {
    reader.Error(
        *reader.Find(key), key,
        std::string(key) + " needs " + std::string(other) + " as well");
    return false;
  }
  if (key == kTlsKey) return reader.Good(kTlsCert);
  Certificate certificate;
  const bool cert_ok = reader.ReadFile(kTlsCert, &certificate.cert_file);
  const bool key_ok = reader.ReadFile(kTlsKey, &certificate.key_file);
  if (!cert_ok || !key_ok ||
      !UsablePair(reader, reader.PositionOf(kTlsCert), reader.path(),
                  certificate)) {
    return false;
  }
  listener.certificates.push_back(std::move(certificate));
  return true;
}

std::string TlsVersionError(const std::string& version) {
  if (version == "1.2" || version == "1.3") return "";
  return "must be \"1.2\" or \"1.3\", got \"" + version + "\"";
}

std::string CipherListError(const std::string& ciphers) {
  std::string error;
  CheckCipherList(ciphers, &error);
  return error;
}

std::string CaFileError(const std::string& ca_file) {
  std::string error;
  CheckCaFile(ca_file, &error);
  return error;
}

std::string_view WithoutCertificate(const TableReader&, std::string_view,
                                    const Listener& listener) {
  return listener.tls() ? "" : "has no effect without a certificate (tls_cert)";
}

std::string_view WithoutHttp2(const TableReader&, std::string_view,
                              const Listener& listener) {
  return listener.http2 ? "" : "has no effect without HTTP/2 in protocols";
}

std::string_view WithoutProxyProtocol(const TableReader&, std::string_view,
                                      const Listener& listener) {
  return listener.proxy_protocol ? "" : "has no effect without proxy_protocol";
}

// trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
bool ReadTrustedProxies(TableReader& reader, std::string_view key,
                        Listener& listener) {
  const toml::array* array = reader.ReadArray(
      key, "an array of address blocks, e.g. [\"10.0.0.0/8\"]");
  if (array == nullptr) return false;
  std::vector<Cidr> blocks;
  bool good = true;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& node = *array->get(i);
    const std::string where =
        reader.KeyPath(key) + "[" + std::to_string(i) + "]";
    const std::optional<std::string_view> text = node.value<std::string_view>();
    Cidr cidr;
    if (!text) {
      reader.context().Error(Where(node.source()), where,
                             "expected a string, got " + TypeName(node.type()));
      good = false;
    } else if (!Cidr::Parse(*text, &cidr)) {
      reader.context().Error(
          Where(node.source()), where,
          "not an address block: \"" + std::string(*text) +
              "\" (e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or an address)");
      good = false;
    } else {
      blocks.push_back(std::move(cidr));
    }
  }
  if (good) listener.trusted_proxies = std::move(blocks);
  return good;
}

// protocols = ["h2", "http/1.1"] (TLS) or ["http/1.1", "h2c"] (plain);
// whether h2 and h2c fit the listener is checked once every key is read.
bool ReadProtocols(TableReader& reader, std::string_view key,
                   Listener& listener) {
  const toml::array* array = reader.ReadArray(
      key, "an array of protocols, e.g. [\"http/1.1\", \"h2c\"]");
  if (array == nullptr) return false;
  bool good = true;
  listener.http1 = false;
  listener.http2 = false;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& node = *array->get(i);
    const std::string where =
        reader.KeyPath(key) + "[" + std::to_string(i) + "]";
    const std::optional<std::string_view> text = node.value<std::string_view>();
    if (text && *text == "http/1.1") {
      listener.http1 = true;
    } else if (text && (*text == "h2" || *text == "h2c")) {
      listener.http2 = true;
      listener.h2_name = *text;
    } else {
      reader.context().Error(
          Where(node.source()), where,
          text ? "unknown protocol \"" + std::string(*text) +
                     "\" (\"http/1.1\", \"h2\" or \"h2c\")"
               : "expected a string, got " + TypeName(node.type()));
      good = false;
    }
  }
  if (good && !listener.http1 && !listener.http2) {
    reader.Error(*array, key, "a listener needs at least one protocol");
    good = false;
  }
  if (!good) {
    listener.http1 = listener.http2 = true;
    listener.h2_name.clear();
  }
  return good;
}

// priority = "high" | "normal" | "low" | "0".."7".
bool ReadListenerPriority(TableReader& reader, std::string_view key,
                          Listener& listener) {
  std::string text;
  if (!reader.ReadString(key, &text)) return false;
  const std::optional<uint8_t> priority = ParsePriority(text);
  if (!priority) {
    reader.Error(*reader.Find(key), key,
                 "unknown priority \"" + text +
                     "\"; expected high, normal, low or 0-7 (0 the highest)");
    return false;
  }
  listener.priority = *priority;
  return true;
}

// [listeners.NAME.rate_limit].
bool ReadListenerRateLimit(TableReader& reader, std::string_view key,
                           Listener& listener) {
  return ReadRateLimit(reader, key, ListenerRateLimitSchema(),
                       listener.rate_limit);
}

std::span<const Key<Listener>> ListenerKeys() {
  static const Key<Listener> keys[] = {
      AddressKey(kListen, &Listener::listen, PortZero::kAllowed)
          .Required("a listener needs a listen address, e.g. \"0.0.0.0:8080\""),
      StringKey(kCluster, &Listener::cluster)
          .Required("a listener needs a cluster to send requests to"),
      DurationKey("client_header_timeout", &Listener::client_header_timeout,
                  ZeroDuration::kRejected),
      DurationKey("idle_timeout", &Listener::idle_timeout,
                  ZeroDuration::kRejected),
      SizeKey("max_header_size", &Listener::max_header_size_bytes, 1024,
              1024 * 1024),
      SizeKey("max_body_size", &Listener::max_body_size_bytes, 0, kNoSizeLimit),
      CustomKey(kTlsCert, ReadCertificatePair),
      CustomKey(kTlsKey, ReadCertificatePair),
      CustomKey(kCertificates, ReadCertificates),
      StringKey("tls_min_version", &Listener::tls_min_version, TlsVersionError)
          .UnusedWhen(WithoutCertificate),
      StringKey("tls_ciphers", &Listener::tls_ciphers, CipherListError)
          .UnusedWhen(WithoutCertificate),
      FileKey("client_ca", &Listener::client_ca, CaFileError)
          .UnusedWhen(WithoutCertificate),
      BoolKey("proxy_protocol", &Listener::proxy_protocol),
      CustomKey("rate_limit", ReadListenerRateLimit),
      CustomKey("trusted_proxies", ReadTrustedProxies)
          .UnusedWhen(WithoutProxyProtocol),
      DurationKey("proxy_protocol_timeout", &Listener::proxy_protocol_timeout,
                  ZeroDuration::kRejected)
          .UnusedWhen(WithoutProxyProtocol),
      CustomKey("protocols", ReadProtocols),
      CustomKey("priority", ReadListenerPriority),
      IntegerKey("h2_max_concurrent_streams",
                 &Listener::h2_max_concurrent_streams, 1, 1 << 20)
          .UnusedWhen(WithoutHttp2),
      SizeKey("h2_initial_window_size", &Listener::h2_initial_window_size, 1024,
              (uint64_t{1} << 31) - 1)
          .UnusedWhen(WithoutHttp2),
      IntegerKey("h2_max_streams_per_connection",
                 &Listener::h2_max_streams_per_connection, 0,
                 (int64_t{1} << 31) - 1)
          .UnusedWhen(WithoutHttp2),
  };
  return keys;
}

void ReadListener(LoadContext& context, const std::string& path,
                  const std::string& name, const toml::table& table,
                  Document& document) {
  TableReader reader(context, table, path, ListenerSchema());
  Listener listener;
  listener.name = name;
  ReadKeys(reader, ListenerKeys(), listener);
  // "h2" is HTTP/2 by ALPN, only on TLS; "h2c" by prior knowledge, only on
  // plain HTTP (a TLS listener never looks for the preface).
  if (listener.h2_name == "h2" && !listener.tls()) {
    reader.Error(
        *table.get("protocols"), "protocols",
        "\"h2\" needs TLS (tls_cert); a plain listener serves \"h2c\"");
  } else if (listener.h2_name == "h2c" && listener.tls()) {
    reader.Error(*table.get("protocols"), "protocols",
                 "\"h2c\" is HTTP/2 without TLS; a TLS listener serves \"h2\"");
  }
  if (reader.Good(kListen)) {
    document.listener_sites.push_back(
        {path, listener.listen, reader.PositionOf(kListen)});
  }
  document.cluster_references.push_back(
      {reader.KeyPath(kCluster), reader.PositionOf(kCluster)});
  document.config.listeners.push_back(std::move(listener));
}

}  // namespace

const Schema& ListenerSchema() {
  static const Schema schema = MakeSchema("[listeners.NAME]", ListenerKeys());
  return schema;
}

const Schema& CertificateSchema() {
  static const Schema schema =
      MakeSchema("[[listeners.NAME.certificates]]", CertificateKeys());
  return schema;
}

bool ReadListeners(TableReader& root, std::string_view key,
                   Document& document) {
  const toml::table* listeners = root.ReadTable(key);
  if (listeners == nullptr) return false;
  if (listeners->empty()) {
    root.Error(*listeners, key,
               "at least one listener is required ([listeners.NAME])");
    return false;
  }
  for (const auto& [name_key, node] : InFileOrder(*listeners)) {
    const std::string name(name_key->str());
    const std::string path = root.KeyPath(key) + "." + name;
    if (!ValidName(name)) {
      root.context().Error(Where(name_key->source()), path,
                           "bad listener name; use letters, digits, '-', '_' "
                           "or '.' (at most 64)");
    }
    const toml::table* table = node->as_table();
    if (table == nullptr) {
      root.context().Error(Where(node->source()), path,
                           "expected a table, got " + TypeName(node->type()));
      continue;
    }
    ReadListener(root.context(), path, name, *table, document);
  }
  return true;
}

}  // namespace tandem::conf
