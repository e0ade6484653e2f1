// Tests of the DNS resolver on a real event base against a scripted name
// server on 127.0.0.1 (UDP): A answers with their TTLs, SRV answers resolved
// through their targets, failures named; and MinAnswerTtl on hand-made
// messages.
#include "net/dns_resolver.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tandem::net {
namespace {

using Bytes = std::vector<unsigned char>;

void PutU16(Bytes& out, uint16_t v) {
  out.push_back(static_cast<unsigned char>(v >> 8));
  out.push_back(static_cast<unsigned char>(v & 0xff));
}
void PutU32(Bytes& out, uint32_t v) {
  PutU16(out, static_cast<uint16_t>(v >> 16));
  PutU16(out, static_cast<uint16_t>(v & 0xffff));
}
void PutName(Bytes& out, const std::string& name) {
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    out.push_back(static_cast<unsigned char>(dot - start));
    out.insert(out.end(), name.begin() + start, name.begin() + dot);
    start = dot + 1;
  }
  out.push_back(0);
}

struct Record {
  uint16_t type;
  uint32_t ttl;
  Bytes rdata;
};

Bytes ARecord(const char* ip) {
  Bytes out(4);
  inet_pton(AF_INET, ip, out.data());
  return out;
}
Bytes SrvRecord(uint16_t priority, uint16_t weight, uint16_t port,
                const std::string& target) {
  Bytes out;
  PutU16(out, priority);
  PutU16(out, weight);
  PutU16(out, port);
  PutName(out, target);
  return out;
}

// A DNS message: header `id`/`rcode`, one question, `answers` for `name`.
Bytes Message(uint16_t id, const std::string& name, uint16_t qtype, int rcode,
              const std::vector<Record>& answers) {
  Bytes out;
  PutU16(out, id);
  PutU16(out, static_cast<uint16_t>(0x8180 | rcode));  // response, RD, RA
  PutU16(out, 1);
  PutU16(out, static_cast<uint16_t>(answers.size()));
  PutU16(out, 0);
  PutU16(out, 0);
  PutName(out, name);
  PutU16(out, qtype);
  PutU16(out, 1);
  for (const Record& record : answers) {
    PutName(out, name);
    PutU16(out, record.type);
    PutU16(out, 1);
    PutU32(out, record.ttl);
    PutU16(out, static_cast<uint16_t>(record.rdata.size()));
    out.insert(out.end(), record.rdata.begin(), record.rdata.end());
  }
  return out;
}

// Answers each UDP query from `zone` (by name and type); a name it lacks is
// NXDOMAIN; a name mapped to rcode 2 answers SERVFAIL.
class NameServer {
 public:
  struct Entry {
    int rcode = 0;
    std::vector<Record> answers;
  };
  explicit NameServer(event_base* base) {
    fd_ = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
            0);
    socklen_t length = sizeof(address);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    event_ = event_new(base, fd_, EV_READ | EV_PERSIST, ReadCb, this);
    event_add(event_, nullptr);
  }
  ~NameServer() {
    event_free(event_);
    close(fd_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::map<std::pair<std::string, uint16_t>, Entry> zone;
  int queries = 0;

 private:
  static void ReadCb(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<NameServer*>(arg);
    unsigned char buffer[512];
    sockaddr_storage from{};
    socklen_t from_length = sizeof(from);
    const ssize_t n =
        recvfrom(fd, buffer, sizeof(buffer), 0,
                 reinterpret_cast<sockaddr*>(&from), &from_length);
    if (n < 17) return;
    ++self->queries;
    const uint16_t id = static_cast<uint16_t>((buffer[0] << 8) | buffer[1]);
    std::string name;
    size_t at = 12;
    while (at < static_cast<size_t>(n) && buffer[at] != 0) {
      const size_t length = buffer[at];
      if (!name.empty()) name += '.';
      name.append(reinterpret_cast<char*>(buffer + at + 1), length);
      at += length + 1;
    }
    const uint16_t qtype =
        static_cast<uint16_t>((buffer[at + 1] << 8) | buffer[at + 2]);
    auto it = self->zone.find({name, qtype});
    Bytes reply =
        it == self->zone.end()
            ? Message(id, name, qtype, 3, {})
            : Message(id, name, qtype, it->second.rcode, it->second.answers);
    sendto(fd, reply.data(), reply.size(), 0,
           reinterpret_cast<sockaddr*>(&from), from_length);
  }
  int fd_ = -1;
  uint16_t port_ = 0;
  event* event_ = nullptr;
};

struct Fixture {
  Fixture()
      : base(event_base_new()), server(std::make_unique<NameServer>(base)) {}
  ~Fixture() {
    // The resolver's and the server's events go before the base.
    resolver.reset();
    server.reset();
    event_base_free(base);
  }
  // Runs one lookup to its end (or 10 s).
  DnsAnswer Ask(const std::string& name, DnsType type) {
    if (!resolver) {
      std::string error;
      resolver = DnsResolver::Create(base, {server->address()}, &error);
      REQUIRE(resolver != nullptr);
    }
    std::optional<DnsAnswer> answer;
    bool inside = true;
    resolver->Lookup(name, type, [&](DnsAnswer a) {
      CHECK_FALSE(inside);  // never from inside Lookup()
      answer = std::move(a);
      event_base_loopbreak(base);
    });
    inside = false;
    timeval limit{10, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    REQUIRE(answer.has_value());
    return *answer;
  }
  event_base* base;
  std::unique_ptr<NameServer> server;
  std::unique_ptr<DnsResolver> resolver;
};

TEST_CASE("an A answer gives its addresses, sorted, and the smallest TTL") {
  Fixture f;
  f.server->zone[{"w.test", 1}] = {
      0, {{1, 30, ARecord("10.0.0.2")}, {1, 7, ARecord("10.0.0.1")}}};
  const DnsAnswer answer = f.Ask("w.test.", DnsType::kA);
  CHECK(answer.ok);
  CHECK(answer.error.empty());
  REQUIRE(answer.records.size() == 2);
  CHECK(answer.records[0].ip == "10.0.0.1");
  CHECK(answer.records[1].ip == "10.0.0.2");
  CHECK(answer.ttl_seconds == 7);
}

TEST_CASE("an SRV answer is resolved through its targets") {
  Fixture f;
  f.server->zone[{"_w._tcp.test", 33}] = {
      0,
      {{33, 20, SrvRecord(10, 1, 8001, "a.test")},
       {33, 9, SrvRecord(20, 3, 8002, "b.test")},
       {33, 20, SrvRecord(10, 1, 8003, "a.test")}}};
  f.server->zone[{"a.test", 1}] = {0, {{1, 60, ARecord("10.0.0.1")}}};
  f.server->zone[{"b.test", 1}] = {
      0, {{1, 4, ARecord("10.0.0.2")}, {1, 60, ARecord("10.0.0.3")}}};
  const DnsAnswer answer = f.Ask("_w._tcp.test.", DnsType::kSrv);
  CHECK(answer.ok);
  CHECK(answer.ttl_seconds == 4);  // b.test's first A record
  REQUIRE(answer.records.size() == 4);
  CHECK(answer.records[0].ip == "10.0.0.1");
  CHECK(answer.records[0].port == 8001);
  CHECK(answer.records[1].port == 8003);
  CHECK(answer.records[2].ip == "10.0.0.2");
  CHECK(answer.records[2].port == 8002);
  CHECK(answer.records[2].priority == 20);
  CHECK(answer.records[2].weight == 3);
  CHECK(answer.records[3].ip == "10.0.0.3");
  // Each distinct target asked once, after the SRV question.
  CHECK(f.server->queries == 3);
}

TEST_CASE("failures are named and carry no records") {
  Fixture f;
  f.server->zone[{"broken.test", 1}] = {2, {}};
  f.server->zone[{"empty.test", 1}] = {0, {}};
  DnsAnswer answer = f.Ask("missing.test.", DnsType::kA);
  CHECK_FALSE(answer.ok);
  CHECK(answer.error == "NXDOMAIN");
  // c-ares asks the next server after a SERVFAIL and reports how the last
  // one failed: with one server that is not always "SERVFAIL".
  answer = f.Ask("broken.test.", DnsType::kA);
  CHECK_FALSE(answer.ok);
  CHECK_FALSE(answer.error.empty());
  CHECK(answer.records.empty());
  answer = f.Ask("empty.test.", DnsType::kA);
  CHECK_FALSE(answer.ok);
  CHECK(answer.error == "no records");
  CHECK(answer.records.empty());
}

TEST_CASE("MinAnswerTtl reads the answer section and rejects bad messages") {
  const Bytes srv = Message(1, "s.test", 33, 0,
                            {{33, 50, SrvRecord(1, 1, 80, "a.test")},
                             {1, 5, ARecord("10.0.0.1")},
                             {33, 0x80000001u, SrvRecord(1, 1, 81, "a.test")}});
  // The top bit set reads as 0 (RFC 2181).
  CHECK(MinAnswerTtl(srv.data(), srv.size(), 33) == 0u);
  CHECK(MinAnswerTtl(srv.data(), srv.size(), 1) == 5u);
  CHECK_FALSE(MinAnswerTtl(srv.data(), srv.size(), 28).has_value());
  // Every truncation of the message is rejected or read within bounds.
  for (size_t length = 0; length < srv.size(); ++length) {
    const std::optional<uint32_t> ttl = MinAnswerTtl(srv.data(), length, 33);
    if (ttl) CHECK(*ttl == 50u);
  }
  CHECK_FALSE(MinAnswerTtl(srv.data(), 11, 33).has_value());
}

}  // namespace
}  // namespace tandem::net
