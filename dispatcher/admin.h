// The admin listener: /healthz, /readyz, /status, /metrics, the dashboard and
// the token-guarded /admin/* calls. It runs on the control loop with libevent's
// evhttp (whole-message buffering is fine here; the data path never uses it).
#pragma once

#include <event2/http.h>

#include <memory>
#include <string>

#include "conf/config.h"
#include "dispatcher/event_ptr.h"

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

class AdminServer {
 public:
  AdminServer(event_base* base, AdminHandler* handler);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds `config.listen`; false with `error` set on failure.
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
  static void RequestCb(evhttp_request* request, void* arg);
  void Handle(evhttp_request* request);
  bool Authorized(evhttp_request* request) const;

  event_base* base_;
  AdminHandler* handler_;
  std::unique_ptr<evhttp, HttpDeleter> http_;
  evhttp_bound_socket* bound_ = nullptr;  // owned by http_
  std::string token_;
  uint16_t port_ = 0;
};

// The dashboard page (self-contained HTML, CSS and JS).
std::string_view DashboardHtml();

}  // namespace tandem::dispatcher
