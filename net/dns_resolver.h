// Asynchronous DNS lookups on a libevent loop, with c-ares: A, AAAA and SRV
// answers with their TTLs. c-ares 1.18 has no event thread: it tells us which
// sockets to watch (ARES_OPT_SOCK_STATE_CB) and we call ares_process_fd() when
// they are ready or its timeout passes. Truncated UDP answers are asked again
// over TCP by c-ares itself. One resolver per set of name servers; it belongs
// to its loop's thread.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "net/event_ptr.h"

namespace tandem::net {

enum class DnsType { kA, kAaaa, kSrv };

// One address an answer gave. For SRV records: the target's address with the
// record's port, priority and weight; for A and AAAA: the address alone.
struct DnsRecord {
  std::string ip;      // "10.0.0.5", "2001:db8::5"
  std::string target;  // SRV: the target name; else the name asked
  uint16_t port = 0;   // SRV only
  uint16_t priority = 0;
  uint16_t weight = 0;
};

struct DnsAnswer {
  bool ok = false;
  // Why not ok: "timeout", "SERVFAIL", "NXDOMAIN", "no records", ...
  std::string error;
  std::vector<DnsRecord> records;  // sorted and unique when ok
  uint32_t ttl_seconds = 0;        // the smallest TTL of what was used
  bool truncated = false;          // more records than kMaxRecords
};

class DnsResolver {
 public:
  // At most this many records are taken from one answer (and SRV targets
  // asked for): a huge answer cannot grow memory without bound.
  static constexpr size_t kMaxRecords = 4096;

  // `servers` are "IP:PORT" texts ("[::1]:53"); empty: /etc/resolv.conf.
  // Null with `error` set when c-ares cannot start.
  static std::unique_ptr<DnsResolver> Create(
      event_base* base, const std::vector<std::string>& servers,
      std::string* error);
  // Lookups still running end without their callbacks.
  ~DnsResolver();
  DnsResolver(const DnsResolver&) = delete;
  DnsResolver& operator=(const DnsResolver&) = delete;

  using Callback = std::function<void(DnsAnswer)>;
  // Asks for `name` (with resolv.conf's search list for a relative name);
  // SRV targets are then asked for their A records. `done` runs once, on the
  // loop, never inside Lookup().
  void Lookup(const std::string& name, DnsType type, Callback done);

 private:
  struct Query;
  struct Pending;
  DnsResolver(event_base* base);

  static void SocketStateCb(void* data, int fd, int readable, int writable);
  static void SocketCb(evutil_socket_t fd, short what, void* arg);
  static void TimerCb(evutil_socket_t, short, void* arg);
  static void AnswerCb(void* arg, int status, int timeouts, unsigned char* abuf,
                       int alen);
  static void DeliverCb(evutil_socket_t, short, void* arg);
  void Rearm();
  // Queues `answer` for the query's callback, which DeliverCb runs.
  void Finish(Query* query, DnsAnswer answer);

  event_base* base_;
  void* channel_ = nullptr;  // ares_channel
  EventPtr timer_;
  EventPtr deliver_;
  std::vector<std::pair<Callback, DnsAnswer>> finished_;
  std::map<int, EventPtr> sockets_;
  bool destroying_ = false;
};

// The smallest TTL among the answer records of type `rr_type` (1 = A,
// 28 = AAAA, 33 = SRV) in the DNS message `message`; nullopt when the message
// is malformed or has none. Pure.
std::optional<uint32_t> MinAnswerTtl(const unsigned char* message,
                                     size_t length, int rr_type);

}  // namespace tandem::net
