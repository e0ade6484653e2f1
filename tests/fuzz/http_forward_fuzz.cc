// Fuzz target for the heads tandem forwards: any bytes parsed as a request
// (or as a response); for every head that parses, the head the proxy would
// send on (AppendRequestHead / PlanResponse + AppendResponseHead, as
// ClientConnection calls them) must be CRLF-framed, parse again strictly
// with the same parser, and carry no hop-by-hop field (RFC 9110 §7.6.1):
// no Connection, Keep-Alive or Proxy-Connection, TE only as "trailers",
// Transfer-Encoding and Upgrade only as the writer frames them, and none of
// the fields the original Connection listed.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.h"
#include "net/http_message.h"
#include "net/http_parser.h"

namespace {

using tandem::fuzz::Check;
using tandem::net::AppendRequestHead;
using tandem::net::AppendResponseHead;
using tandem::net::EqualsIgnoreCase;
using tandem::net::Framing;
using tandem::net::HasToken;
using tandem::net::HeaderList;
using tandem::net::HttpParser;
using tandem::net::PlanResponse;
using tandem::net::RequestForwarding;
using tandem::net::ResponsePlan;
using tandem::net::WantsUpgrade;

struct Settings {
  bool response = false;
  bool client_tls = false;
  bool client_ipv6 = false;
  bool head_request = false;
  int client_minor = 1;
  bool client_keep_alive = true;
};

// The names the Connection fields of `headers` list.
std::vector<std::string> ConnectionNames(const HeaderList& headers) {
  std::vector<std::string> names;
  for (size_t i = 0; i < headers.size(); ++i) {
    if (!EqualsIgnoreCase(headers.name(i), "connection")) continue;
    std::string_view list = headers.value(i);
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string_view item = list.substr(0, comma);
      while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
        item.remove_prefix(1);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
        item.remove_suffix(1);
      if (!item.empty()) names.emplace_back(item);
      if (comma == std::string_view::npos) break;
      list.remove_prefix(comma + 1);
    }
  }
  return names;
}

bool IsOneOf(std::string_view name,
             std::initializer_list<std::string_view> names) {
  for (std::string_view n : names)
    if (EqualsIgnoreCase(name, n)) return true;
  return false;
}

// Records the head of the re-parsed message; never reads a body.
class HeadOnly : public HttpParser::Handler {
 public:
  HeadOnly(bool request, bool skip_body)
      : request_(request), skip_body_(skip_body) {}
  HttpParser::HeadAction OnHeadComplete(HttpParser&) override {
    ++heads;
    if (skip_body_) return HttpParser::HeadAction::kSkipBody;
    // A request stops right after its head; a response reads on into a
    // body that is not there.
    return request_ ? HttpParser::HeadAction::kPause
                    : HttpParser::HeadAction::kContinue;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}
  int heads = 0;

 private:
  bool request_;
  bool skip_body_;
};

// Parses `sent` as one head with a fresh parser of `type`: it must be
// CRLF-framed, whole and valid; `check` then inspects that parser.
template <typename Fn>
void Reparse(HttpParser::Type type, const std::string& sent, bool skip_body,
             Fn&& check) {
  tandem::fuzz::CheckCrlfOnly(sent);
  HeadOnly handler(type == HttpParser::Type::kRequest, skip_body);
  HttpParser parser(type, &handler);
  // The head sent may hold a few fields more than the one received.
  parser.set_max_head_bytes(sent.size() + 1);
  parser.set_max_fields(1000);
  size_t used = 0;
  HttpParser::Result result = parser.Execute(sent.data(), sent.size(), &used);
  Check(result != HttpParser::Result::kError);
  Check(handler.heads == 1);
  Check(used == sent.size());
  check(parser);
}

class ForwardingHandler : public HttpParser::Handler {
 public:
  explicit ForwardingHandler(const Settings& settings) : settings_(settings) {}

  HttpParser::HeadAction OnHeadComplete(HttpParser& parser) override {
    if (settings_.response) {
      ForwardResponse(parser);
      return settings_.head_request ? HttpParser::HeadAction::kSkipBody
                                    : HttpParser::HeadAction::kContinue;
    }
    ForwardRequest(parser);
    return parser.framing() == Framing::kNone
               ? HttpParser::HeadAction::kContinue
               : HttpParser::HeadAction::kPause;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}

 private:
  void ForwardRequest(const HttpParser& request) {
    RequestForwarding forwarding;
    forwarding.client_ip = settings_.client_ipv6 ? "2001:db8::7" : "192.0.2.7";
    forwarding.client_tls = settings_.client_tls;
    forwarding.upgrade = WantsUpgrade(request);
    forwarding.default_host = "backend.test:8080";
    std::string sent;
    AppendRequestHead(request, forwarding, &sent);
    const std::vector<std::string> listed = ConnectionNames(request.headers());
    const Framing framing = request.framing();
    const std::string codings = std::string(request.transfer_codings());
    Reparse(
        HttpParser::Type::kRequest, sent, false, [&](const HttpParser& again) {
          Check(again.http_minor() == 1);
          Check(again.method() == request.method());
          Check(!again.target().empty());
          Check(again.target()[0] == '/' || again.target() == "*");
          Check(again.framing() == framing);
          const HeaderList& headers = again.headers();
          for (size_t i = 0; i < headers.size(); ++i) {
            std::string_view name = headers.name(i);
            std::string_view value = headers.value(i);
            if (EqualsIgnoreCase(name, "connection")) {
              Check(forwarding.upgrade && value == "upgrade");
            } else if (EqualsIgnoreCase(name, "upgrade")) {
              Check(forwarding.upgrade);
            } else if (EqualsIgnoreCase(name, "te")) {
              Check(value == "trailers");
            } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
              Check(framing == Framing::kChunked);
              Check(value == (codings.empty() ? std::string("chunked")
                                              : codings + ", chunked"));
            }
            Check(!IsOneOf(name, {"keep-alive", "proxy-connection", "expect"}));
            // Fields the writer sets itself are not the client's.
            if (IsOneOf(name,
                        {"host", "x-forwarded-for", "forwarded",
                         "x-forwarded-proto", "content-length",
                         "transfer-encoding", "te", "connection", "upgrade"})) {
              continue;
            }
            for (const std::string& listed_name : listed)
              Check(!EqualsIgnoreCase(name, listed_name));
          }
          Check(headers.Count("host") == 1);
        });
  }

  void ForwardResponse(const HttpParser& response) {
    // As ClientConnection::OnResponseHead: 100 is tandem's own, other 1xx
    // go to HTTP/1.1 clients with an empty plan; an unasked 101 is refused.
    const int status = response.status_code();
    ResponsePlan plan;
    if (status >= 100 && status < 200 && status != 101) {
      if (status == 100 || settings_.client_minor < 1) return;
    } else {
      plan = PlanResponse(response, settings_.head_request,
                          settings_.client_minor, settings_.client_keep_alive);
      if (plan.framing == Framing::kUntilClose) plan.close = true;
    }
    std::string sent;
    AppendResponseHead(response, plan, settings_.client_minor,
                       settings_.head_request, &sent);
    const std::vector<std::string> listed = ConnectionNames(response.headers());
    const std::string codings = std::string(response.transfer_codings());
    const bool close_delimited_codings =
        plan.framing == Framing::kUntilClose &&
        response.framing() == Framing::kUntilClose && !codings.empty();
    Reparse(HttpParser::Type::kResponse, sent, settings_.head_request,
            [&](const HttpParser& again) {
              Check(again.status_code() == status);
              Check(again.reason() == response.reason());
              const HeaderList& headers = again.headers();
              for (size_t i = 0; i < headers.size(); ++i) {
                std::string_view name = headers.name(i);
                std::string_view value = headers.value(i);
                if (EqualsIgnoreCase(name, "connection")) {
                  Check(status == 101
                            ? value == "upgrade"
                            : value == "close" || value == "keep-alive");
                } else if (EqualsIgnoreCase(name, "upgrade")) {
                  Check(status == 101);
                } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
                  if (plan.framing == Framing::kChunked) {
                    Check(value == (codings.empty() ? std::string("chunked")
                                                    : codings + ", chunked"));
                  } else {
                    Check(close_delimited_codings && value == codings);
                  }
                }
                Check(!IsOneOf(name, {"keep-alive", "proxy-connection", "te"}));
                if (IsOneOf(name, {"content-length", "transfer-encoding",
                                   "connection", "upgrade"})) {
                  continue;
                }
                for (const std::string& listed_name : listed)
                  Check(!EqualsIgnoreCase(name, listed_name));
              }
            });
  }

  Settings settings_;
};

void Run(const uint8_t* data, size_t size) {
  if (size < 2) return;
  const size_t step = 1 + data[0] % 64;
  const uint8_t flags = data[1];
  data += 2;
  size -= 2;
  Settings settings;
  settings.response = flags & 1;
  settings.client_tls = flags & 2;
  settings.client_ipv6 = flags & 4;
  settings.head_request = flags & 8;
  settings.client_minor = (flags & 16) ? 0 : 1;
  settings.client_keep_alive = !(flags & 32);

  ForwardingHandler handler(settings);
  HttpParser parser(settings.response ? HttpParser::Type::kResponse
                                      : HttpParser::Type::kRequest,
                    &handler);
  parser.set_max_head_bytes(8192);
  size_t pos = 0;
  while (pos < size) {
    size_t length = std::min(step, size - pos);
    size_t used = 0;
    HttpParser::Result result = parser.Execute(
        reinterpret_cast<const char*>(data) + pos, length, &used);
    pos += used;
    if (result == HttpParser::Result::kError ||
        result == HttpParser::Result::kUpgrade) {
      return;
    }
    if (result == HttpParser::Result::kComplete ||
        result == HttpParser::Result::kPausedHead) {
      parser.Resume();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Run(data, size);
  return 0;
}
