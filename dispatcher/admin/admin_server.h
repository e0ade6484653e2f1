// The admin listener: /healthz, /readyz, /status, /metrics, the dashboard and
// the token-guarded /admin/* calls. It runs on the control loop with libevent's
// evhttp (whole-message buffering is fine here; the data path never uses it).
#pragma once

#include <event2/http.h>

#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>

#include "conf/config.h"
#include "net/event_ptr.h"

namespace tandem::dispatcher {

struct AdminReply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// What the admin listener asks of the rest of tandem; called on the control
// loop's thread.
class AdminHandler {
 public:
  virtual ~AdminHandler() = default;
  virtual bool Ready() = 0;
  virtual std::string StatusJson() = 0;
  virtual std::string MetricsText() = 0;
  virtual AdminReply Reload() = 0;
  // `action` is "drain", "enable" or "disable".
  virtual AdminReply BackendAction(const std::string& cluster,
                                   const std::string& address,
                                   const std::string& action) = 0;
};

// Anyone who reaches the admin port may connect (/healthz, /status and /metrics
// need no token), so every connection is bounded: its head (kMaxHeadBytes;
// evhttp answers 400 and closes), its body (kMaxBodyBytes; 413), the time its
// request takes to arrive whole (kRequestTimeout from the connection, or from
// a later request's first byte; 408 and close), the time from an answer being
// queued to the next request's first byte (kIdleTimeout; close), and their
// number (kMaxConnections; beyond it the listener stops accepting, so new
// connections wait in the kernel's accept queue until one closes, as with
// HAProxy's maxconn, instead of costing an accept and a close each).
class AdminServer {
 public:
  static constexpr size_t kMaxHeadBytes = 16 * 1024;
  static constexpr size_t kMaxBodyBytes = 64 * 1024;
  static constexpr std::chrono::seconds kRequestTimeout{10};
  static constexpr std::chrono::seconds kIdleTimeout{10};
  static constexpr size_t kMaxConnections = 64;

  AdminServer(event_base* base, AdminHandler* handler);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds `config.listen`; false with `error` set on failure. Called again,
  // it first closes the running listener and its connections.
  bool Start(const conf::Admin& config, std::string* error);
  // The token for mutating calls may change on reload.
  void set_token(std::string token) { token_ = std::move(token); }
  // Closes the listening socket (a reload moved or removed the listener);
  // requests on connections already open are answered until destruction.
  void StopAccepting();
  uint16_t port() const { return port_; }

 private:
  struct HttpDeleter {
    void operator()(evhttp* http) const { evhttp_free(http); }
  };
  // One admin connection: its deadline and where its request stands (admin.cc).
  struct Connection;

  static void RequestCb(evhttp_request* request, void* arg);
  static bufferevent* NewConnectionCb(event_base* base, void* arg);
  // Out of descriptors or memory: accepting pauses (100 ms, doubling to 1 s
  // while it keeps failing, or until a connection closes), as the data
  // listeners do, instead of a level-triggered listener firing at once again.
  static void AcceptErrorCb(evconnlistener* listener, void* arg);
  static void AcceptRetryCb(evutil_socket_t, short, void* arg);
  // Accepting on when neither the connection limit nor a pause holds it.
  void UpdateAccepting();
  void Handle(evhttp_request* request);
  bool Authorized(evhttp_request* request) const;
  // Called when evhttp has freed `connection`'s bufferevent.
  void Closed(Connection* connection);
  // Frees the evhttp server with its connections and listener; the
  // connections' last callbacks may run later and no longer reach us.
  void Stop();

  event_base* base_;
  AdminHandler* handler_;
  std::unique_ptr<evhttp, HttpDeleter> http_;
  evhttp_bound_socket* bound_ = nullptr;  // owned by http_
  evconnlistener* listener_ = nullptr;    // owned by http_
  bool accepting_ = true;
  bool accept_paused_ = false;  // by an accept error, until the retry timer
  std::chrono::milliseconds accept_backoff_{100};
  net::EventPtr accept_retry_;
  std::chrono::steady_clock::time_point limit_logged_at_;
  // Keyed by the connection's bufferevent, as a request names it.
  std::unordered_map<bufferevent*, Connection*> connections_;
  std::string token_;
  uint16_t port_ = 0;
};

// The dashboard page (self-contained HTML, CSS and JS).
std::string_view DashboardHtml();

}  // namespace tandem::dispatcher
