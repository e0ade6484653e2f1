// What every table reader shares: typed reads of one TOML table's keys
// (durations, sizes, addresses, enums, ranges), each problem reported as
// "FILE:LINE:COL: key: message" into the LoadContext, and unknown keys with
// "did you mean". Internal to conf/, like toml++.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conf/config.h"
#include "conf/diagnostics.h"
#include "conf/schema.h"
#include "conf/units.h"

namespace tandem::conf {

enum class ZeroDuration { kAllowed, kRejected };

template <typename E>
using Choices = std::span<const std::pair<std::string_view, E>>;

// Reads the keys of one TOML table. Each Read* reports a bad value and
// returns true only when the key is present and its value valid (then `out`
// is set); an absent key returns false and reports nothing.
class TableReader {
 public:
  // Reports every key of `table` that `schema` does not declare, with the
  // nearest declared key, or the table it belongs in.
  TableReader(LoadContext& context, const toml::table& table, std::string path,
              const Schema& schema);

  LoadContext& context() const { return context_; }
  const std::string& path() const { return path_; }
  Position table_position() const { return Where(table_.source()); }
  std::string KeyPath(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  bool Has(std::string_view key) const { return table_.contains(key); }
  const toml::node* Find(std::string_view key) const { return table_.get(key); }
  // The value's position, or the table's when the key is absent.
  Position PositionOf(std::string_view key) const {
    const toml::node* node = Find(key);
    return node != nullptr ? Where(node->source()) : table_position();
  }

  // What ReadKeys (conf/key.h) found: the key present with a valid value, or
  // present with a bad one. An absent key is neither.
  void Record(std::string_view key, bool good);
  bool Good(std::string_view key) const;
  bool Bad(std::string_view key) const;

  bool ReadString(std::string_view key, std::string* out);
  bool ReadBool(std::string_view key, bool* out);
  template <typename Int>
  bool ReadInteger(std::string_view key, int64_t min, int64_t max, Int* out) {
    int64_t number = 0;
    if (!ReadInteger(key, min, max, &number)) return false;
    *out = static_cast<Int>(number);
    return true;
  }
  bool ReadInteger(std::string_view key, int64_t min, int64_t max,
                   int64_t* out);
  bool ReadNumber(std::string_view key, double min, double max, double* out);
  bool ReadDuration(std::string_view key, ZeroDuration zero, Duration* out);
  bool ReadSize(std::string_view key, uint64_t min, uint64_t max,
                uint64_t* out);
  bool ReadAddress(std::string_view key, PortZero port_zero,
                   SocketAddress* out);
  // A path to a file that must exist and be readable; relative paths are
  // resolved against the configuration file's directory.
  bool ReadFile(std::string_view key, std::string* out);
  template <typename E>
  bool ReadEnum(std::string_view key, std::string_view what, Choices<E> choices,
                E* out) {
    std::vector<std::string_view> names;
    for (const auto& choice : choices) names.push_back(choice.first);
    const std::optional<size_t> index = ReadChoice(key, what, names);
    if (index) *out = choices[*index].second;
    return index.has_value();
  }
  // Null when absent or not a table (reported).
  const toml::table* ReadTable(std::string_view key);
  const toml::array* ReadArray(std::string_view key, std::string_view hint);

  void Error(const toml::node& at, std::string_view key, std::string message);
  void Warning(const toml::node& at, std::string_view key, std::string message);
  void TypeError(const toml::node& at, std::string_view key,
                 std::string_view expected);
  // At the table, which lacks `key`.
  void MissingKey(std::string_view key, std::string message);

 private:
  // The index of the value among `names`; nullopt when absent or bad.
  std::optional<size_t> ReadChoice(std::string_view key, std::string_view what,
                                   std::span<const std::string_view> names);

  LoadContext& context_;
  const toml::table& table_;
  std::string path_;
  std::vector<std::pair<std::string_view, bool>> read_;  // by Record
};

// Reads `key` of `parent` as an array of tables ([[path]]): each element
// that is a table goes to `read(index, reader)` with a reader over it under
// `schema`; any other element is an error. False when the key is absent or
// not an array, and when the array is empty (reported with `empty`).
bool ReadTables(
    TableReader& parent, std::string_view key, const Schema& schema,
    std::string_view empty,
    const std::function<void(size_t index, TableReader& reader)>& read);

// Names appear in admin URLs (/admin/clusters/{cluster}/...) and metric
// labels: letters, digits, '-', '_' and '.', at most 64.
bool ValidName(std::string_view name);
// Entries of a table in file order (toml::table iterates by key).
std::vector<std::pair<const toml::key*, const toml::node*>> InFileOrder(
    const toml::table& table);

}  // namespace tandem::conf
