// Typed reads of one TOML table's keys, and the unknown-key check with its
// hints; see table_reader.h. Every problem goes to the LoadContext.
#include "conf/table_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

namespace tandem::conf {

namespace {

bool Declares(const Schema& schema, std::string_view key) {
  return std::find(schema.keys.begin(), schema.keys.end(), key) !=
         schema.keys.end();
}

// "unknown key 'X'" with the best hint: a near key of this table, else the
// tables where the key is declared, else a near key of another table.
std::string UnknownKeyMessage(std::string_view name, const Schema& schema) {
  std::string message = "unknown key '" + std::string(name) + "'";
  if (std::optional<std::string> near = Nearest(name, schema.keys)) {
    return message + "; did you mean '" + *near + "'?";
  }
  std::vector<std::string> homes;
  std::optional<std::pair<std::string, std::string_view>> near_elsewhere;
  for (const Schema* other : AllSchemas()) {
    if (other == &schema) continue;
    if (Declares(*other, name)) {
      homes.emplace_back(other->display);
    } else if (!near_elsewhere) {
      if (std::optional<std::string> typo_of = Nearest(name, other->keys)) {
        near_elsewhere.emplace(*typo_of, other->display);
      }
    }
  }
  if (!homes.empty()) {
    message += "; it belongs in " + Join(homes, " or ");
  } else if (near_elsewhere) {
    message += "; did you mean '" + near_elsewhere->first + "' (a key of " +
               std::string(near_elsewhere->second) + ")?";
  }
  return message;
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == std::numeric_limits<int64_t>::max()) {
    return "at least " + std::to_string(min);
  }
  return "between " + std::to_string(min) + " and " + std::to_string(max);
}

}  // namespace

TableReader::TableReader(LoadContext& context, const toml::table& table,
                         std::string path, const Schema& schema)
    : context_(context), table_(table), path_(std::move(path)) {
  for (const auto& [key, node] : table_) {
    if (Declares(schema, key.str())) continue;
    context_.Error(Where(key.source()), KeyPath(key.str()),
                   UnknownKeyMessage(key.str(), schema));
  }
}

void TableReader::Record(std::string_view key, bool good) {
  read_.emplace_back(key, good);
}

bool TableReader::Good(std::string_view key) const {
  return std::find(read_.begin(), read_.end(), std::pair{key, true}) !=
         read_.end();
}

bool TableReader::Bad(std::string_view key) const {
  return std::find(read_.begin(), read_.end(), std::pair{key, false}) !=
         read_.end();
}

void TableReader::Error(const toml::node& at, std::string_view key,
                        std::string message) {
  context_.Error(Where(at.source()), KeyPath(key), std::move(message));
}

void TableReader::Warning(const toml::node& at, std::string_view key,
                          std::string message) {
  context_.Warning(Where(at.source()), KeyPath(key), std::move(message));
}

void TableReader::TypeError(const toml::node& at, std::string_view key,
                            std::string_view expected) {
  Error(at, key,
        "expected " + std::string(expected) + ", got " + TypeName(at.type()));
}

void TableReader::MissingKey(std::string_view key, std::string message) {
  context_.Error(table_position(), KeyPath(key), std::move(message));
}

bool TableReader::ReadString(std::string_view key, std::string* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a string");
    return false;
  }
  if (value->get().empty()) {
    Error(*node, key, "must not be empty");
    return false;
  }
  *out = value->get();
  return true;
}

bool TableReader::ReadBool(std::string_view key, bool* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_boolean();
  if (value == nullptr) {
    TypeError(*node, key, "a boolean (true or false)");
    return false;
  }
  *out = value->get();
  return true;
}

bool TableReader::ReadInteger(std::string_view key, int64_t min, int64_t max,
                              int64_t* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_integer();
  if (value == nullptr) {
    TypeError(*node, key, "an integer");
    return false;
  }
  const int64_t number = value->get();
  if (number < min || number > max) {
    Error(*node, key,
          "must be " + RangeText(min, max) + ", got " + std::to_string(number));
    return false;
  }
  *out = number;
  return true;
}

bool TableReader::ReadNumber(std::string_view key, double min, double max,
                             double* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  double number = 0;
  if (const auto* real = node->as_floating_point()) {
    number = real->get();
  } else if (const auto* integer = node->as_integer()) {
    number = static_cast<double>(integer->get());
  } else {
    TypeError(*node, key, "a number");
    return false;
  }
  if (!std::isfinite(number) || number < min || number > max) {
    Error(*node, key,
          "must be between " + FormatNumber(min) + " and " + FormatNumber(max) +
              ", got " + FormatNumber(number));
    return false;
  }
  *out = number;
  return true;
}

bool TableReader::ReadDuration(std::string_view key, ZeroDuration zero,
                               Duration* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  if (const auto* integer = node->as_integer()) {
    const std::string number = std::to_string(integer->get());
    Error(*node, key,
          "a duration needs a unit: write \"" + number + "s\" or \"" + number +
              "ms\" (units: ms, s, m, h)");
    return false;
  }
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a duration string such as \"10s\"");
    return false;
  }
  std::string error;
  const std::optional<Duration> duration = ParseDuration(value->get(), &error);
  if (!duration) {
    Error(*node, key, std::move(error));
    return false;
  }
  if (zero == ZeroDuration::kRejected && duration->count() == 0) {
    Error(*node, key, "must be longer than 0");
    return false;
  }
  *out = *duration;
  return true;
}

bool TableReader::ReadSize(std::string_view key, uint64_t min, uint64_t max,
                           uint64_t* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  uint64_t size = 0;
  if (const auto* integer = node->as_integer()) {
    if (integer->get() < 0) {
      Error(*node, key,
            "a size cannot be negative, got " + std::to_string(integer->get()));
      return false;
    }
    size = static_cast<uint64_t>(integer->get());
  } else if (const auto* text = node->as_string()) {
    std::string error;
    const std::optional<uint64_t> parsed = ParseSize(text->get(), &error);
    if (!parsed) {
      Error(*node, key, std::move(error));
      return false;
    }
    size = *parsed;
  } else {
    TypeError(*node, key,
              "a size (integer bytes, or a string such as \"64KiB\")");
    return false;
  }
  if (size < min || size > max) {
    Error(*node, key,
          "must be between " + std::to_string(min) + " and " +
              std::to_string(max) + " bytes, got " + std::to_string(size));
    return false;
  }
  *out = size;
  return true;
}

bool TableReader::ReadAddress(std::string_view key, PortZero port_zero,
                              SocketAddress* out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "an address string such as \"127.0.0.1:8080\"");
    return false;
  }
  std::string error;
  std::optional<SocketAddress> address =
      ParseSocketAddress(value->get(), port_zero, &error);
  if (!address) {
    Error(*node, key, std::move(error));
    return false;
  }
  *out = std::move(*address);
  return true;
}

bool TableReader::ReadFile(std::string_view key, std::string* out) {
  std::string written;
  if (!ReadString(key, &written)) return false;
  const toml::node& node = *Find(key);
  const std::string path = context_.ResolvePath(written);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    Error(node, key, "cannot read '" + path + "': " + std::strerror(errno));
    return false;
  }
  struct stat info {};
  const bool is_directory = ::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode);
  ::close(fd);
  if (is_directory) {
    Error(node, key, "'" + path + "' is a directory, not a file");
    return false;
  }
  *out = path;
  return true;
}

std::optional<size_t> TableReader::ReadChoice(
    std::string_view key, std::string_view what,
    std::span<const std::string_view> names) {
  const toml::node* node = Find(key);
  if (node == nullptr) return std::nullopt;
  std::vector<std::string> quoted;
  for (std::string_view name : names) {
    quoted.push_back("\"" + std::string(name) + "\"");
  }
  const auto* value = node->as_string();
  if (value == nullptr) {
    TypeError(*node, key, "a string: " + Join(quoted, " or "));
    return std::nullopt;
  }
  const auto it = std::find(names.begin(), names.end(), value->get());
  if (it != names.end()) return static_cast<size_t>(it - names.begin());
  std::string message =
      "unknown " + std::string(what) + " \"" + value->get() + "\"";
  if (std::optional<std::string> near = Nearest(value->get(), names)) {
    message += "; did you mean \"" + *near + "\"?";
  } else {
    message += "; expected " + Join(quoted, " or ");
  }
  Error(*node, key, std::move(message));
  return std::nullopt;
}

const toml::table* TableReader::ReadTable(std::string_view key) {
  const toml::node* node = Find(key);
  if (node == nullptr) return nullptr;
  const toml::table* table = node->as_table();
  if (table == nullptr) TypeError(*node, key, "a table");
  return table;
}

const toml::array* TableReader::ReadArray(std::string_view key,
                                          std::string_view hint) {
  const toml::node* node = Find(key);
  if (node == nullptr) return nullptr;
  const toml::array* array = node->as_array();
  if (array == nullptr) TypeError(*node, key, hint);
  return array;
}

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
           c == '_' || c == '.';
  });
}

std::vector<std::pair<const toml::key*, const toml::node*>> InFileOrder(
    const toml::table& table) {
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
  std::stable_sort(
      entries.begin(), entries.end(), [](const auto& a, const auto& b) {
        const auto& pa = a.first->source().begin;
        const auto& pb = b.first->source().begin;
        return std::tie(pa.line, pa.column) < std::tie(pb.line, pb.column);
      });
  return entries;
}

bool ReadTables(
    TableReader& parent, std::string_view key, const Schema& schema,
    std::string_view empty,
    const std::function<void(size_t index, TableReader& reader)>& read) {
  const std::string path = parent.KeyPath(key);
  const toml::array* array =
      parent.ReadArray(key, "an array of tables ([[" + path + "]])");
  if (array == nullptr) return false;
  if (array->empty()) {
    parent.Error(*array, key, std::string(empty));
    return false;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& node = *array->get(i);
    const std::string entry_path = path + "[" + std::to_string(i) + "]";
    const toml::table* table = node.as_table();
    if (table == nullptr) {
      parent.context().Error(Where(node.source()), entry_path,
                             "expected a table, got " + TypeName(node.type()));
      continue;
    }
    TableReader reader(parent.context(), *table, entry_path, schema);
    read(i, reader);
  }
  return true;
}

}  // namespace tandem::conf
