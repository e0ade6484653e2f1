// Tests of the key declarations as a whole: every key a table declares is
// read and suggested, every other key is unknown, and docs/config.md
// documents exactly the declared keys. They iterate the declarations
// (conf::AllSchemas), so a new key or table is covered without a new test.
#include "conf/schema.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conf/load.h"

namespace tandem::conf {
namespace {

// Where a key of each table can be written: a file with `@` on the line
// that the key takes, and the dotted path of the key's table. Nothing else
// in the file defines the table's sub-tables, so any key can go there.
struct Site {
  std::string_view display;  // the Schema's
  std::string_view path;     // "" for the top level
  std::string_view file;
};

constexpr Site kSites[] = {
    {"the top level", "", "@\n"},
    {"[global]", "global", "[global]\n@\n"},
    {"[admin]", "admin", "[admin]\n@\n"},
    {"[listeners.NAME]", "listeners.web", "[listeners.web]\n@\n"},
    {"[[listeners.NAME.certificates]]", "listeners.web.certificates[0]",
     "[[listeners.web.certificates]]\n@\n"},
    {"[clusters.NAME]", "clusters.compute", "[clusters.compute]\n@\n"},
    {"[clusters.NAME.health]", "clusters.compute.health",
     "[clusters.compute.health]\n@\n"},
    {"[clusters.NAME.outlier]", "clusters.compute.outlier",
     "[clusters.compute.outlier]\n@\n"},
    {"[[clusters.NAME.backends]]", "clusters.compute.backends[0]",
     "[[clusters.compute.backends]]\n@\n"},
    {"[[clusters.NAME.dns]]", "clusters.compute.dns[0]",
     "[[clusters.compute.dns]]\n@\n"},
    {"[listeners.NAME.rate_limit]", "listeners.web.rate_limit",
     "[listeners.web.rate_limit]\n@\n"},
    {"[clusters.NAME.rate_limit]", "clusters.compute.rate_limit",
     "[clusters.compute.rate_limit]\n@\n"},
    {"[clusters.NAME.adaptive]", "clusters.compute.adaptive",
     "[clusters.compute.adaptive]\n@\n"},
};

const Site* SiteOf(const Schema& schema) {
  for (const Site& site : kSites) {
    if (site.display == schema.display) return &site;
  }
  return nullptr;
}

std::string KeyPath(const Site& site, std::string_view key) {
  return site.path.empty() ? std::string(key)
                           : std::string(site.path) + "." + std::string(key);
}

// The errors of the site's file with `line` in place of the `@`.
std::vector<Diagnostic> ErrorsWith(const Site& site, const std::string& line) {
  std::string text(site.file);
  text.replace(text.find('@'), 1, line);
  return ParseConfig(text, "t.toml").errors;
}

TEST_CASE("every table the loader reads has a site in these tests") {
  REQUIRE(AllSchemas().size() == std::size(kSites));
  for (const Schema* schema : AllSchemas()) {
    INFO(schema->display);
    CHECK(SiteOf(*schema) != nullptr);
    CHECK_FALSE(schema->keys.empty());
  }
}

TEST_CASE(
    "every declared key is read: a value no key takes is an error there") {
  // A date is a valid TOML value of a type no key accepts, so a key that is
  // read reports it, and a key declared but never read stays silent.
  for (const Schema* schema : AllSchemas()) {
    const Site* site = SiteOf(*schema);
    if (site == nullptr) continue;  // the test above fails
    for (std::string_view key : schema->keys) {
      const std::string path = KeyPath(*site, key);
      INFO(schema->display, " ", key);
      bool reported = false;
      for (const Diagnostic& error :
           ErrorsWith(*site, std::string(key) + " = 1979-05-27")) {
        CHECK(error.message.find("unknown key") == std::string::npos);
        reported = reported || error.key == path;
      }
      CHECK(reported);
    }
  }
}

TEST_CASE("a key one letter off a declared key is unknown and suggests it") {
  for (const Schema* schema : AllSchemas()) {
    const Site* site = SiteOf(*schema);
    if (site == nullptr) continue;  // the test above fails
    for (std::string_view key : schema->keys) {
      const std::string typo = std::string(key) + key.back();
      INFO(schema->display, " ", typo);
      const std::vector<Diagnostic> errors =
          ErrorsWith(*site, typo + " = 1979-05-27");
      const auto unknown = std::find_if(
          errors.begin(), errors.end(),
          [&](const Diagnostic& d) { return d.key == KeyPath(*site, typo); });
      REQUIRE(unknown != errors.end());
      CHECK(unknown->message == "unknown key '" + typo + "'; did you mean '" +
                                    std::string(key) + "'?");
      const auto line_of_key =
          1 + std::count(site->file.begin(),
                         site->file.begin() + site->file.find('@'), '\n');
      CHECK(unknown->line == static_cast<uint32_t>(line_of_key));
      CHECK(unknown->column == 1);
    }
  }
}

TEST_CASE("a declared key in a table that does not declare it is unknown") {
  // The hint names a near key of that table, or the tables the key is for.
  for (const Schema* home : AllSchemas()) {
    for (std::string_view key : home->keys) {
      for (const Schema* schema : AllSchemas()) {
        const Site* site = SiteOf(*schema);
        if (site == nullptr ||
            std::find(schema->keys.begin(), schema->keys.end(), key) !=
                schema->keys.end()) {
          continue;
        }
        INFO(schema->display, " ", key);
        const std::vector<Diagnostic> errors =
            ErrorsWith(*site, std::string(key) + " = 1979-05-27");
        const auto unknown = std::find_if(
            errors.begin(), errors.end(),
            [&](const Diagnostic& d) { return d.key == KeyPath(*site, key); });
        REQUIRE(unknown != errors.end());
        const std::string& message = unknown->message;
        CHECK(message.starts_with("unknown key '" + std::string(key) + "'; "));
        const size_t belongs = message.find("; it belongs in ");
        CHECK((message.find("; did you mean '") != std::string::npos ||
               (belongs != std::string::npos &&
                message.find(home->display, belongs) != std::string::npos)));
      }
    }
  }
}

// docs/config.md, read as: a heading that names a table in backticks
// ("## `[global]`") starts its section; a table row whose first cell is a
// key in backticks ("| `threads` | ...") documents that key there.
std::map<std::string, std::set<std::string>> DocumentedKeys(
    const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::map<std::string, std::set<std::string>> sections;
  std::string section;
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("#")) {
      const size_t open = line.find("`[");
      const size_t close = line.find("]`", open);
      section = open != std::string::npos && close != std::string::npos
                    ? line.substr(open + 1, close - open)
                    : "";
      if (!section.empty()) sections[section];
    } else if (!section.empty() && line.starts_with("| `")) {
      sections[section].insert(line.substr(3, line.find('`', 3) - 3));
    }
  }
  return sections;
}

// "[[clusters.NAME.backends]]" as "clusters.NAME.backends".
std::string Dotted(std::string_view display) {
  while (!display.empty() && display.front() == '[') display.remove_prefix(1);
  while (!display.empty() && display.back() == ']') display.remove_suffix(1);
  return std::string(display);
}

TEST_CASE("docs/config.md documents every declared key, and no other") {
  const std::map<std::string, std::set<std::string>> documented =
      DocumentedKeys(std::string(TANDEM_SOURCE_DIR) + "/docs/config.md");
  std::set<std::string> tables;  // dotted paths of the declared tables
  for (const Schema* schema : AllSchemas())
    tables.insert(Dotted(schema->display));
  std::map<std::string, std::set<std::string>> declared;  // by doc section
  for (const Schema* schema : AllSchemas()) {
    if (schema == AllSchemas().front()) continue;  // its keys are sections
    // A table without a heading of its own ([[certificates]]) is documented
    // in its parent's section.
    std::string section(schema->display);
    if (!documented.contains(section)) {
      const std::string dotted = Dotted(section);
      section = "[" + dotted.substr(0, dotted.rfind('.')) + "]";
    }
    INFO(schema->display);
    REQUIRE(documented.contains(section));
    for (std::string_view key : schema->keys) {
      const std::string nested =
          Dotted(schema->display) + "." + std::string(key);
      if (tables.contains(nested) || tables.contains(nested + ".NAME")) {
        continue;  // a table: documented by its own section
      }
      declared[section].insert(std::string(key));
      INFO(key);
      CHECK(documented.at(section).contains(std::string(key)));
    }
  }
  for (const auto& [section, keys] : documented) {
    for (const std::string& key : keys) {
      INFO(section, " ", key);
      CHECK(declared[section].contains(key));
    }
  }
}

}  // namespace
}  // namespace tandem::conf
