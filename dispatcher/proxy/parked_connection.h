// A plain client connection that has been idle for a while between requests,
// at the cost of its socket, one event and where it belongs: the
// bufferevent, the request parser and the exchange state of its
// ClientConnection go back to the allocator, as nginx's
// ngx_http_set_keepalive() frees an idle connection's buffers and HAProxy's
// h1_release_buf() does. Its next byte (or the client's close) brings a
// ClientConnection back; its deadline passing closes it. docs/idle.md.
#pragma once

#include <event2/event_struct.h>
#include <event2/util.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "net/proxy_protocol.h"

namespace tandem::dispatcher {

class Generation;
class Loop;
struct ListenerRuntime;

class ParkedConnection {
 public:
  // Takes `fd` (a plain, idle connection whose buffers are empty) and waits
  // for it to become readable until `deadline`, keeping `proxy_tlvs` (moved
  // from only on success). False when the event could not be added: `fd`
  // is then still the caller's.
  static bool Park(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, evutil_socket_t fd,
                   std::string_view address, size_t ip_length,
                   std::chrono::steady_clock::time_point deadline,
                   bool first_request,
                   std::unique_ptr<net::ProxyTlvs>& proxy_tlvs);

  // A connection accepted on a listener with proxy_protocol, from a trusted
  // peer `address` ("ip:port"): waits for the PROXY header (at most
  // proxy_protocol_timeout), takes exactly its bytes from the socket, and
  // goes on as a ClientConnection from the address the header carries (the
  // peer's for LOCAL). Counted open from now on. False when the event could
  // not be added (`fd` is then the caller's).
  static bool AwaitProxyHeader(Loop& loop, Generation& generation,
                               ListenerRuntime& listener, evutil_socket_t fd,
                               std::string_view address, size_t ip_length);

  // Closes the socket (shutdown, grace over, loop gone).
  void Close();

  // Intrusive list of a loop's parked connections.
  ParkedConnection* next = nullptr;
  ParkedConnection* prev = nullptr;

 private:
  friend class Loop;  // deletes it (Loop::Retire)
  ParkedConnection(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, std::string_view address,
                   size_t ip_length,
                   std::chrono::steady_clock::time_point deadline,
                   bool first_request);
  ~ParkedConnection();
  // Stops its event; the loop deletes it after this turn (Loop::Retire).
  void End();
  static void EventCb(evutil_socket_t fd, short what, void* arg);
  bool Wait(evutil_socket_t fd);
  // Reads what has come of the PROXY header: goes on, closes, or waits.
  void ReadProxyHeader(evutil_socket_t fd);

  struct event event_;
  Loop& loop_;
  Generation* generation_;
  ListenerRuntime* listener_;
  std::chrono::steady_clock::time_point deadline_;
  // The client's "ip:port" (IPv6 at most 39 + 1 + 5 characters).
  char address_[46];
  uint8_t address_length_;
  uint8_t ip_length_;
  bool first_request_;
  // Before the PROXY header has ended: its bytes so far; null otherwise.
  std::unique_ptr<std::string> proxy_header_;
  // What the PROXY v2 header carried for the access log, if anything.
  std::unique_ptr<net::ProxyTlvs> proxy_tlvs_;
};

}  // namespace tandem::dispatcher
