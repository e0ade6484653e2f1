// The access log: one line per request, buffered per loop thread and written
// with one write(2) per batch (nginx's "access_log ... buffer="), so lines
// from different threads never interleave.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "net/event_ptr.h"
#include "net/proxy_protocol.h"

namespace tandem::dispatcher {

struct AccessLogEntry {
  std::string_view client;  // "ip:port"
  std::string_view method;
  std::string_view target;
  std::string_view protocol = "HTTP/1.1";
  int status = 0;               // 0: no response was sent
  uint64_t bytes_sent = 0;      // response body bytes to the client
  uint64_t bytes_received = 0;  // request body bytes from the client
  uint64_t duration_micros = 0;
  std::string_view listener;
  std::string_view cluster;
  std::string_view backend;  // empty: none
  uint32_t tries = 0;
  std::string_view flags;  // short failure codes, empty when none
  std::string_view note;   // why a failure was not retried, empty when none
  std::string_view
      trail;  // the failed tries, "backend:CODE,...", empty when none
  const net::ProxyTlvs* proxy = nullptr;  // from a PROXY v2 header, if any
};

// Where access log lines go: standard output or a file opened for appending.
// Every loop shares one; a file closes when the last loop lets go of it, so a
// reload that moves the log never cuts off a batch still being written.
class AccessLogFile {
 public:
  // `where` is "stdout" or a path (created with mode 0644 when missing).
  // nullptr with `error` set when the file cannot be opened.
  static std::shared_ptr<const AccessLogFile> Open(const std::string& where,
                                                   std::string* error);
  ~AccessLogFile();
  AccessLogFile(const AccessLogFile&) = delete;
  AccessLogFile& operator=(const AccessLogFile&) = delete;

  int fd() const { return fd_; }

 private:
  AccessLogFile(int fd, bool owned) : fd_(fd), owned_(owned) {}
  int fd_;
  bool owned_;  // standard output is not closed
};

class AccessLog {
 public:
  // A null `file` turns the log off.
  AccessLog(event_base* base, std::shared_ptr<const AccessLogFile> file,
            conf::AccessLogFormat format);
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool enabled() const { return file_ != nullptr; }
  void Write(const AccessLogEntry& entry);
  void Flush();
  // A reload: lines written so far go where they were meant to; later ones
  // to `file` (null: off) in `format`.
  void SetDestination(std::shared_ptr<const AccessLogFile> file,
                      conf::AccessLogFormat format);

 private:
  static void FlushCb(evutil_socket_t, short, void* arg);
  void AppendTime();
  void AppendProxyText(const net::ProxyTlvs& tlvs);
  void AppendProxyJson(const net::ProxyTlvs& tlvs);

  std::shared_ptr<const AccessLogFile> file_;
  conf::AccessLogFormat format_;
  std::string buffer_;
  net::EventPtr timer_;
  bool timer_armed_ = false;
  long long cached_second_ = -1;
  char cached_time_[64] = {};  // "2026-11-26T10:00:00"
};

}  // namespace tandem::dispatcher
