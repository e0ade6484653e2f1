// The admin listener; see admin.h.
#include "dispatcher/admin/admin_server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "net/log.h"
#include "net/posix.h"

namespace tandem::dispatcher {
namespace {

using net::Log;
using net::LogLevel;

constexpr std::string_view kTimeoutReply =
    "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; "
    "charset=utf-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
    "408 request timeout\n";

void Send(evhttp_request* request, const AdminReply& reply) {
  evkeyvalq* headers = evhttp_request_get_output_headers(request);
  evhttp_add_header(headers, "Content-Type", reply.content_type.c_str());
  evhttp_add_header(headers, "Cache-Control", "no-store");
  evbuffer* body = evbuffer_new();
  if (body == nullptr) {
    evhttp_send_error(request, 500, "out of memory");
    return;
  }
  evbuffer_add(body, reply.body.data(), reply.body.size());
  evhttp_send_reply(request, reply.status, nullptr, body);
  evbuffer_free(body);
}

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> parts;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    std::string part(path.substr(0, slash));
    char* decoded = evhttp_uridecode(part.c_str(), 0, nullptr);
    parts.emplace_back(decoded != nullptr ? decoded : part);
    free(decoded);
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return parts;
}

}  // namespace

// evhttp in libevent 2.1 tells nothing of a connection before its first whole
// request (evhttp_set_newreqcb is 2.2's), and its timeout restarts on every
// read. So each connection's socket bufferevent is made here, in evhttp's
// bevcb: a callback on its input buffer sees every read, and once evhttp has
// set the bufferevent's callbacks (their argument is the evhttp_connection),
// a close callback on the connection tells when evhttp frees it.
struct AdminServer::Connection {
  explicit Connection(AdminServer* owner) : server(owner) {}

  AdminServer* server;         // null once the server is gone
  bufferevent* bev = nullptr;  // evhttp's; referenced by us until Attach
  evhttp_connection* evcon = nullptr;  // set by Attach
  evbuffer_cb_entry* input_watch = nullptr;
  net::EventPtr attach;    // runs once, right after evhttp took the connection
  net::EventPtr deadline;  // the request's, or the idle time's
  // Bytes of a request that has not arrived whole were read.
  bool reading = false;
  bool answered = false;  // a request on this connection was answered

  void Arm(std::chrono::seconds timeout) {
    if (deadline == nullptr) return;
    timeval tv = net::ToTimeval(timeout);
    event_add(deadline.get(), &tv);
  }

  // Drops what Connection holds of the bufferevent, which evhttp frees.
  void Release() {
    evbuffer_remove_cb_entry(bufferevent_get_input(bev), input_watch);
    delete this;
  }

  static void InputCb(evbuffer*, const evbuffer_cb_info* info, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    if (info->n_added == 0 || connection->reading) return;
    connection->reading = true;
    // The first request's time counts from the connection itself.
    if (connection->answered) connection->Arm(kRequestTimeout);
  }

  static void AttachCb(evutil_socket_t, short, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    bufferevent* bev = connection->bev;
    bufferevent_event_cb event_cb = nullptr;
    void* evcon = nullptr;
    bufferevent_getcb(bev, nullptr, nullptr, &event_cb, &evcon);
    if (event_cb != nullptr) {
      connection->evcon = static_cast<evhttp_connection*>(evcon);
      evhttp_connection_set_closecb(connection->evcon, &ClosedCb, connection);
    } else {
      // evhttp freed it already (a failed set-up, or the server stopped).
      if (connection->server != nullptr) connection->server->Closed(connection);
      connection->Release();
    }
    bufferevent_decref(bev);
  }

  static void ClosedCb(evhttp_connection*, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    if (connection->server != nullptr) connection->server->Closed(connection);
    connection->Release();
  }

  static void DeadlineCb(evutil_socket_t, short, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    if (connection->evcon == nullptr) return;
    bufferevent* bev = connection->bev;
    bool reading = connection->reading ||
                   evbuffer_get_length(bufferevent_get_input(bev)) > 0;
    if (reading && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
      // Nothing of evhttp's is queued, so the answer goes out whole; the
      // connection closes right after, so a short write is not retried.
      (void)send(bufferevent_getfd(bev), kTimeoutReply.data(),
                 kTimeoutReply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    // Runs ClosedCb, which deletes `connection`.
    evhttp_connection_free(connection->evcon);
  }
};

namespace {

// evhttp owns the admin listener and gives its error callback evhttp's own
// argument: this maps the listener back to its server (admin thread only).
std::unordered_map<evconnlistener*, AdminServer*>& ListenerOwners() {
  static std::unordered_map<evconnlistener*, AdminServer*> owners;
  return owners;
}

}  // namespace

AdminServer::AdminServer(event_base* base, AdminHandler* handler)
    : base_(base), handler_(handler) {}

AdminServer::~AdminServer() { Stop(); }

void AdminServer::Stop() {
  for (auto& [bev, connection] : connections_) {
    connection->server = nullptr;
    connection->deadline.reset();
  }
  connections_.clear();
  if (listener_ != nullptr) ListenerOwners().erase(listener_);
  listener_ = nullptr;
  accepting_ = true;
  accept_paused_ = false;
  accept_retry_.reset();
  http_.reset();
}

bufferevent* AdminServer::NewConnectionCb(event_base* base, void* arg) {
  auto* server = static_cast<AdminServer*>(arg);
  bufferevent* bev = bufferevent_socket_new(base, -1, 0);
  if (bev == nullptr) return nullptr;
  auto* connection = new Connection(server);
  connection->bev = bev;
  connection->attach.reset(
      event_new(base, -1, 0, &Connection::AttachCb, connection));
  connection->deadline.reset(
      event_new(base, -1, 0, &Connection::DeadlineCb, connection));
  connection->input_watch = evbuffer_add_cb(bufferevent_get_input(bev),
                                            &Connection::InputCb, connection);
  if (connection->attach == nullptr || connection->deadline == nullptr ||
      connection->input_watch == nullptr) {
    // evhttp then makes a bufferevent of its own; only memory is short.
    bufferevent_free(bev);
    delete connection;
    return nullptr;
  }
  // Kept alive until AttachCb looks at it, whatever evhttp does meanwhile.
  bufferevent_incref(bev);
  event_active(connection->attach.get(), EV_TIMEOUT, 0);
  connection->Arm(kRequestTimeout);
  server->connections_.emplace(bev, connection);
  server->accept_backoff_ = std::chrono::milliseconds(100);
  if (server->connections_.size() >= kMaxConnections &&
      server->listener_ != nullptr && server->accepting_) {
    server->UpdateAccepting();
    // Once a minute at most: a client holding the limit must not flood the log.
    auto now = std::chrono::steady_clock::now();
    if (server->limit_logged_at_ == std::chrono::steady_clock::time_point{} ||
        now - server->limit_logged_at_ >= std::chrono::minutes(1)) {
      server->limit_logged_at_ = now;
      Log(LogLevel::kWarn, "admin",
          "admin connection limit reached; new connections wait",
          {{"limit", kMaxConnections}});
    }
  }
  return bev;
}

void AdminServer::Closed(Connection* connection) {
  connections_.erase(connection->bev);
  if (accept_paused_) {
    // A descriptor is free again: try at once.
    accept_paused_ = false;
    if (accept_retry_) event_del(accept_retry_.get());
  }
  UpdateAccepting();
}

void AdminServer::UpdateAccepting() {
  if (listener_ == nullptr) return;
  bool want = connections_.size() < kMaxConnections && !accept_paused_;
  if (want == accepting_) return;
  if (want) {
    evconnlistener_enable(listener_);
  } else {
    evconnlistener_disable(listener_);
  }
  accepting_ = want;
}

void AdminServer::AcceptErrorCb(evconnlistener* listener, void*) {
  int error = EVUTIL_SOCKET_ERROR();
  auto owner = ListenerOwners().find(listener);
  if (owner == ListenerOwners().end()) return;
  AdminServer* server = owner->second;
  if (error != EMFILE && error != ENFILE && error != ENOBUFS &&
      error != ENOMEM) {
    return;  // ECONNABORTED and the like concern one connection only
  }
  if (server->accept_paused_) return;
  if (!server->accept_retry_) {
    server->accept_retry_.reset(
        evtimer_new(server->base_, &AdminServer::AcceptRetryCb, server));
    if (!server->accept_retry_) return;
  }
  server->accept_paused_ = true;
  server->UpdateAccepting();
  timeval tv = net::ToTimeval(server->accept_backoff_);
  evtimer_add(server->accept_retry_.get(), &tv);
  Log(LogLevel::kWarn, "admin", "admin accepting paused",
      {{"error", net::ErrorText(error)},
       {"retry_ms", static_cast<int64_t>(server->accept_backoff_.count())}});
  server->accept_backoff_ =
      std::min(server->accept_backoff_ * 2, std::chrono::milliseconds(1000));
}

void AdminServer::AcceptRetryCb(evutil_socket_t, short, void* arg) {
  auto* server = static_cast<AdminServer*>(arg);
  server->accept_paused_ = false;
  server->UpdateAccepting();
}

bool AdminServer::Start(const conf::Admin& config, std::string* error) {
  Stop();
  http_.reset(evhttp_new(base_));
  if (!http_) {
    *error = "cannot create the admin HTTP server";
    return false;
  }
  evhttp_set_gencb(http_.get(), RequestCb, this);
  evhttp_set_bevcb(http_.get(), NewConnectionCb, this);
  evhttp_set_allowed_methods(
      http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
  // A backstop only: each connection's own deadline (Connection) is shorter.
  evhttp_set_timeout(http_.get(), 30);
  evhttp_set_max_headers_size(http_.get(), kMaxHeadBytes);
  evhttp_set_max_body_size(http_.get(), kMaxBodyBytes);
  token_ = config.token;

  evutil_socket_t fd =
      socket(config.listen.sa()->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("admin socket: ") + strerror(errno);
    return false;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, config.listen.sa(), config.listen.length) != 0 ||
      listen(fd, 128) != 0 || evutil_make_socket_nonblocking(fd) != 0) {
    *error = "admin listen " + config.listen.text + ": " + strerror(errno);
    evutil_closesocket(fd);
    return false;
  }
  sockaddr_storage bound;
  socklen_t length = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  port_ = ntohs(bound.ss_family == AF_INET6
                    ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                    : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  evhttp_bound_socket* handle =
      evhttp_accept_socket_with_handle(http_.get(), fd);
  if (handle == nullptr) {
    *error = "admin listener: cannot accept";
    evutil_closesocket(fd);
    return false;
  }
  bound_ = handle;
  listener_ = evhttp_bound_socket_get_listener(handle);
  ListenerOwners()[listener_] = this;
  evconnlistener_set_error_cb(listener_, &AdminServer::AcceptErrorCb);
  return true;
}

void AdminServer::StopAccepting() {
  if (bound_ == nullptr) return;
  evhttp_del_accept_socket(http_.get(), bound_);  // closes the socket
  bound_ = nullptr;
  ListenerOwners().erase(listener_);
  listener_ = nullptr;
}

void AdminServer::RequestCb(evhttp_request* request, void* arg) {
  auto* server = static_cast<AdminServer*>(arg);
  server->Handle(request);
  // The answer is queued: the idle time starts, or a pipelined request's.
  evhttp_connection* evcon = evhttp_request_get_connection(request);
  bufferevent* bev =
      evcon != nullptr ? evhttp_connection_get_bufferevent(evcon) : nullptr;
  auto it = server->connections_.find(bev);
  if (it == server->connections_.end()) return;
  Connection* connection = it->second;
  connection->answered = true;
  connection->reading = evbuffer_get_length(bufferevent_get_input(bev)) > 0;
  connection->Arm(connection->reading ? kRequestTimeout : kIdleTimeout);
}

bool AdminServer::Authorized(evhttp_request* request) const {
  if (token_.empty()) return false;
  const char* header = evhttp_find_header(
      evhttp_request_get_input_headers(request), "Authorization");
  if (header == nullptr) return false;
  std::string_view value(header);
  constexpr std::string_view kBearer = "Bearer ";
  if (value.size() != kBearer.size() + token_.size() ||
      value.substr(0, kBearer.size()) != kBearer) {
    return false;
  }
  // Constant time, so response timing says nothing about the token.
  return CRYPTO_memcmp(value.data() + kBearer.size(), token_.data(),
                       token_.size()) == 0;
}

void AdminServer::Handle(evhttp_request* request) {
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(request);
  const char* raw_path = uri != nullptr ? evhttp_uri_get_path(uri) : nullptr;
  std::string path =
      raw_path != nullptr && raw_path[0] != '\0' ? raw_path : "/";
  evhttp_cmd_type method = evhttp_request_get_command(request);
  bool read_only = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;

  AdminReply reply;
  if (path == "/healthz" && read_only) {
    reply.body = "ok\n";
  } else if (path == "/readyz" && read_only) {
    bool ready = handler_->Ready();
    reply.status = ready ? 200 : 503;
    reply.body = ready ? "ready\n" : "not ready\n";
  } else if (path == "/status" && read_only) {
    reply.content_type = "application/json";
    reply.body = handler_->StatusJson();
  } else if (path == "/metrics" && read_only) {
    reply.content_type = "text/plain; version=0.0.4; charset=utf-8";
    reply.body = handler_->MetricsText();
  } else if (path == "/" && read_only) {
    reply.content_type = "text/html; charset=utf-8";
    reply.body = DashboardHtml();
  } else if (path.rfind("/admin/", 0) == 0) {
    if (method != EVHTTP_REQ_POST) {
      reply.status = 405;
      reply.body = "use POST\n";
    } else if (!Authorized(request)) {
      reply.status = 401;
      reply.body = "missing or wrong bearer token\n";
      evhttp_add_header(evhttp_request_get_output_headers(request),
                        "WWW-Authenticate", "Bearer");
    } else {
      std::vector<std::string> parts = SplitPath(path);
      if (parts.size() == 2 && parts[1] == "reload") {
        reply = handler_->Reload();
      } else if (parts.size() == 6 && parts[1] == "clusters" &&
                 parts[3] == "backends" &&
                 (parts[5] == "drain" || parts[5] == "enable" ||
                  parts[5] == "disable")) {
        reply = handler_->BackendAction(parts[2], parts[4], parts[5]);
      } else {
        reply.status = 404;
        reply.body = "no such admin call\n";
      }
    }
  } else {
    reply.status = 404;
    reply.body = "not found\n";
  }
  Send(request, reply);
}

}  // namespace tandem::dispatcher
