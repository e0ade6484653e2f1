// TOML text to a validated Config: parses the document, has each table read
// by its reader (conf/read_*.cc), checks what spans tables, and returns the
// Config or every error found, each with its position and key.
#include "conf/load.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "conf/readers.h"

namespace tandem::conf {

std::string Diagnostic::ToString() const {
  std::string out = file;
  if (line != 0) {
    out += ":" + std::to_string(line) + ":" + std::to_string(column);
  }
  if (!out.empty()) out += ": ";
  if (!key.empty()) out += key + ": ";
  out += message;
  return out;
}

namespace {

constexpr std::string_view kGlobal = "global";
constexpr std::string_view kAdmin = "admin";
constexpr std::string_view kListeners = "listeners";
constexpr std::string_view kClusters = "clusters";

// The top level: one key per section, in the order hints prefer them.
std::span<const Key<Document>> RootKeys() {
  static const Key<Document> keys[] = {
      CustomKey(kGlobal, ReadGlobal),
      CustomKey(kAdmin, ReadAdmin),
      CustomKey(kListeners, ReadListeners)
          .Required("at least one listener is required ([listeners.NAME])"),
      CustomKey(kClusters, ReadClusters)
          .Required("at least one cluster is required ([clusters.NAME])"),
  };
  return keys;
}

// The order the sections are read in. Diagnostics at one position stay in
// the order they are found, and a missing section (reported at 1:1) shares
// its position with a table on the file's first line: clusters come first.
constexpr std::string_view kReadOrder[] = {kGlobal, kClusters, kListeners,
                                           kAdmin};

const Schema& RootSchema() {
  static const Schema schema = MakeSchema("the top level", RootKeys());
  return schema;
}

// toml++ walks nested tables recursively (after parsing, and when freeing
// them), so a key of tens of thousands of dotted parts overflows the stack.
// Every key is written on one line, so bounding the dots of each line bounds
// the nesting, whatever the line holds (the dots of a string or a comment
// count too: no real line has this many).
constexpr size_t kMaxDotsPerLine = 256;

// The position of the first dot past kMaxDotsPerLine on its line, if any.
std::optional<Position> TooManyDots(std::string_view text) {
  Position at{1, 1};
  size_t dots = 0;
  for (const char c : text) {
    if (c == '\n') {
      ++at.line;
      at.column = 1;
      dots = 0;
      continue;
    }
    if (c == '.' && ++dots > kMaxDotsPerLine) return at;
    // Columns count characters, as toml++ does: not UTF-8 continuation bytes.
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++at.column;
  }
  return std::nullopt;
}

// Each listener's `cluster` names a cluster of the file; marks those used.
void ResolveClusters(LoadContext& context, Document& document,
                     std::vector<bool>* used) {
  std::vector<std::string> names;
  for (const Cluster& cluster : document.config.clusters) {
    names.push_back(cluster.name);
  }
  const std::vector<std::string_view> candidates(names.begin(), names.end());
  for (size_t i = 0; i < document.config.listeners.size(); ++i) {
    Listener& listener = document.config.listeners[i];
    if (listener.cluster.empty()) continue;  // absent or bad: reported
    const auto it = std::find(names.begin(), names.end(), listener.cluster);
    if (it != names.end()) {
      listener.cluster_index = static_cast<size_t>(it - names.begin());
      (*used)[listener.cluster_index] = true;
      continue;
    }
    std::string message = "no cluster named '" + listener.cluster + "'";
    if (std::optional<std::string> near =
            Nearest(listener.cluster, candidates)) {
      message += "; did you mean '" + *near + "'?";
    } else if (!names.empty()) {
      message += " (clusters: " + Join(names, ", ") + ")";
    }
    const Site& site = document.cluster_references[i];
    context.Error(site.position, site.key, std::move(message));
  }
}

// Whether two listen addresses would accept the same connections. An IPv6
// wildcard listener is dual-stack (Linux default), so it covers IPv4 too.
bool ListenOverlap(const SocketAddress& a, const SocketAddress& b) {
  if (a.port() != b.port() || a.port() == 0) return false;
  const bool a_any6 = a.IsWildcard() && a.storage.ss_family == AF_INET6;
  const bool b_any6 = b.IsWildcard() && b.storage.ss_family == AF_INET6;
  if (a_any6 || b_any6) return true;
  if (a.storage.ss_family != b.storage.ss_family) return false;
  return a.IsWildcard() || b.IsWildcard() || SameIp(a, b);
}

// Two listen addresses (the admin listener's too) that would accept the same
// connections: an error at the later one.
void CheckListenOverlaps(LoadContext& context, const Document& document) {
  std::vector<const ListenSite*> sites;
  for (const ListenSite& site : document.listener_sites) sites.push_back(&site);
  if (document.admin_site) sites.push_back(&*document.admin_site);
  std::stable_sort(sites.begin(), sites.end(),
                   [](const ListenSite* a, const ListenSite* b) {
                     return std::tie(a->position.line, a->position.column) <
                            std::tie(b->position.line, b->position.column);
                   });
  for (size_t i = 0; i < sites.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (!ListenOverlap(sites[i]->address, sites[j]->address)) continue;
      context.Error(sites[i]->position, sites[i]->owner + ".listen",
                    "listen address " + sites[i]->address.text + " overlaps " +
                        sites[j]->owner + " (" + sites[j]->address.text +
                        ", line " + std::to_string(sites[j]->position.line) +
                        ")");
      break;
    }
  }
}

LoadResult Load(std::string_view text, std::string_view source_name) {
  LoadContext context(source_name);
  if (std::optional<Position> at = TooManyDots(text)) {
    context.Error(*at, "",
                  "more than " + std::to_string(kMaxDotsPerLine) +
                      " '.' on one line; keys nested this deep are not "
                      "accepted");
    return context.Finish({});
  }
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(context.file()));
  } catch (const toml::parse_error& error) {
    context.Error(Where(error.source()), "", std::string(error.description()));
    return context.Finish({});
  }
  Document document;
  document.config.path = context.file();
  TableReader reader(context, root, "", RootSchema());
  for (std::string_view name : kReadOrder) {
    for (const Key<Document>& section : RootKeys()) {
      if (section.name == name) {
        ReadKeys(reader, std::span(&section, 1), document);
      }
    }
  }

  std::vector<bool> used(document.config.clusters.size(), false);
  ResolveClusters(context, document, &used);
  CheckListenOverlaps(context, document);
  for (size_t i = 0; i < used.size(); ++i) {
    if (!used[i] && !document.config.listeners.empty()) {
      context.Warning(
          document.cluster_positions[i],
          reader.KeyPath(kClusters) + "." + document.config.clusters[i].name,
          "not used by any listener");
    }
  }
  return context.Finish(std::move(document.config));
}

}  // namespace

std::span<const Schema* const> AllSchemas() {
  static const Schema* const schemas[] = {&RootSchema(),
                                          &GlobalSchema(),
                                          &AdminSchema(),
                                          &ListenerSchema(),
                                          &CertificateSchema(),
                                          &ClusterSchema(),
                                          &HealthSchema(),
                                          &OutlierSchema(),
                                          &BackendSchema(),
                                          &DnsSchema(),
                                          &ListenerRateLimitSchema(),
                                          &ClusterRateLimitSchema(),
                                          &AdaptiveSchema()};
  return schemas;
}

LoadResult ParseConfig(std::string_view text, std::string_view source_name) {
  return Load(text, source_name);
}

LoadResult LoadConfigFile(const std::string& path, std::string* text_out) {
  const auto failure = [&](std::string message) {
    LoadResult result;
    result.errors.push_back({path, 0, 0, "", std::move(message)});
    return result;
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return failure("cannot open: " + std::string(std::strerror(errno)));
  }
  std::string text;
  char buffer[65536];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      return failure("cannot read: " + std::string(std::strerror(saved)));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text_out != nullptr) *text_out = text;
  return ParseConfig(text, path);
}

}  // namespace tandem::conf
