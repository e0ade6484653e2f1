// A plain client connection that has been idle for a while between requests,
// at the cost of its socket, one event and where it belongs: the
// bufferevent, the request parser and the exchange state of its
// ClientConnection go back to the allocator, as nginx's
// ngx_http_set_keepalive() frees an idle connection's buffers and HAProxy's
// h1_release_buf() does. Its next byte (or the client's close) brings a
// ClientConnection back; its deadline passing closes it. docs/idle.md.
#pragma once

#include <event2/event_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>

namespace tandem::dispatcher {

class Generation;
class Loop;
struct ListenerRuntime;

class ParkedConnection {
 public:
  // The client's address as the connection was accepted with.
  union Address {
    sockaddr any;
    sockaddr_in v4;
    sockaddr_in6 v6;
  };

  // Takes `fd` (a plain, idle connection whose buffers are empty) and waits
  // for it to become readable until `deadline`. False when the event could
  // not be added: `fd` is then still the caller's.
  static bool Park(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, evutil_socket_t fd,
                   const sockaddr* address,
                   std::chrono::steady_clock::time_point deadline,
                   bool first_request);

  // Closes the socket (shutdown, grace over, loop gone).
  void Close();

  // Intrusive list of a loop's parked connections.
  ParkedConnection* next = nullptr;
  ParkedConnection* prev = nullptr;

 private:
  ParkedConnection(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, const sockaddr* address,
                   std::chrono::steady_clock::time_point deadline,
                   bool first_request);
  ~ParkedConnection();
  static void EventCb(evutil_socket_t fd, short what, void* arg);

  struct event event_;
  Loop& loop_;
  Generation* generation_;
  ListenerRuntime* listener_;
  std::chrono::steady_clock::time_point deadline_;
  Address address_;
  bool first_request_;
};

}  // namespace tandem::dispatcher
