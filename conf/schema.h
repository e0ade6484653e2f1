// The keys each table of the configuration file declares, by name: what the
// unknown-key check and its hints see. Each Schema is derived from the key
// descriptors of its table's reader (conf/key.h), never written by hand.
#pragma once

#include <span>
#include <string_view>
#include <vector>

namespace tandem::conf {

struct Schema {
  std::string_view display;  // how a hint names the table: "[clusters.NAME]"
  // In declaration order, which is the order "did you mean" prefers them in
  // when two are equally near.
  std::vector<std::string_view> keys;
};

// Every table of the file: the top level first, then in the order a hint
// about a key of another table names them ("it belongs in [global]").
// Built on first use; any thread.
std::span<const Schema* const> AllSchemas();

}  // namespace tandem::conf
