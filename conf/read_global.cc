// [global] (process-wide settings) and [admin] (the admin listener).
#include <sys/stat.h>

#include <cctype>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include "conf/readers.h"

namespace tandem::conf {
namespace {

constexpr std::pair<std::string_view, AccessLogFormat> kAccessLogFormats[] = {
    {"text", AccessLogFormat::kText}, {"json", AccessLogFormat::kJson}};

// "stdout" and "off" are keywords; anything else is a path.
bool ReadAccessLog(TableReader& reader, std::string_view key, Global& global) {
  std::string access_log;
  if (!reader.ReadString(key, &access_log)) return false;
  global.access_log = access_log == "stdout" || access_log == "off"
                          ? access_log
                          : reader.context().ResolvePath(access_log);
  return true;
}

std::span<const Key<Global>> GlobalKeys() {
  static const Key<Global> keys[] = {
      IntegerKey("threads", &Global::threads, 0, 1024),
      DurationKey("grace_period", &Global::grace_period,
                  ZeroDuration::kAllowed),
      DurationKey("drain_delay", &Global::drain_delay, ZeroDuration::kAllowed),
      CustomKey("access_log", ReadAccessLog),
      EnumKey("access_log_format", &Global::access_log_format, "format",
              kAccessLogFormats),
  };
  return keys;
}

constexpr std::string_view kListen = "listen";
constexpr std::string_view kToken = "token";
constexpr std::string_view kTokenFile = "token_file";

// A secret mounted as a file (a Kubernetes Secret, a systemd credential)
// keeps the token out of the config itself.
bool ReadTokenFile(TableReader& reader, std::string_view key, Admin& admin) {
  if (reader.Has(kToken)) {
    reader.Error(*reader.Find(key), key,
                 "give either token or token_file, not both");
    return false;
  }
  std::string token_file;
  if (!reader.ReadFile(key, &token_file)) return false;
  // Only a regular file, and only a few KiB of it: a FIFO would hang
  // --check and a reload, /dev/zero would never end.
  constexpr size_t kMaxTokenFileBytes = 4096;
  struct stat info;
  if (stat(token_file.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    reader.Error(*reader.Find(key), key,
                 "the token file " + token_file + " is not a regular file");
    return false;
  }
  std::ifstream in(token_file, std::ios::binary);
  std::string token(kMaxTokenFileBytes + 1, '\0');
  in.read(token.data(), static_cast<std::streamsize>(token.size()));
  token.resize(static_cast<size_t>(in.gcount()));
  if (token.size() > kMaxTokenFileBytes) {
    reader.Error(*reader.Find(key), key,
                 "the token file " + token_file + " is over 4 KiB");
    return false;
  }
  while (!token.empty() &&
         std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (token.empty()) {
    reader.Error(*reader.Find(key), key,
                 "the token file " + token_file + " is empty");
    return false;
  }
  admin.token = std::move(token);
  return true;
}

std::span<const Key<Admin>> AdminKeys() {
  static const Key<Admin> keys[] = {
      AddressKey(kListen, &Admin::listen, PortZero::kAllowed),
      StringKey(kToken, &Admin::token),
      CustomKey(kTokenFile, ReadTokenFile),
  };
  return keys;
}

}  // namespace

const Schema& GlobalSchema() {
  static const Schema schema = MakeSchema("[global]", GlobalKeys());
  return schema;
}

const Schema& AdminSchema() {
  static const Schema schema = MakeSchema("[admin]", AdminKeys());
  return schema;
}

bool ReadGlobal(TableReader& root, std::string_view key, Document& document) {
  const toml::table* table = root.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(root.context(), *table, root.KeyPath(key), GlobalSchema());
  ReadKeys(reader, GlobalKeys(), document.config.global);
  return true;
}

bool ReadAdmin(TableReader& root, std::string_view key, Document& document) {
  const toml::table* table = root.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(root.context(), *table, root.KeyPath(key), AdminSchema());
  Admin admin;
  admin.listen =
      *ParseSocketAddress("127.0.0.1:9901", PortZero::kAllowed, nullptr);
  ReadKeys(reader, AdminKeys(), admin);
  if (!reader.Bad(kListen)) {
    const Position at = reader.PositionOf(kListen);
    const bool has_token = reader.Has(kToken) || reader.Has(kTokenFile);
    if (!admin.listen.IsLoopback() && !has_token) {
      reader.context().Error(
          at, reader.KeyPath(kListen),
          "admin listens on non-loopback address " + admin.listen.text +
              " without a token; set [admin] token, or listen on 127.0.0.1");
    } else if (!admin.listen.IsLoopback()) {
      reader.context().Warning(
          at, reader.KeyPath(kListen),
          "admin listens on non-loopback address " + admin.listen.text +
              "; /status and /metrics are readable without the token");
    }
    document.admin_site = ListenSite{reader.path(), admin.listen, at};
  }
  document.config.admin = std::move(admin);
  return true;
}

}  // namespace tandem::conf
