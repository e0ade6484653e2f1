// TLS termination for a listener (OpenSSL 3): one SSL_CTX per certificate,
// chosen by SNI (the first is the default), TLS 1.2 and 1.3 with Mozilla's
// "intermediate" ciphers, ALPN (h2 and http/1.1, as the listener serves),
// session tickets under keys that rotate, and optional client-certificate
// verification.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace tandem::net {

class TlsServerContext {
 public:
  // Builds the contexts for `listener`'s certificates; nullptr with `error`
  // when a file cannot be used. Any thread; the result is shared by every
  // loop (SSL_CTX is thread-safe for making SSL objects).
  static std::shared_ptr<TlsServerContext> Create(
      const conf::Listener& listener, std::string* error);
  ~TlsServerContext();
  TlsServerContext(const TlsServerContext&) = delete;
  TlsServerContext& operator=(const TlsServerContext&) = delete;

  // A new server-side SSL; the caller owns it. nullptr on failure.
  SSL* NewSsl() const;

 private:
  struct Certificate {
    SSL_CTX* ctx = nullptr;
    std::vector<std::string> names;
  };
  TlsServerContext() = default;
  static int ServerNameCb(SSL* ssl, int* alert, void* arg);
  const Certificate* Match(std::string_view server_name) const;

  std::vector<Certificate> certs_;
};

// A short, stable reason for a failed handshake, for metrics labels:
// "protocol_version", "plain_http", "no_shared_cipher",
// "bad_client_certificate", "unexpected_eof", "other".
std::string_view HandshakeFailureReason(unsigned long error);

}  // namespace tandem::net
