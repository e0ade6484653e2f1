// The access log; see access_log.h.
#include "dispatcher/proxy/access_log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>

#include "net/escape.h"
#include "net/posix.h"

namespace tandem::dispatcher {
namespace {

constexpr size_t kFlushBytes = 32 * 1024;
constexpr timeval kFlushInterval = {0, 200 * 1000};

void AppendNumber(uint64_t value, std::string* out) {
  char buffer[24];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out->append(buffer, end);
}

}  // namespace

std::shared_ptr<const AccessLogFile> AccessLogFile::Open(
    const std::string& where, std::string* error) {
  if (where == "stdout") {
    return std::shared_ptr<const AccessLogFile>(
        new AccessLogFile(STDOUT_FILENO, false));
  }
  int fd = open(where.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    *error = "access_log " + where + ": " + net::ErrorText(errno);
    return nullptr;
  }
  return std::shared_ptr<const AccessLogFile>(new AccessLogFile(fd, true));
}

AccessLogFile::~AccessLogFile() {
  if (owned_) close(fd_);
}

AccessLog::AccessLog(event_base* base,
                     std::shared_ptr<const AccessLogFile> file,
                     conf::AccessLogFormat format)
    : file_(std::move(file)), format_(format) {
  timer_.reset(evtimer_new(base, FlushCb, this));
  buffer_.reserve(kFlushBytes + 1024);
}

AccessLog::~AccessLog() { Flush(); }

void AccessLog::SetDestination(std::shared_ptr<const AccessLogFile> file,
                               conf::AccessLogFormat format) {
  Flush();
  file_ = std::move(file);
  format_ = format;
}

void AccessLog::FlushCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<AccessLog*>(arg);
  self->timer_armed_ = false;
  self->Flush();
}

void AccessLog::Flush() {
  if (!file_ || buffer_.empty()) return;
  const char* data = buffer_.data();
  size_t left = buffer_.size();
  while (left > 0) {
    ssize_t n = ::write(file_->fd(), data, left);
    if (n <= 0) break;  // a full disk must not stop the proxy
    data += n;
    left -= static_cast<size_t>(n);
  }
  buffer_.clear();
}

void AccessLog::AppendTime() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  if (tv.tv_sec != cached_second_) {
    cached_second_ = tv.tv_sec;
    tm parts;
    gmtime_r(&tv.tv_sec, &parts);
    std::snprintf(cached_time_, sizeof(cached_time_),
                  "%04d-%02d-%02dT%02d:%02d:%02d", parts.tm_year + 1900,
                  parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min,
                  parts.tm_sec);
  }
  char millis[8];
  std::snprintf(millis, sizeof(millis), ".%03dZ",
                static_cast<int>(tv.tv_usec / 1000));
  buffer_.append(cached_time_);
  buffer_.append(millis);
}

// The PROXY v2 TLVs, from the proxy in front (bytes of any value, escaped).
void AccessLog::AppendProxyText(const net::ProxyTlvs& tlvs) {
  auto field = [this](const char* name, const std::string& value) {
    if (value.empty()) return;
    buffer_.push_back(' ');
    buffer_.append(name);
    buffer_.append("=\"");
    net::AppendEscaped(value, net::Escape::kLogfmt, &buffer_);
    buffer_.push_back('"');
  };
  field("proxy_unique_id", tlvs.unique_id);
  field("proxy_authority", tlvs.authority);
  field("proxy_alpn", tlvs.alpn);
  if (tlvs.ssl) buffer_.append(" proxy_ssl=1");
}

void AccessLog::AppendProxyJson(const net::ProxyTlvs& tlvs) {
  buffer_.append(",\"proxy\":{\"ssl\":");
  buffer_.append(tlvs.ssl ? "true" : "false");
  auto field = [this](const char* name, const std::string& value) {
    if (value.empty()) return;
    buffer_.append(",\"");
    buffer_.append(name);
    buffer_.append("\":\"");
    net::AppendEscaped(value, net::Escape::kJsonAscii, &buffer_);
    buffer_.push_back('"');
  };
  field("unique_id", tlvs.unique_id);
  field("authority", tlvs.authority);
  field("alpn", tlvs.alpn);
  buffer_.push_back('}');
}

void AccessLog::Write(const AccessLogEntry& e) {
  if (!file_) return;
  char duration[32];
  std::snprintf(duration, sizeof(duration), "%.6f",
                static_cast<double>(e.duration_micros) / 1e6);
  if (format_ == conf::AccessLogFormat::kJson) {
    buffer_.append("{\"time\":\"");
    AppendTime();
    buffer_.append("\",\"client\":\"");
    buffer_.append(e.client);
    buffer_.append("\",\"method\":\"");
    net::AppendEscaped(e.method, net::Escape::kJsonAscii, &buffer_);
    buffer_.append("\",\"target\":\"");
    net::AppendEscaped(e.target, net::Escape::kJsonAscii, &buffer_);
    buffer_.append("\",\"protocol\":\"");
    buffer_.append(e.protocol);
    buffer_.append("\",\"status\":");
    AppendNumber(static_cast<uint64_t>(e.status), &buffer_);
    buffer_.append(",\"bytes_sent\":");
    AppendNumber(e.bytes_sent, &buffer_);
    buffer_.append(",\"bytes_received\":");
    AppendNumber(e.bytes_received, &buffer_);
    buffer_.append(",\"duration\":");
    buffer_.append(duration);
    buffer_.append(",\"listener\":\"");
    buffer_.append(e.listener);
    buffer_.append("\",\"cluster\":\"");
    buffer_.append(e.cluster);
    buffer_.append("\",\"backend\":");
    if (e.backend.empty()) {
      buffer_.append("null");
    } else {
      buffer_.push_back('"');
      buffer_.append(e.backend);
      buffer_.push_back('"');
    }
    buffer_.append(",\"tries\":");
    AppendNumber(e.tries, &buffer_);
    buffer_.append(",\"flags\":\"");
    buffer_.append(e.flags.empty() ? "-" : e.flags);
    buffer_.append("\"");
    if (!e.note.empty()) {
      buffer_.append(",\"not_retried\":\"");
      buffer_.append(e.note);
      buffer_.append("\"");
    }
    if (!e.trail.empty()) {
      buffer_.append(",\"failed_tries\":\"");
      buffer_.append(e.trail);
      buffer_.append("\"");
    }
    if (e.proxy != nullptr) AppendProxyJson(*e.proxy);
    buffer_.append("}\n");
  } else {
    AppendTime();
    buffer_.push_back(' ');
    buffer_.append(e.client);
    buffer_.append(" \"");
    net::AppendEscaped(e.method, net::Escape::kLogfmt, &buffer_);
    buffer_.push_back(' ');
    net::AppendEscaped(e.target, net::Escape::kLogfmt, &buffer_);
    buffer_.push_back(' ');
    buffer_.append(e.protocol);
    buffer_.append("\" ");
    AppendNumber(static_cast<uint64_t>(e.status), &buffer_);
    buffer_.push_back(' ');
    AppendNumber(e.bytes_sent, &buffer_);
    buffer_.push_back(' ');
    buffer_.append(duration);
    buffer_.push_back(' ');
    buffer_.append(e.listener);
    buffer_.push_back(' ');
    buffer_.append(e.cluster);
    buffer_.push_back(' ');
    buffer_.append(e.backend.empty() ? "-" : e.backend);
    buffer_.append(" tries=");
    AppendNumber(e.tries, &buffer_);
    buffer_.append(" flags=");
    buffer_.append(e.flags.empty() ? "-" : e.flags);
    if (!e.note.empty()) {
      buffer_.append(" not_retried=\"");
      buffer_.append(e.note);
      buffer_.push_back('"');
    }
    if (!e.trail.empty()) {
      buffer_.append(" failed_tries=");
      buffer_.append(e.trail);
    }
    if (e.proxy != nullptr) AppendProxyText(*e.proxy);
    buffer_.push_back('\n');
  }
  if (buffer_.size() >= kFlushBytes) {
    Flush();
  } else if (!timer_armed_ && timer_) {
    timer_armed_ = evtimer_add(timer_.get(), &kFlushInterval) == 0;
  }
}

}  // namespace tandem::dispatcher
