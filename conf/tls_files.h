// Checks of TLS files at load time, so a bad or mismatched certificate and
// key is a `--check` error and a rejected reload rather than a failure while
// serving. OpenSSL is used here only to read and compare the files.
#pragma once

#include <string>

namespace tandem::conf {

// Whether `cert_file` holds a PEM certificate chain and `key_file` its private
// key. On failure returns false and sets `error` to a short reason.
bool CheckCertificatePair(const std::string& cert_file,
                          const std::string& key_file, std::string* error);

// Whether `ca_file` holds at least one PEM certificate.
bool CheckCaFile(const std::string& ca_file, std::string* error);

// Whether OpenSSL takes `ciphers` (a TLS 1.2 cipher list, as
// SSL_CTX_set_cipher_list reads it) and finds at least one cipher in it.
bool CheckCipherList(const std::string& ciphers, std::string* error);

}  // namespace tandem::conf
