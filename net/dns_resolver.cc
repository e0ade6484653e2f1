#include "net/dns_resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>

#include <algorithm>
#include <limits>
#include <utility>

namespace tandem::net {
namespace {

ares_channel Channel(void* channel) {
  return static_cast<ares_channel>(channel);
}

std::string StatusText(int status) {
  switch (status) {
    case ARES_ENOTFOUND:
      return "NXDOMAIN";
    case ARES_ESERVFAIL:
      return "SERVFAIL";
    case ARES_EREFUSED:
      return "REFUSED";
    case ARES_ETIMEOUT:
      return "timeout";
    case ARES_ENODATA:
      return "no records";
    case ARES_ECONNREFUSED:
      return "connection refused";
    default:
      return ares_strerror(status);
  }
}

int RecordType(DnsType type) {
  switch (type) {
    case DnsType::kA:
      return ns_t_a;
    case DnsType::kAaaa:
      return ns_t_aaaa;
    case DnsType::kSrv:
      return ns_t_srv;
  }
  return ns_t_a;
}

uint16_t ReadU16(const unsigned char* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// The addresses of an A or AAAA answer, each with `name`; the smallest TTL
// goes to `ttl`. False when the answer does not parse.
bool ParseAddresses(const unsigned char* abuf, int alen, DnsType type,
                    const std::string& name, std::vector<DnsRecord>* records,
                    uint32_t* ttl, bool* truncated) {
  int count = static_cast<int>(DnsResolver::kMaxRecords);
  char text[INET6_ADDRSTRLEN];
  const auto add = [&](int family, const void* address, int record_ttl) {
    if (inet_ntop(family, address, text, sizeof(text)) == nullptr) return;
    DnsRecord record;
    record.ip = text;
    record.target = name;
    records->push_back(std::move(record));
    *ttl = std::min(*ttl, static_cast<uint32_t>(std::max(record_ttl, 0)));
  };
  if (type == DnsType::kAaaa) {
    std::vector<ares_addr6ttl> found(DnsResolver::kMaxRecords);
    if (ares_parse_aaaa_reply(abuf, alen, nullptr, found.data(), &count) !=
        ARES_SUCCESS) {
      return false;
    }
    for (int i = 0; i < count; ++i)
      add(AF_INET6, &found[i].ip6addr, found[i].ttl);
  } else {
    std::vector<ares_addrttl> found(DnsResolver::kMaxRecords);
    if (ares_parse_a_reply(abuf, alen, nullptr, found.data(), &count) !=
        ARES_SUCCESS) {
      return false;
    }
    for (int i = 0; i < count; ++i)
      add(AF_INET, &found[i].ipaddr, found[i].ttl);
  }
  if (static_cast<size_t>(count) >= DnsResolver::kMaxRecords) *truncated = true;
  return true;
}

}  // namespace

// One Lookup(): the question, and for SRV the targets still being asked.
struct DnsResolver::Query {
  DnsResolver* resolver = nullptr;
  std::string name;
  DnsType type = DnsType::kA;
  Callback done;
  DnsAnswer answer;
  // SRV: the records, and how many target lookups are still out.
  std::vector<DnsRecord> srv;
  size_t pending = 0;
};

// What c-ares hands back to AnswerCb: the lookup, and which target of an SRV
// answer this is (empty: the question itself).
struct DnsResolver::Pending {
  std::shared_ptr<Query> query;
  std::string target;
};

DnsResolver::DnsResolver(event_base* base) : base_(base) {}

std::unique_ptr<DnsResolver> DnsResolver::Create(
    event_base* base, const std::vector<std::string>& servers,
    std::string* error) {
  static const int library = ares_library_init(ARES_LIB_INIT_ALL);
  if (library != ARES_SUCCESS) {
    *error = std::string("c-ares: ") + ares_strerror(library);
    return nullptr;
  }
  std::unique_ptr<DnsResolver> resolver(new DnsResolver(base));
  ares_options options{};
  options.sock_state_cb = SocketStateCb;
  options.sock_state_cb_data = resolver.get();
  options.timeout = 1000;  // ms, doubled at each round over the servers
  options.tries = 2;
  ares_channel channel = nullptr;
  int status = ares_init_options(
      &channel, &options,
      ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (status != ARES_SUCCESS) {
    *error = std::string("c-ares: ") + ares_strerror(status);
    return nullptr;
  }
  resolver->channel_ = channel;
  if (!servers.empty()) {
    std::string csv;
    for (const std::string& server : servers) {
      csv += (csv.empty() ? "" : ",") + server;
    }
    status = ares_set_servers_ports_csv(channel, csv.c_str());
    if (status != ARES_SUCCESS) {
      *error = "c-ares: bad name servers " + csv + ": " + ares_strerror(status);
      return nullptr;
    }
  }
  resolver->timer_.reset(evtimer_new(base, TimerCb, resolver.get()));
  return resolver;
}

DnsResolver::~DnsResolver() {
  destroying_ = true;
  // Runs every callback still pending with ARES_EDESTRUCTION.
  if (channel_ != nullptr) ares_destroy(Channel(channel_));
  sockets_.clear();
}

void DnsResolver::Lookup(const std::string& name, DnsType type, Callback done) {
  auto query = std::make_shared<Query>();
  query->resolver = this;
  query->name = name;
  query->type = type;
  query->done = std::move(done);
  auto* lookup = new Pending{query, ""};
  ares_search(Channel(channel_), name.c_str(), ns_c_in, RecordType(type),
              AnswerCb, lookup);
  Rearm();
}

void DnsResolver::AnswerCb(void* arg, int status, int, unsigned char* abuf,
                           int alen) {
  std::unique_ptr<Pending> lookup(static_cast<Pending*>(arg));
  Query& query = *lookup->query;
  DnsResolver& self = *query.resolver;
  if (status == ARES_EDESTRUCTION || self.destroying_) return;
  const bool target = !lookup->target.empty();
  if (status != ARES_SUCCESS) {
    if (!target) {
      query.answer.error = StatusText(status);
      self.Finish(&query, std::move(query.answer));
    } else if (--query.pending == 0) {
      self.Finish(&query, std::move(query.answer));
    }
    return;
  }
  DnsAnswer& answer = query.answer;
  if (!target && query.type != DnsType::kSrv) {
    answer.ttl_seconds = std::numeric_limits<uint32_t>::max();
    if (!ParseAddresses(abuf, alen, query.type, query.name, &answer.records,
                        &answer.ttl_seconds, &answer.truncated)) {
      answer.error = "malformed answer";
    }
    self.Finish(&query, std::move(answer));
    return;
  }
  if (!target) {
    ares_srv_reply* replies = nullptr;
    if (ares_parse_srv_reply(abuf, alen, &replies) != ARES_SUCCESS) {
      answer.error = "malformed answer";
      self.Finish(&query, std::move(answer));
      return;
    }
    answer.ttl_seconds =
        MinAnswerTtl(abuf, static_cast<size_t>(alen), ns_t_srv).value_or(0);
    for (ares_srv_reply* r = replies; r != nullptr; r = r->next) {
      if (query.srv.size() >= kMaxRecords) {
        answer.truncated = true;
        break;
      }
      // "." says the service is not offered at this name (RFC 2782).
      if (r->host == nullptr || r->host[0] == '\0' ||
          std::string_view(r->host) == ".") {
        continue;
      }
      DnsRecord record;
      record.target = r->host;
      record.port = r->port;
      record.priority = r->priority;
      record.weight = r->weight;
      query.srv.push_back(std::move(record));
    }
    ares_free_data(replies);
    std::vector<std::string> targets;
    for (const DnsRecord& record : query.srv) targets.push_back(record.target);
    std::sort(targets.begin(), targets.end());
    targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    if (targets.empty()) {
      answer.error = "no records";
      self.Finish(&query, std::move(answer));
      return;
    }
    query.pending = targets.size();
    for (const std::string& name : targets) {
      auto* next = new Pending{lookup->query, name};
      ares_search(Channel(self.channel_), name.c_str(), ns_c_in, ns_t_a,
                  AnswerCb, next);
    }
    return;
  }
  // The A answer of one SRV target: its addresses for each of its records.
  std::vector<DnsRecord> addresses;
  uint32_t ttl = answer.ttl_seconds;
  if (ParseAddresses(abuf, alen, DnsType::kA, lookup->target, &addresses, &ttl,
                     &answer.truncated)) {
    answer.ttl_seconds = ttl;
    for (const DnsRecord& record : query.srv) {
      if (record.target != lookup->target) continue;
      for (const DnsRecord& address : addresses) {
        if (answer.records.size() >= kMaxRecords) {
          answer.truncated = true;
          break;
        }
        DnsRecord found = record;
        found.ip = address.ip;
        answer.records.push_back(std::move(found));
      }
    }
  }
  if (--query.pending == 0) self.Finish(&query, std::move(answer));
}

void DnsResolver::Finish(Query* query, DnsAnswer answer) {
  if (answer.error.empty() && answer.records.empty()) {
    answer.error = "no records";
  }
  answer.ok = answer.error.empty();
  if (!answer.ok) {
    answer.records.clear();
  } else {
    auto key = [](const DnsRecord& r) {
      return std::tie(r.ip, r.port, r.target, r.priority, r.weight);
    };
    std::sort(answer.records.begin(), answer.records.end(),
              [&](const DnsRecord& a, const DnsRecord& b) {
                return key(a) < key(b);
              });
    answer.records.erase(
        std::unique(answer.records.begin(), answer.records.end(),
                    [&](const DnsRecord& a, const DnsRecord& b) {
                      return key(a) == key(b);
                    }),
        answer.records.end());
  }
  // Callbacks run from the loop, never inside c-ares' processing.
  finished_.emplace_back(std::move(query->done), std::move(answer));
  if (!deliver_) {
    deliver_.reset(event_new(base_, -1, 0, DeliverCb, this));
  }
  event_active(deliver_.get(), EV_TIMEOUT, 0);
}

void DnsResolver::DeliverCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<DnsResolver*>(arg);
  std::vector<std::pair<Callback, DnsAnswer>> finished;
  finished.swap(self->finished_);
  for (auto& [done, answer] : finished) done(std::move(answer));
}

void DnsResolver::SocketStateCb(void* data, int fd, int readable,
                                int writable) {
  auto* self = static_cast<DnsResolver*>(data);
  self->sockets_.erase(fd);
  if (self->destroying_ || (!readable && !writable)) return;
  short what = EV_PERSIST;
  if (readable) what |= EV_READ;
  if (writable) what |= EV_WRITE;
  EventPtr ev(event_new(self->base_, fd, what, SocketCb, self));
  event_add(ev.get(), nullptr);
  self->sockets_[fd] = std::move(ev);
}

void DnsResolver::SocketCb(evutil_socket_t fd, short what, void* arg) {
  auto* self = static_cast<DnsResolver*>(arg);
  ares_process_fd(Channel(self->channel_),
                  (what & EV_READ) ? fd : ARES_SOCKET_BAD,
                  (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
  self->Rearm();
}

void DnsResolver::TimerCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<DnsResolver*>(arg);
  ares_process_fd(Channel(self->channel_), ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  self->Rearm();
}

void DnsResolver::Rearm() {
  timeval tv{};
  if (ares_timeout(Channel(channel_), nullptr, &tv) != nullptr) {
    evtimer_add(timer_.get(), &tv);
  } else {
    evtimer_del(timer_.get());
  }
}

std::optional<uint32_t> MinAnswerTtl(const unsigned char* message,
                                     size_t length, int rr_type) {
  if (length < 12) return std::nullopt;
  const size_t questions = ReadU16(message + 4);
  const size_t answers = ReadU16(message + 6);
  const int whole = static_cast<int>(std::min<size_t>(length, 65535));
  size_t at = 12;
  const auto skip_name = [&]() {
    char* name = nullptr;
    long encoded = 0;
    if (at >= length || ares_expand_name(message + at, message, whole, &name,
                                         &encoded) != ARES_SUCCESS) {
      return false;
    }
    ares_free_string(name);
    at += static_cast<size_t>(encoded);
    return true;
  };
  for (size_t i = 0; i < questions; ++i) {
    if (!skip_name() || at + 4 > length) return std::nullopt;
    at += 4;
  }
  std::optional<uint32_t> ttl;
  for (size_t i = 0; i < answers; ++i) {
    if (!skip_name() || at + 10 > length) return std::nullopt;
    const int type = ReadU16(message + at);
    const uint32_t record_ttl =
        (static_cast<uint32_t>(ReadU16(message + at + 4)) << 16) |
        ReadU16(message + at + 6);
    const size_t rdlength = ReadU16(message + at + 8);
    at += 10;
    if (at + rdlength > length) return std::nullopt;
    at += rdlength;
    // RFC 2181: a TTL with the top bit set is read as 0.
    if (type == rr_type) {
      const uint32_t value = record_ttl > 0x7fffffff ? 0 : record_ttl;
      ttl = std::min(ttl.value_or(value), value);
    }
  }
  return ttl;
}

}  // namespace tandem::net
