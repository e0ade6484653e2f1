// TLS towards backends; see tls_client.h.
#include "net/tls_client.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace tandem::net {
namespace {

int SinkIndex() {
  static const int index =
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

bool IsIpLiteral(const std::string& host) {
  unsigned char buffer[sizeof(in6_addr)];
  std::string bare = host;
  if (!bare.empty() && bare.front() == '[')
    bare = bare.substr(1, bare.size() - 2);
  return inet_pton(AF_INET, bare.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, bare.c_str(), buffer) == 1;
}

std::string BareHost(const conf::SocketAddress& address) {
  std::string host = address.host;
  if (host.empty()) {
    host = address.text.substr(0, address.text.rfind(':'));
  }
  if (!host.empty() && host.front() == '[')
    host = host.substr(1, host.size() - 2);
  return host;
}

}  // namespace

std::shared_ptr<TlsClientContext> TlsClientContext::Create(
    const conf::UpstreamTls& settings, std::string* error) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    *error = "cannot create a TLS client context";
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  bool loaded = settings.ca_file.empty()
                    ? SSL_CTX_set_default_verify_paths(ctx) == 1
                    : SSL_CTX_load_verify_locations(
                          ctx, settings.ca_file.c_str(), nullptr) == 1;
  if (!loaded) {
    *error = "cannot load CA certificates" +
             (settings.ca_file.empty() ? std::string()
                                       : " from " + settings.ca_file);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return nullptr;
  }
  SSL_CTX_set_verify(ctx, settings.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                     nullptr);
  static const unsigned char kAlpn[] = {8,   'h', 't', 't', 'p',
                                        '/', '1', '.', '1'};
  static const unsigned char kAlpnH2[] = {2, 'h', '2'};
  if (settings.alpn_h2) {
    SSL_CTX_set_alpn_protos(ctx, kAlpnH2, sizeof(kAlpnH2));
  } else {
    SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn));
  }
  // Sessions are resumed per backend: the pools keep them (client side
  // caching is off in OpenSSL unless asked for).
  SSL_CTX_set_session_cache_mode(
      ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, NewSessionCb);
  return std::shared_ptr<TlsClientContext>(new TlsClientContext(ctx, settings));
}

TlsClientContext::TlsClientContext(SSL_CTX* ctx, conf::UpstreamTls settings)
    : ctx_(ctx), settings_(std::move(settings)) {}

TlsClientContext::~TlsClientContext() { SSL_CTX_free(ctx_); }

int TlsClientContext::NewSessionCb(SSL* ssl, SSL_SESSION* session) {
  auto* sink = static_cast<TlsSessionSink*>(SSL_get_ex_data(ssl, SinkIndex()));
  if (sink == nullptr) return 0;  // not kept: OpenSSL frees it
  sink->StoreSession(session);
  return 1;  // the sink holds the reference
}

SSL* TlsClientContext::NewSsl(const conf::SocketAddress& backend,
                              SSL_SESSION* session,
                              TlsSessionSink* sink) const {
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) return nullptr;
  std::string host = BareHost(backend);
  std::string sni = settings_.sni.empty() ? host : settings_.sni;
  // RFC 6066 §3: an IP literal is never sent as a server name.
  if (!sni.empty() && !IsIpLiteral(sni))
    SSL_set_tlsext_host_name(ssl, sni.c_str());
  if (settings_.verify) {
    std::string name =
        !settings_.verify_name.empty() ? settings_.verify_name : sni;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (IsIpLiteral(name)) {
      X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    } else {
      X509_VERIFY_PARAM_set_hostflags(param,
                                      X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
    }
  }
  if (session != nullptr) SSL_set_session(ssl, session);
  SSL_set_ex_data(ssl, SinkIndex(), sink);
  return ssl;
}

std::string TlsFailureText(SSL* ssl, unsigned long error) {
  std::string text;
  if (ssl != nullptr) {
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
      text = std::string("certificate verify failed: ") +
             X509_verify_cert_error_string(verify);
    }
  }
  if (text.empty() && error != 0) {
    const char* reason = ERR_reason_error_string(error);
    if (reason != nullptr) text = reason;
  }
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    if (!text.empty()) continue;  // the verify result says it best
    const char* reason = ERR_reason_error_string(code);
    text = reason != nullptr ? reason : "TLS error";
  }
  return text.empty() ? "TLS handshake failed" : text;
}

namespace {

// A filter BIO that writes its pending bytes to the next BIO before anything
// else, and passes everything else through.
struct Preamble {
  std::string bytes;
  size_t sent = 0;
};

int PreambleWrite(BIO* bio, const char* data, int length) {
  auto* preamble = static_cast<Preamble*>(BIO_get_data(bio));
  BIO* next = BIO_next(bio);
  BIO_clear_retry_flags(bio);
  while (preamble->sent < preamble->bytes.size()) {
    const int n =
        BIO_write(next, preamble->bytes.data() + preamble->sent,
                  static_cast<int>(preamble->bytes.size() - preamble->sent));
    if (n <= 0) {
      BIO_copy_next_retry(bio);
      return n;
    }
    preamble->sent += static_cast<size_t>(n);
  }
  const int n = BIO_write(next, data, length);
  BIO_copy_next_retry(bio);
  return n;
}

int PreambleRead(BIO* bio, char* data, int length) {
  BIO_clear_retry_flags(bio);
  const int n = BIO_read(BIO_next(bio), data, length);
  BIO_copy_next_retry(bio);
  return n;
}

long PreambleCtrl(BIO* bio, int command, long number, void* pointer) {
  auto* preamble = static_cast<Preamble*>(BIO_get_data(bio));
  const long below = BIO_ctrl(BIO_next(bio), command, number, pointer);
  if (command == BIO_CTRL_WPENDING && preamble != nullptr) {
    return below + static_cast<long>(preamble->bytes.size() - preamble->sent);
  }
  return below;
}

int PreambleDestroy(BIO* bio) {
  delete static_cast<Preamble*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

const BIO_METHOD* PreambleMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m =
        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_FILTER, "tandem preamble");
    BIO_meth_set_write(m, PreambleWrite);
    BIO_meth_set_read(m, PreambleRead);
    BIO_meth_set_ctrl(m, PreambleCtrl);
    BIO_meth_set_create(m, [](BIO* bio) {
      BIO_set_init(bio, 1);
      return 1;
    });
    BIO_meth_set_destroy(m, PreambleDestroy);
    return m;
  }();
  return method;
}

}  // namespace

bool SendBeforeHandshake(SSL* ssl, std::string bytes) {
  BIO* socket_bio = SSL_get_wbio(ssl);
  int fd = -1;
  if (socket_bio == nullptr || BIO_get_fd(socket_bio, &fd) < 0 || fd < 0) {
    return false;
  }
  BIO* filter = BIO_new(PreambleMethod());
  if (filter == nullptr) return false;
  BIO_set_data(filter, new Preamble{std::move(bytes), 0});
  // A socket BIO of our own under the filter; SSL_set_bio frees libevent's
  // (which does not close the socket).
  BIO* under = BIO_new_socket(fd, BIO_NOCLOSE);
  if (under == nullptr) {
    BIO_free(filter);
    return false;
  }
  BIO_push(filter, under);
  SSL_set_bio(ssl, filter, filter);
  return true;
}

}  // namespace tandem::net
