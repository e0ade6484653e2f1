// [listeners.NAME.rate_limit] and [clusters.NAME.rate_limit], and
// [clusters.NAME.adaptive]: the overload tables.
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

// "p50", "p90", "p99".
bool ReadSampleQuantile(TableReader& reader, std::string_view key,
                        AdaptiveConcurrency& adaptive) {
  std::string text;
  if (!reader.ReadString(key, &text)) return false;
  if (text == "p50") {
    adaptive.sample = 0.5;
  } else if (text == "p90") {
    adaptive.sample = 0.9;
  } else if (text == "p99") {
    adaptive.sample = 0.99;
  } else {
    reader.Error(*reader.Find(key), key,
                 "unknown sample \"" + text + "\"; expected p50, p90 or p99");
    return false;
  }
  return true;
}

std::span<const Key<AdaptiveConcurrency>> AdaptiveKeys() {
  using A = AdaptiveConcurrency;
  static const Key<AdaptiveConcurrency> keys[] = {
      IntegerKey("min_limit", &A::min_limit, 1, 1000000),
      IntegerKey("max_limit", &A::max_limit, 1, 1000000),
      CustomKey("sample", ReadSampleQuantile),
      NumberKey("jitter", &A::jitter, 0.0, 1.0),
  };
  return keys;
}

}  // namespace

const Schema& AdaptiveSchema() {
  static const Schema schema =
      MakeSchema("[clusters.NAME.adaptive]", AdaptiveKeys());
  return schema;
}

bool ReadAdaptive(TableReader& parent, std::string_view key,
                  AdaptiveConcurrency& adaptive) {
  const toml::table* table = parent.ReadTable(key);
  if (table == nullptr) return false;
  TableReader reader(parent.context(), *table, parent.KeyPath(key),
                     AdaptiveSchema());
  ReadKeys(reader, AdaptiveKeys(), adaptive);
  if (adaptive.min_limit > adaptive.max_limit) {
    const toml::node* at = reader.Find("min_limit");
    reader.Error(at != nullptr ? *at : static_cast<const toml::node&>(*table),
                 "min_limit", "min_limit exceeds max_limit");
    return false;
  }
  return true;
}

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
