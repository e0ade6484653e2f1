// Checks of TLS files at load time; see tls_files.h.
#include "conf/tls_files.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509err.h>

#include <memory>

namespace tandem::conf {
namespace {

std::string LastOpenSslError() {
  unsigned long code = ERR_peek_last_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  const char* reason = ERR_reason_error_string(code);
  return reason != nullptr ? reason : "unknown error";
}

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

}  // namespace

bool CheckCertificatePair(const std::string& cert_file,
                          const std::string& key_file, std::string* error) {
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) {
    *error = "cannot create a TLS context: " + LastOpenSslError();
    return false;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), cert_file.c_str()) != 1) {
    *error =
        "cannot read the certificate " + cert_file + ": " + LastOpenSslError();
    return false;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key_file.c_str(),
                                  SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      *error = "the private key " + key_file +
               " does not match the certificate " + cert_file;
    } else {
      *error =
          "cannot read the private key " + key_file + ": " + LastOpenSslError();
    }
    return false;
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    *error = "the private key " + key_file +
             " does not match the certificate " + cert_file;
    ERR_clear_error();
    return false;
  }
  return true;
}

bool CheckCaFile(const std::string& ca_file, std::string* error) {
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx ||
      SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
    *error = "cannot read CA certificates from " + ca_file + ": " +
             LastOpenSslError();
    return false;
  }
  return true;
}

bool CheckCipherList(const std::string& ciphers, std::string* error) {
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx || SSL_CTX_set_cipher_list(ctx.get(), ciphers.c_str()) != 1) {
    *error = "no usable cipher in \"" + ciphers + "\"";
    ERR_clear_error();
    return false;
  }
  return true;
}

}  // namespace tandem::conf
