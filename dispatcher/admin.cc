// The admin listener; see admin.h.
#include "dispatcher/admin.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <sys/socket.h>

#include <cstring>
#include <string_view>
#include <vector>

namespace tandem::dispatcher {
namespace {

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

AdminServer::AdminServer(event_base* base, AdminHandler* handler)
    : base_(base), handler_(handler) {}

AdminServer::~AdminServer() = default;

bool AdminServer::Start(const conf::Admin& config, std::string* error) {
  http_.reset(evhttp_new(base_));
  if (!http_) {
    *error = "cannot create the admin HTTP server";
    return false;
  }
  evhttp_set_gencb(http_.get(), RequestCb, this);
  evhttp_set_allowed_methods(
      http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
  evhttp_set_timeout(http_.get(), 30);
  evhttp_set_max_body_size(http_.get(), 64 * 1024);
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
  bound_ = evhttp_accept_socket_with_handle(http_.get(), fd);
  if (bound_ == nullptr) {
    *error = "admin listener: cannot accept";
    evutil_closesocket(fd);
    return false;
  }
  return true;
}

void AdminServer::StopAccepting() {
  if (bound_ == nullptr) return;
  evhttp_del_accept_socket(http_.get(), bound_);  // closes the socket
  bound_ = nullptr;
}

void AdminServer::RequestCb(evhttp_request* request, void* arg) {
  static_cast<AdminServer*>(arg)->Handle(request);
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
