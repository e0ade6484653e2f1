// TLS towards backends (OpenSSL 3): one client context per cluster, shared by
// the data path's pools and the health checks, verifying the backend's
// certificate against `ca_file` or the system store, with SNI and a name
// check (conf::UpstreamTls).
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "conf/config.h"

namespace tandem::net {

// Where a new TLS session for later resumption goes (a backend's pool).
class TlsSessionSink {
 public:
  virtual ~TlsSessionSink() = default;
  // Takes ownership of `session` (one reference).
  virtual void StoreSession(SSL_SESSION* session) = 0;
};

class TlsClientContext {
 public:
  // nullptr, with `error` set, when the context cannot be built (an
  // unreadable ca_file, say). Any thread.
  static std::shared_ptr<TlsClientContext> Create(
      const conf::UpstreamTls& settings, std::string* error);
  ~TlsClientContext();
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;

  // A new SSL for a connection to `backend`: SNI from `sni` or the backend's
  // host name (never an IP literal), the certificate checked against
  // `verify_name`, else the SNI name, else the backend's IP. `session`, when
  // not null, is offered for resumption; `sink` (may be null) receives the
  // sessions the backend issues. The caller owns the SSL. nullptr on failure.
  SSL* NewSsl(const conf::SocketAddress& backend, SSL_SESSION* session,
              TlsSessionSink* sink) const;

 private:
  TlsClientContext(SSL_CTX* ctx, conf::UpstreamTls settings);
  static int NewSessionCb(SSL* ssl, SSL_SESSION* session);

  SSL_CTX* ctx_;
  conf::UpstreamTls settings_;
};

// Makes `bytes` the first bytes `ssl` writes to its socket, before the
// ClientHello (a PROXY protocol header): a filter pushed on the socket BIO
// libevent gave it. Call after the bufferevent has its socket and before the
// loop runs its handshake. False when `ssl` has no socket BIO.
bool SendBeforeHandshake(SSL* ssl, std::string bytes);

// Why a TLS connection failed, for logs and 502 bodies: "certificate verify
// failed: Hostname mismatch", "wrong version number", ...
// `error` is an OpenSSL error code already taken off the queue (libevent's
// bufferevent_get_openssl_error()), or 0 to read the thread's queue.
std::string TlsFailureText(SSL* ssl, unsigned long error = 0);

}  // namespace tandem::net
