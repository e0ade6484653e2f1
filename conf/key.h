// A table's keys as data: each key's name, how its value is read and checked,
// whether it is required, and when it has no effect, declared once, in one
// line. The reading (ReadKeys) and the unknown-key check (MakeSchema) are both
// derived from the same list, so no key can be readable but "unknown", or
// declared but never read.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "conf/table_reader.h"

namespace tandem::conf {

template <typename T>
struct Key {
  // Reads the key, which is present, into `out`; a bad value is reported and
  // leaves `out` as it was. Returns whether the value was good.
  using Read =
      std::function<bool(TableReader& reader, std::string_view key, T& out)>;
  // The warning for a key that is present but has no effect, given the table
  // as read; empty when it has an effect.
  using Unused = std::string_view (*)(const TableReader& reader,
                                      std::string_view key, const T& out);

  std::string_view name;
  Read read;
  std::string_view
      missing;  // the error when the key is absent; empty: optional
  Unused unused = nullptr;

  Key Required(std::string_view message) && {
    missing = message;
    return std::move(*this);
  }
  Key UnusedWhen(Unused predicate) && {
    unused = predicate;
    return std::move(*this);
  }
};

// Reads every key of `keys` that `reader`'s table holds into `out`, in
// declaration order, records each outcome (TableReader::Good, Bad), reports
// each required key that is absent, then warns about each key present that
// has no effect.
template <typename T>
void ReadKeys(TableReader& reader, std::span<const Key<T>> keys, T& out) {
  for (const Key<T>& key : keys) {
    if (reader.Has(key.name)) {
      reader.Record(key.name, key.read(reader, key.name, out));
    } else if (!key.missing.empty()) {
      reader.MissingKey(key.name, std::string(key.missing));
    }
  }
  for (const Key<T>& key : keys) {
    if (key.unused == nullptr || !reader.Has(key.name)) continue;
    const std::string_view warning = key.unused(reader, key.name, out);
    if (!warning.empty()) {
      reader.Warning(*reader.Find(key.name), key.name, std::string(warning));
    }
  }
}

// The Schema of a table whose keys are `groups`, in that order.
template <typename... T>
Schema MakeSchema(std::string_view display, std::span<const Key<T>>... groups) {
  Schema schema{display, {}};
  const auto add = [&schema](const auto& group) {
    for (const auto& key : group) schema.keys.push_back(key.name);
  };
  (add(groups), ...);
  return schema;
}

// A member of a member, for a key that fills a nested struct:
// Member(&Cluster::picker, &algorithms::PickerOptions::algorithm).
template <typename Owner, typename Outer, typename Value>
struct NestedMember {
  Outer Owner::*outer;
  Value Outer::*inner;
  Value& operator()(Owner& owner) const { return (owner.*outer).*inner; }
};

template <typename Owner, typename Outer, typename Value>
NestedMember<Owner, Outer, Value> Member(Outer Owner::*outer,
                                         Value Outer::*inner) {
  return {outer, inner};
}

namespace key_detail {

// The struct a field belongs to and the type it holds; a field is a member
// pointer or a NestedMember.
template <typename Field>
struct FieldOf;
template <typename Owner, typename Value>
struct FieldOf<Value Owner::*> {
  using OwnerType = Owner;
  using ValueType = Value;
};
template <typename Owner, typename Outer, typename Value>
struct FieldOf<NestedMember<Owner, Outer, Value>> {
  using OwnerType = Owner;
  using ValueType = Value;
};

}  // namespace key_detail

template <typename Field>
using OwnerOf = typename key_detail::FieldOf<Field>::OwnerType;
template <typename Field>
using ValueOf = typename key_detail::FieldOf<Field>::ValueType;

// A check of a value that has the right type and range: the error message,
// or empty when the value is good.
template <typename V>
using Check = std::string (*)(const V& value);

namespace key_detail {

// A key that reads a value with `read_value` (a TableReader::Read* call),
// judges it with `check` when there is one, and stores only a good value.
template <typename Field, typename ReadValue>
Key<OwnerOf<Field>> Make(std::string_view name, Field field,
                         ReadValue read_value, Check<ValueOf<Field>> check) {
  return {name,
          [field, read_value, check](TableReader& reader, std::string_view key,
                                     OwnerOf<Field>& out) {
            ValueOf<Field> value{};
            if (!read_value(reader, key, &value)) return false;
            if (check != nullptr) {
              std::string error = check(value);
              if (!error.empty()) {
                reader.Error(*reader.Find(key), key, std::move(error));
                return false;
              }
            }
            std::invoke(field, out) = std::move(value);
            return true;
          },
          {},
          nullptr};
}

}  // namespace key_detail

// One builder per kind of value; each names the TableReader::Read* it uses.

template <typename Field>
Key<OwnerOf<Field>> IntegerKey(std::string_view name, Field field, int64_t min,
                               int64_t max) {
  return key_detail::Make(
      name, field,
      [min, max](TableReader& reader, std::string_view key,
                 ValueOf<Field>* out) {
        return reader.ReadInteger(key, min, max, out);
      },
      nullptr);
}

template <typename Field>
Key<OwnerOf<Field>> NumberKey(std::string_view name, Field field, double min,
                              double max, Check<double> check = nullptr) {
  return key_detail::Make(
      name, field,
      [min, max](TableReader& reader, std::string_view key, double* out) {
        return reader.ReadNumber(key, min, max, out);
      },
      check);
}

template <typename Field>
Key<OwnerOf<Field>> DurationKey(std::string_view name, Field field,
                                ZeroDuration zero) {
  return key_detail::Make(
      name, field,
      [zero](TableReader& reader, std::string_view key, Duration* out) {
        return reader.ReadDuration(key, zero, out);
      },
      nullptr);
}

inline constexpr uint64_t kNoSizeLimit = std::numeric_limits<uint64_t>::max();

template <typename Field>
Key<OwnerOf<Field>> SizeKey(std::string_view name, Field field, uint64_t min,
                            uint64_t max) {
  return key_detail::Make(
      name, field,
      [min, max](TableReader& reader, std::string_view key, uint64_t* out) {
        return reader.ReadSize(key, min, max, out);
      },
      nullptr);
}

template <typename Field>
Key<OwnerOf<Field>> StringKey(std::string_view name, Field field,
                              Check<std::string> check = nullptr) {
  return key_detail::Make(
      name, field,
      [](TableReader& reader, std::string_view key, std::string* out) {
        return reader.ReadString(key, out);
      },
      check);
}

template <typename Field>
Key<OwnerOf<Field>> BoolKey(std::string_view name, Field field) {
  return key_detail::Make(
      name, field,
      [](TableReader& reader, std::string_view key, bool* out) {
        return reader.ReadBool(key, out);
      },
      nullptr);
}

// The value stored is the path resolved against the file's directory.
template <typename Field>
Key<OwnerOf<Field>> FileKey(std::string_view name, Field field,
                            Check<std::string> check = nullptr) {
  return key_detail::Make(
      name, field,
      [](TableReader& reader, std::string_view key, std::string* out) {
        return reader.ReadFile(key, out);
      },
      check);
}

template <typename Field>
Key<OwnerOf<Field>> AddressKey(std::string_view name, Field field,
                               PortZero port_zero) {
  return key_detail::Make(
      name, field,
      [port_zero](TableReader& reader, std::string_view key,
                  SocketAddress* out) {
        return reader.ReadAddress(key, port_zero, out);
      },
      nullptr);
}

// `what` names the value in errors: "unknown policy \"x\"".
template <typename Field>
Key<OwnerOf<Field>> EnumKey(std::string_view name, Field field,
                            std::string_view what,
                            Choices<ValueOf<Field>> choices) {
  return key_detail::Make(
      name, field,
      [what, choices](TableReader& reader, std::string_view key,
                      ValueOf<Field>* out) {
        return reader.ReadEnum(key, what, choices, out);
      },
      nullptr);
}

// A key whose reading is its own: a value of several types, a pair of keys
// read as one, a sub-table.
template <typename T>
Key<T> CustomKey(std::string_view name,
                 bool (*read)(TableReader& reader, std::string_view key,
                              T& out)) {
  return {name, read, {}, nullptr};
}

}  // namespace tandem::conf
