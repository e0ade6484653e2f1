// [listeners.NAME.rate_limit] and [clusters.NAME.rate_limit].
#include <string>

#include "conf/readers.h"

namespace tandem::conf {
namespace {

constexpr std::string_view kKey = "key";

// "source-ip", "header:NAME" or "global".
bool ReadLimitKey(TableReader& reader, std::string_view key, RateLimit& limit) {
  std::string text;
  if (!reader.ReadString(key, &text)) return false;
  if (text == "source-ip") {
    limit.key = RateLimit::Key::kSourceIp;
  } else if (text == "global") {
    limit.key = RateLimit::Key::kGlobal;
  } else if (text.starts_with("header:") && ValidToken(text.substr(7))) {
    limit.key = RateLimit::Key::kHeader;
    limit.header = text.substr(7);
  } else {
    reader.Error(*reader.Find(key), key,
                 "unknown key \"" + text +
                     "\"; expected source-ip, header:NAME or global");
    return false;
  }
  return true;
}

std::span<const Key<RateLimit>> RateLimitKeys() {
  static const Key<RateLimit> keys[] = {
      NumberKey("rate", &RateLimit::rate, 0.001, 1e9)
          .Required("a rate limit needs a rate (requests per second)"),
      NumberKey("burst", &RateLimit::burst, 1.0, 1e9),
      CustomKey(kKey, ReadLimitKey),
      IntegerKey("max_keys", &RateLimit::max_keys, 1, 100000000),
      BoolKey("dry_run", &RateLimit::dry_run),
  };
  return keys;
}

}  // namespace

const Schema& ListenerRateLimitSchema() {
  static const Schema schema =
      MakeSchema("[listeners.NAME.rate_limit]", RateLimitKeys());
  return schema;
}

const Schema& ClusterRateLimitSchema() {
  static const Schema schema =
      MakeSchema("[clusters.NAME.rate_limit]", RateLimitKeys());
  return schema;
}

bool ReadRateLimit(TableReader& parent, std::string_view key,
                   const Schema& schema, std::optional<RateLimit>& limit) {
  const toml::table* table = parent.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(parent.context(), *table, parent.KeyPath(key), schema);
  ReadKeys(reader, RateLimitKeys(), limit.emplace());
  return true;
}

}  // namespace tandem::conf
