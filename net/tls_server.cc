// TLS termination for a listener; see tls_server.h.
#include "net/tls_server.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <cstring>
#include <mutex>

namespace tandem::net {
namespace {

// Mozilla's "intermediate" TLS 1.2 ciphers (forward secret AEADs only); TLS
// 1.3 keeps OpenSSL's default suites, which are all strong.
constexpr char kIntermediateCiphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

// Session ticket keys: new tickets use the current key, tickets under the
// previous key are still accepted (and renewed), keys older than that are
// forgotten. Rotating every 12 hours bounds what a stolen key decrypts, as
// nginx's and HAProxy's rotation advice does.
class TicketKeys {
 public:
  static TicketKeys& Instance() {
    static TicketKeys keys;
    return keys;
  }

  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
  };

  // For a new ticket: the current key, rotated when due.
  bool Current(Key* key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto now = std::chrono::steady_clock::now();
    if (!have_current_ || now - created_ >= kRotation) {
      previous_ = current_;
      have_previous_ = have_current_;
      if (!Generate(&current_)) return false;
      have_current_ = true;
      created_ = now;
    }
    *key = current_;
    return true;
  }

  // For a ticket to decrypt: 1 current key, 2 previous key (renew), 0 none.
  int Find(const unsigned char name[16], Key* key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (have_current_ && std::memcmp(name, current_.name, 16) == 0) {
      *key = current_;
      return 1;
    }
    if (have_previous_ && std::memcmp(name, previous_.name, 16) == 0) {
      *key = previous_;
      return 2;
    }
    return 0;
  }

 private:
  static constexpr auto kRotation = std::chrono::hours(12);
  static bool Generate(Key* key) {
    return RAND_bytes(key->name, sizeof(key->name)) == 1 &&
           RAND_bytes(key->aes, sizeof(key->aes)) == 1 &&
           RAND_bytes(key->hmac, sizeof(key->hmac)) == 1;
  }

  std::mutex mutex_;
  Key current_{};
  Key previous_{};
  bool have_current_ = false;
  bool have_previous_ = false;
  std::chrono::steady_clock::time_point created_{};
};

int TicketKeyCb(SSL*, unsigned char key_name[16], unsigned char* iv,
                EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt) {
  TicketKeys::Key key;
  int found = 1;
  if (encrypt) {
    if (!TicketKeys::Instance().Current(&key) ||
        RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) {
      return -1;
    }
    std::memcpy(key_name, key.name, 16);
    if (EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes, iv) !=
        1)
      return -1;
  } else {
    found = TicketKeys::Instance().Find(key_name, &key);
    if (found == 0) return 0;  // unknown key: a full handshake
    if (EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes, iv) !=
        1)
      return -1;
  }
  char digest[] = "sha256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac,
                                        sizeof(key.hmac)),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  return found;
}

// ALPN protocol lists in server preference order, by what a listener serves.
const unsigned char kAlpnHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
const unsigned char kAlpnH2[] = {2, 'h', '2'};
const unsigned char kAlpnBoth[] = {2,   'h', '2', 8,   'h', 't',
                                   't', 'p', '/', '1', '.', '1'};

struct AlpnList {
  const unsigned char* data;
  unsigned int length;
};
const AlpnList kAlpnLists[] = {{kAlpnHttp11, sizeof(kAlpnHttp11)},
                               {kAlpnH2, sizeof(kAlpnH2)},
                               {kAlpnBoth, sizeof(kAlpnBoth)}};

int AlpnSelectCb(SSL*, const unsigned char** out, unsigned char* out_length,
                 const unsigned char* in, unsigned int in_length, void* arg) {
  // With no overlap the handshake goes on without ALPN, as nginx does (the
  // connection then speaks HTTP/1.1, or closes if the listener has none).
  const auto* list = static_cast<const AlpnList*>(arg);
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_length, list->data, list->length, in,
                            in_length) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

std::string LastError() {
  unsigned long code = ERR_peek_last_error();
  ERR_clear_error();
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  return reason != nullptr ? reason : "unknown error";
}

std::vector<std::string> CertificateNames(SSL_CTX* ctx) {
  std::vector<std::string> names;
  X509* cert = SSL_CTX_get0_certificate(ctx);
  if (cert == nullptr) return names;
  auto* alt = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (alt != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(alt); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(alt, i);
      if (name->type != GEN_DNS) continue;
      const unsigned char* data = ASN1_STRING_get0_data(name->d.dNSName);
      names.emplace_back(
          reinterpret_cast<const char*>(data),
          static_cast<size_t>(ASN1_STRING_length(name->d.dNSName)));
    }
    GENERAL_NAMES_free(alt);
  }
  if (names.empty()) {
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName,
                                  cn, sizeof(cn)) > 0) {
      names.emplace_back(cn);
    }
  }
  for (std::string& name : names) {
    for (char& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return names;
}

bool NameMatches(std::string_view pattern, std::string_view host) {
  if (pattern == host) return true;
  // "*.example.com" matches one label: "a.example.com", not "a.b.example.com".
  if (pattern.size() > 2 && pattern.substr(0, 2) == "*.") {
    size_t dot = host.find('.');
    return dot != std::string_view::npos &&
           host.substr(dot) == pattern.substr(1);
  }
  return false;
}

}  // namespace

std::shared_ptr<TlsServerContext> TlsServerContext::Create(
    const conf::Listener& listener, std::string* error) {
  std::shared_ptr<TlsServerContext> context(new TlsServerContext());
  for (const conf::Certificate& certificate : listener.certificates) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
      *error = "cannot create a TLS context";
      return nullptr;
    }
    context->certs_.push_back({ctx, {}});
    SSL_CTX_set_min_proto_version(ctx, listener.tls_min_version == "1.3"
                                           ? TLS1_3_VERSION
                                           : TLS1_2_VERSION);
    const std::string ciphers = listener.tls_ciphers.empty()
                                    ? kIntermediateCiphers
                                    : listener.tls_ciphers;
    if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
      *error =
          "listener " + listener.name + ": no usable cipher in tls_ciphers";
      ERR_clear_error();
      return nullptr;
    }
    // Renegotiation is a denial-of-service lever and HTTP/1.1 needs none;
    // the server's cipher order wins.
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    // An idle connection gives its read and write buffers (about 34 KiB)
    // back until it has something to read or write (docs/idle.md).
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(
            ctx, certificate.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, certificate.key_file.c_str(),
                                    SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      *error = "listener " + listener.name + ": " + certificate.cert_file +
               ": " + LastError();
      return nullptr;
    }
    const AlpnList* alpn =
        &kAlpnLists[listener.http2 ? (listener.http1 ? 2 : 1) : 0];
    SSL_CTX_set_alpn_select_cb(ctx, AlpnSelectCb, const_cast<AlpnList*>(alpn));
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, TicketKeyCb);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    static const unsigned char kSessionContext[] = "tandem";
    SSL_CTX_set_session_id_context(ctx, kSessionContext,
                                   sizeof(kSessionContext) - 1);
    if (!listener.client_ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, listener.client_ca.c_str(),
                                        nullptr) != 1) {
        *error = "listener " + listener.name + ": client_ca: " + LastError();
        return nullptr;
      }
      STACK_OF(X509_NAME)* names =
          SSL_load_client_CA_file(listener.client_ca.c_str());
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                         nullptr);
    }
    context->certs_.back().names = CertificateNames(ctx);
  }
  if (context->certs_.empty()) {
    *error = "listener " + listener.name + " has no certificate";
    return nullptr;
  }
  SSL_CTX_set_tlsext_servername_callback(context->certs_[0].ctx, ServerNameCb);
  SSL_CTX_set_tlsext_servername_arg(context->certs_[0].ctx, context.get());
  return context;
}

TlsServerContext::~TlsServerContext() {
  for (Certificate& certificate : certs_) SSL_CTX_free(certificate.ctx);
}

SSL* TlsServerContext::NewSsl() const { return SSL_new(certs_[0].ctx); }

const TlsServerContext::Certificate* TlsServerContext::Match(
    std::string_view server_name) const {
  std::string host(server_name);
  for (char& c : host)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const Certificate& certificate : certs_) {
    for (const std::string& name : certificate.names) {
      if (NameMatches(name, host)) return &certificate;
    }
  }
  return nullptr;
}

int TlsServerContext::ServerNameCb(SSL* ssl, int*, void* arg) {
  auto* self = static_cast<TlsServerContext*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == nullptr) return SSL_TLSEXT_ERR_OK;  // the default certificate
  const Certificate* match = self->Match(name);
  if (match != nullptr && match->ctx != self->certs_[0].ctx) {
    SSL_set_SSL_CTX(ssl, match->ctx);
    // SSL_set_SSL_CTX does not carry the verify settings over.
    SSL_set_verify(ssl, SSL_CTX_get_verify_mode(match->ctx), nullptr);
  }
  return SSL_TLSEXT_ERR_OK;
}

std::string_view HandshakeFailureReason(unsigned long error) {
  if (error == 0) return "unexpected_eof";
  switch (ERR_GET_REASON(error)) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_VERSION_TOO_LOW:
      return "protocol_version";
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
      return "plain_http";
    case SSL_R_NO_SHARED_CIPHER:
      return "no_shared_cipher";
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_NO_CERTIFICATES_RETURNED:
      return "bad_client_certificate";
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
      return "unexpected_eof";
    default:
      return "other";
  }
}

}  // namespace tandem::net
