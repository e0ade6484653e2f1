// Connections to one backend from one loop thread: connecting, and a LIFO
// pool of idle keep-alive connections (nginx's upstream keepalive cache,
// HAProxy's idle connection list). Nothing here is shared between threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "dispatcher/proxy/stats.h"
#include "net/direct_io.h"
#include "net/event_ptr.h"
#include "net/tls_client.h"

namespace tandem::dispatcher {

class BackendPool;
class H2Session;
class H2Upstream;
class H2UpstreamStream;
class UpstreamConnection;

// Whoever is using an upstream connection for an exchange receives its events.
class UpstreamUser {
 public:
  virtual ~UpstreamUser() = default;
  virtual void OnUpstreamConnected(UpstreamConnection& connection) = 0;
  virtual void OnUpstreamRead(UpstreamConnection& connection) = 0;
  // The output buffer fell to its low-water mark.
  virtual void OnUpstreamDrained(UpstreamConnection& connection) = 0;
  // EOF, error or refused connect (BEV_EVENT_* flags in `events`). The
  // connection is still valid; the user closes or releases it.
  virtual void OnUpstreamClosed(UpstreamConnection& connection,
                                short events) = 0;
};

class UpstreamConnection {
 public:
  UpstreamConnection(const UpstreamConnection&) = delete;
  UpstreamConnection& operator=(const UpstreamConnection&) = delete;

  // The socket's bufferevent; null for an HTTP/2 stream's end.
  bufferevent* bev() const { return bev_.get(); }
  // What the backend sent, and what goes to it.
  evbuffer* input() const { return input_; }
  evbuffer* output() const { return output_; }
  // The TLS connection under a socket, or null.
  SSL* ssl() const { return ssl_; }
  BackendPool& pool() const { return pool_; }
  // True when the connection carried an earlier exchange (it may have been
  // closed by the backend while idle, so a failure is worth one more try).
  bool reused() const { return reused_; }
  bool connected() const { return connected_; }
  // An HTTP/2 stream's end whose stream never reached the backend (refused,
  // above a GOAWAY's last id, or its connection failed first).
  bool h2_refused() const { return h2_stream_ != nullptr && reused_; }
  // Why the connect failed (ECONNREFUSED, ETIMEDOUT...), 0 when unknown.
  int connect_error() const { return connect_error_; }
  // Replaces the user; used when an exchange hands the connection over.
  void set_user(UpstreamUser* user) { user_ = user; }
  // A new request is about to be written: request_started() turns true once
  // its first byte has left the output buffer.
  void StartRequest() { request_started_ = false; }
  // False while no byte of the current request has been written: a response
  // arriving then was not sent for it (a stray answer on a pooled connection).
  bool request_started() const { return request_started_; }
  // Bytes were added to the output: they leave at the end of this loop turn
  // (net::WriteBehind, or the stream's session) once the connection is
  // established, else when libevent finds the socket writable.
  void WriteSoon();
  // An exchange starts on the connection: reading and writing on, and
  // OnUpstreamDrained once the output falls to kOutputLowWater. False when
  // the socket cannot be watched.
  bool Open();
  // Reading the response on or off (the client takes it too slowly).
  void SetReading(bool on);
  // An HTTP/2 stream's end whose worker has sent nothing on the stream yet:
  // the body bytes the worker can take meanwhile (its stream window). Until
  // the worker sends something, a refusal leaves the request never reached,
  // so the body taken from the client is kept for a retry (Exchange). None
  // for a socket, and once the worker sent a frame on the stream.
  std::optional<uint32_t> window_before_heard() const;

 private:
  friend class BackendPool;
  friend class H2UpstreamStream;  // makes the try's end of a stream
  friend class H2Upstream;
  // A socket's connection.
  UpstreamConnection(BackendPool& pool, net::BufferEventPtr bev);
  // An HTTP/2 stream's end: `stream` reads the output and fills the input.
  UpstreamConnection(BackendPool& pool, H2UpstreamStream* stream);
  ~UpstreamConnection();

  static void ReadCb(bufferevent* bev, void* arg);
  static void WriteCb(bufferevent* bev, void* arg);
  static void EventCb(bufferevent* bev, short events, void* arg);
  static void OutputCb(evbuffer* buffer, const evbuffer_cb_info* info,
                       void* arg);
  // True when bytes the backend sent while the connection was idle have been
  // read already.
  bool HasUnreadInput() const;

  BackendPool& pool_;
  net::BufferEventPtr bev_;
  // An HTTP/2 stream's end has buffers of its own (null for a socket).
  net::EvbufferPtr stream_input_;
  net::EvbufferPtr stream_output_;
  evbuffer* input_;
  evbuffer* output_;
  SSL* ssl_ = nullptr;  // the socket's TLS connection (the bufferevent's)
  UpstreamUser* user_ = nullptr;  // null while idle in the pool
  bool connected_ = false;
  bool reused_ = false;
  bool idle_ = false;  // in the pool's idle list
  bool request_started_ = true;
  evbuffer_cb_entry* output_watch_ = nullptr;  // OutputCb on the output
  net::WriteBehind::Slot write_slot_;
  uint32_t tls_generation_ = 0;  // the pool's, when this one was made
  std::string preamble_;         // sent first (a PROXY header), or empty
  // The HTTP/2 stream this connection is the end of (null: a socket).
  H2UpstreamStream* h2_stream_ = nullptr;
  int connect_error_ = 0;
  std::chrono::steady_clock::time_point since_;  // connect start, or idle since
  // Intrusive list of every connection of the pool.
  UpstreamConnection* prev_ = nullptr;
  UpstreamConnection* next_ = nullptr;
};

class BackendPool : public net::TlsSessionSink {
 public:
  BackendPool(event_base* base, net::WriteBehind& write_behind,
              const conf::SocketAddress& address, BackendStats* stats);
  ~BackendPool() override;
  BackendPool(const BackendPool&) = delete;
  BackendPool& operator=(const BackendPool&) = delete;

  const conf::SocketAddress& address() const { return address_; }
  // HTTP/2 to this backend (cluster protocol h2 or h2c): requests become
  // streams of shared connections (H2Upstream); the calls below take and
  // give back streams instead of connections.
  void set_http2(bool tls, uint64_t max_requests_per_connection);
  // TLS to this backend (null: plain TCP); new connections use it and resume
  // the last session the backend issued. When `settings` (what the context
  // verifies and sends) differ from the last call's, connections and the
  // session made under the old ones are never used again.
  void set_tls(std::shared_ptr<net::TlsClientContext> tls,
               const std::string& settings);
  void StoreSession(SSL_SESSION* session) override;

  // An idle connection handed to `user`, most recently used first, among
  // those opened with `preamble` (a PROXY header names one client: such a
  // connection serves that client only); nullptr when none is idle. A
  // connection holding bytes the backend sent while it was idle is closed
  // instead of handed out: they must never reach the next exchange (bytes
  // still in the kernel are caught by request_started()).
  UpstreamConnection* TakeIdle(UpstreamUser* user,
                               std::string_view preamble = {});

  // Starts a new connection for `user`, who later gets OnUpstreamConnected
  // or OnUpstreamClosed. nullptr when no socket could be made.
  // `counted`: the caller already counted it against max_connections; the
  // pool gives that count back when the connection closes or cannot be made.
  // `preamble` (a PROXY header) goes first, before any TLS byte.
  UpstreamConnection* Connect(UpstreamUser* user, bool counted = false,
                              std::string preamble = {});

  // Takes back a connection whose exchange completed cleanly and keeps it
  // idle; CloseIdle() later trims the pool to `max_idle`.
  void Release(UpstreamConnection* connection, uint32_t max_idle);

  // Closes and frees a connection (idle or not).
  void Close(UpstreamConnection* connection);

  // Closes idle connections older than `max_age` (every one when zero), and
  // beyond `keep` those idle for a second or more.
  void CloseIdle(std::chrono::steady_clock::duration max_age,
                 size_t keep = SIZE_MAX);

  // Requests that could go at once without a new connection.
  size_t idle_count() const;
  // Connections across threads, for a max_connections limit (null: none).
  // The max_connections counter this pool's connections count in (null: no
  // limit). A reload that adds, removes or replaces it moves the connections
  // already open to the new one, so their closing later balances it.
  void set_shared_connections(std::shared_ptr<std::atomic<uint32_t>> counter) {
    if (counter == shared_connections_) return;
    const auto open = static_cast<uint32_t>(count_);
    if (shared_connections_)
      shared_connections_->fetch_sub(open, std::memory_order_relaxed);
    if (counter) counter->fetch_add(open, std::memory_order_relaxed);
    shared_connections_ = std::move(counter);
  }
  uint32_t shared_connections() const {
    return shared_connections_
               ? shared_connections_->load(std::memory_order_relaxed)
               : 0;
  }
  size_t connection_count() const { return count_; }

 private:
  friend class UpstreamConnection;
  friend class H2Session;         // its connection is a socket of the pool
  friend class H2UpstreamStream;  // its pair is made on the pool's base
  void OnIdleEvent(UpstreamConnection* connection);
  // A socket connection (HTTP/1.1, or an HTTP/2 session's), and its end.
  UpstreamConnection* ConnectSocket(UpstreamUser* user, bool counted,
                                    std::string preamble);
  void CloseSocket(UpstreamConnection* connection);

  event_base* base_;
  net::WriteBehind& write_behind_;
  conf::SocketAddress address_;
  BackendStats* stats_;
  std::shared_ptr<std::atomic<uint32_t>> shared_connections_;
  std::shared_ptr<net::TlsClientContext> tls_;
  SSL_SESSION* session_ = nullptr;
  std::string tls_settings_;
  uint32_t tls_generation_ = 0;            // bumped when tls_settings_ change
  std::vector<UpstreamConnection*> idle_;  // oldest first
  UpstreamConnection* head_ = nullptr;
  size_t count_ = 0;
  std::unique_ptr<H2Upstream> h2_;  // null: HTTP/1.1
};

}  // namespace tandem::dispatcher
