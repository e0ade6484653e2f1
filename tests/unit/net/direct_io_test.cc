// Tests of tandem's own reads and writes on libevent bufferevents over a real
// socket pair, on an event base made as the proxy's loops make theirs.
#include "net/direct_io.h"

#include <doctest/doctest.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/net/loop_turn.h"

namespace tandem::net {
namespace {

// An event base as the proxy's loops make theirs.
EventBasePtr LoopBase() {
  EventBasePtr base = NewEventBase(BaseLocking::kUnlocked);
  REQUIRE(base != nullptr);
  return base;
}

struct Pair {
  EventBasePtr base = LoopBase();
  BufferEventPtr bev;  // our end
  int peer = -1;       // the other end, read and written directly
  Pair() {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    REQUIRE(evutil_make_socket_nonblocking(fds[0]) == 0);
    bev.reset(
        bufferevent_socket_new(base.get(), fds[0], BEV_OPT_CLOSE_ON_FREE));
    REQUIRE(bev != nullptr);
    peer = fds[1];
  }
  ~Pair() {
    if (peer >= 0) close(peer);
  }
  std::string Drain() {  // what the peer can read now
    std::string text;
    char buf[65536];
    for (;;) {
      ssize_t n = recv(peer, buf, sizeof(buf), MSG_DONTWAIT);
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    return text;
  }
  void Once() { event_base_loop(base.get(), EVLOOP_ONCE | EVLOOP_NONBLOCK); }
};

struct Seen {
  std::string read;
  int reads = 0;
  int drained = 0;
  short events = 0;
};

void OnRead(bufferevent* bev, void* arg) {
  auto* seen = static_cast<Seen*>(arg);
  ++seen->reads;
  evbuffer* input = bufferevent_get_input(bev);
  std::string chunk(evbuffer_get_length(input), '\0');
  evbuffer_remove(input, chunk.data(), chunk.size());
  seen->read += chunk;
}

void OnReadKeep(bufferevent*, void* arg) { ++static_cast<Seen*>(arg)->reads; }

void OnDrained(bufferevent*, void* arg) { ++static_cast<Seen*>(arg)->drained; }

void OnEvent(bufferevent*, short events, void* arg) {
  static_cast<Seen*>(arg)->events |= events;
}

std::string Pattern(size_t length) {
  std::string text(length, '\0');
  for (size_t i = 0; i < length; ++i) text[i] = static_cast<char>('a' + i % 23);
  return text;
}

// A pair whose reading and writing are enabled with nothing to write (so
// libevent has dropped its write event, as on any idle connection of the
// proxy), and a WriteBehind for it.
struct Behind {
  Pair pair;
  Seen seen;
  WriteBehind behind{pair.base.get()};
  WriteBehind::Slot slot;
  Behind() {
    REQUIRE(behind.ok());
    bufferevent_setcb(pair.bev.get(), nullptr, OnDrained, OnEvent, &seen);
    REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ | EV_WRITE) == 0);
    pair.Once();
    REQUIRE(event_pending(&pair.bev->ev_write, EV_WRITE, nullptr) == 0);
    seen.drained = 0;
  }
  // Queues `text` from inside a loop callback, as the proxy does, asks for
  // the write twice, cancels it if `cancel`; that one loop turn runs.
  void Queue(const char* text, bool cancel) {
    InTurn(pair.base.get(), [&] {
      bufferevent* bev = pair.bev.get();
      bufferevent_write(bev, text, 6);
      behind.Add(bev, &slot);
      bufferevent_write(bev, text + 6, std::strlen(text) - 6);
      behind.Add(bev, &slot);  // once, however often asked
      if (cancel) behind.Cancel(&slot);
    });
  }
};

TEST_CASE("output queued in a turn is written in that turn, not after a poll") {
  Behind b;
  b.Queue("hello world", false);
  // libevent alone would only now ask epoll for writability.
  CHECK(b.pair.Drain() == "hello world");
  CHECK(evbuffer_get_length(bufferevent_get_output(b.pair.bev.get())) == 0);
  CHECK(event_pending(&b.pair.bev->ev_write, EV_WRITE, nullptr) == 0);
  CHECK(b.seen.drained == 1);  // the write callback, as libevent calls it
  CHECK(b.slot.index == 0);
}

TEST_CASE("a cancelled entry is left to libevent, which writes after a poll") {
  Behind b;
  b.Queue("late bytes", true);
  CHECK(b.slot.index == 0);
  CHECK(b.pair.Drain().empty());
  CHECK(event_pending(&b.pair.bev->ev_write, EV_WRITE, nullptr) != 0);
  b.pair.Once();
  CHECK(b.pair.Drain() == "late bytes");
}

TEST_CASE("a flush writes what is queued at once, inside the turn") {
  Behind b;
  std::string seen_in_turn;
  InTurn(b.pair.base.get(), [&] {
    bufferevent_write(b.pair.bev.get(), "now", 3);
    b.behind.Add(b.pair.bev.get(), &b.slot);
    b.behind.Flush();
    seen_in_turn = b.pair.Drain();  // before the turn's end
  });
  CHECK(seen_in_turn == "now");
  CHECK(b.slot.index == 0);
  CHECK(b.seen.drained == 1);
}

TEST_CASE("an output of many chains is written in order, all of it") {
  Behind b;
  // 300 chains (each reference is one), more than one write takes (128):
  // the first write sends what it can, libevent's write event the rest.
  std::vector<std::string> pieces;
  std::string all;
  for (int i = 0; i < 300; ++i) {
    pieces.push_back(std::to_string(i) + Pattern(7 + i % 13) + "|");
    all += pieces.back();
  }
  evbuffer* output = bufferevent_get_output(b.pair.bev.get());
  InTurn(b.pair.base.get(), [&] {
    for (const std::string& piece : pieces) {
      REQUIRE(evbuffer_add_reference(output, piece.data(), piece.size(),
                                     nullptr, nullptr) == 0);
    }
    REQUIRE(evbuffer_peek(output, -1, nullptr, nullptr, 0) == 300);
    b.behind.Add(b.pair.bev.get(), &b.slot);
  });
  std::string got = b.pair.Drain();
  for (int i = 0; i < 10 && got.size() < all.size(); ++i) {
    b.pair.Once();
    got += b.pair.Drain();
  }
  CHECK(got == all);
  CHECK(evbuffer_get_length(output) == 0);
}

// A second socket pair's bufferevent on another pair's loop.
struct OnSameLoop {
  BufferEventPtr bev;
  int peer = -1;
  explicit OnSameLoop(event_base* base) {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    REQUIRE(evutil_make_socket_nonblocking(fds[0]) == 0);
    bev.reset(bufferevent_socket_new(base, fds[0], BEV_OPT_CLOSE_ON_FREE));
    REQUIRE(bev != nullptr);
    peer = fds[1];
    REQUIRE(bufferevent_enable(bev.get(), EV_READ | EV_WRITE) == 0);
  }
  ~OnSameLoop() { close(peer); }
  std::string Drain() {
    char buf[256];
    const ssize_t n = recv(peer, buf, sizeof(buf), MSG_DONTWAIT);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
};

// A write callback that queues another bufferevent's bytes and asks for a
// flush, as a backend drained can make a client's exchange send more.
struct Chain {
  OnSameLoop* next;
  WriteBehind* behind;
  WriteBehind::Slot* slot;
  int calls = 0;
};

void QueueNextAndFlush(bufferevent*, void* arg) {
  auto* chain = static_cast<Chain*>(arg);
  if (chain->calls++ > 0) return;
  bufferevent_write(chain->next->bev.get(), "second", 6);
  chain->behind->Add(chain->next->bev.get(), chain->slot);
  chain->behind->Flush();  // inside the pass: that pass writes it
  // More after the flush, still inside the pass.
  bufferevent_write(chain->next->bev.get(), "+", 1);
  chain->behind->Add(chain->next->bev.get(), chain->slot);
}

TEST_CASE("a flush asked for inside a pass loses nothing") {
  Pair first;
  OnSameLoop second(first.base.get());
  WriteBehind behind(first.base.get());
  WriteBehind::Slot first_slot;
  WriteBehind::Slot second_slot;
  Chain chain{&second, &behind, &second_slot};
  bufferevent_setcb(first.bev.get(), nullptr, QueueNextAndFlush, nullptr,
                    &chain);
  REQUIRE(bufferevent_enable(first.bev.get(), EV_READ | EV_WRITE) == 0);
  std::string first_got;
  std::string second_got;
  InTurn(first.base.get(), [&] {
    bufferevent_write(first.bev.get(), "first", 5);
    behind.Add(first.bev.get(), &first_slot);
    behind.Flush();
    // Both written by this one flush, the second queued during it.
    first_got = first.Drain();
    second_got = second.Drain();
  });
  CHECK(first_got == "first");
  CHECK(second_got == "second+");
  CHECK(chain.calls == 1);
  CHECK(first_slot.index == 0);
  CHECK(second_slot.index == 0);
  // Nothing stays queued: a later Add is taken again.
  InTurn(first.base.get(), [&] {
    bufferevent_write(second.bev.get(), "third", 5);
    behind.Add(second.bev.get(), &second_slot);
  });
  CHECK(second.Drain() == "third");
}

TEST_CASE("nothing is written where writing is disabled") {
  Pair pair;
  REQUIRE(bufferevent_disable(pair.bev.get(), EV_WRITE) == 0);
  bufferevent_write(pair.bev.get(), "held", 4);
  CHECK_FALSE(WriteNow(pair.bev.get()));
  CHECK(pair.Drain().empty());
}

TEST_CASE("a full send buffer leaves the rest to libevent's write event") {
  Pair pair;
  Seen seen;
  bufferevent_setcb(pair.bev.get(), nullptr, OnDrained, OnEvent, &seen);
  REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ | EV_WRITE) == 0);
  const std::string big = Pattern(8 * 1024 * 1024);
  bufferevent_write(pair.bev.get(), big.data(), big.size());
  CHECK(WriteNow(pair.bev.get()));
  const size_t left =
      evbuffer_get_length(bufferevent_get_output(pair.bev.get()));
  CHECK(left > 0);
  CHECK(event_pending(&pair.bev->ev_write, EV_WRITE, nullptr) != 0);
  CHECK(seen.drained == 0);
  std::string got = pair.Drain();
  for (int i = 0; i < 1000 && got.size() < big.size(); ++i) {
    pair.Once();
    got += pair.Drain();
  }
  CHECK(got == big);  // in order, nothing twice
}

// Writing on demand, as backend connections are written: their writing is
// on only while bytes wait for the socket's room.
struct OnDemand {
  Pair pair;
  Seen seen;
  WriteBehind behind{pair.base.get(), WriteEvent::kOnDemand};
  WriteBehind::Slot slot;
  explicit OnDemand(short enabled) {
    REQUIRE(behind.ok());
    bufferevent_setcb(pair.bev.get(), nullptr, OnDrained, OnEvent, &seen);
    // (A new bufferevent's writing is on.)
    REQUIRE(bufferevent_disable(pair.bev.get(), EV_READ | EV_WRITE) == 0);
    REQUIRE(bufferevent_enable(pair.bev.get(), enabled) == 0);
    pair.Once();
    seen.drained = 0;
  }
  bool writing() const {
    return (bufferevent_get_enabled(pair.bev.get()) & EV_WRITE) != 0;
  }
  bool write_event() const {
    return event_pending(&pair.bev->ev_write, EV_WRITE, nullptr) != 0;
  }
  // Queues `text` in one turn; whether a write event was added on the way.
  bool Queue(const std::string& text) {
    bool added = false;
    InTurn(pair.base.get(), [&] {
      bufferevent_write(pair.bev.get(), text.data(), text.size());
      added = write_event();
      behind.Add(pair.bev.get(), &slot);
    });
    return added;
  }
};

TEST_CASE("on demand: a write in the turn, and no write event on the way") {
  OnDemand d(EV_READ);
  CHECK_FALSE(d.Queue("GET / HTTP/1.1\r\n\r\n"));
  CHECK(d.pair.Drain() == "GET / HTTP/1.1\r\n\r\n");
  CHECK_FALSE(d.writing());
  CHECK_FALSE(d.write_event());
  CHECK(d.seen.drained == 1);
  // Again: nothing was left on.
  CHECK_FALSE(d.Queue("next"));
  CHECK(d.pair.Drain() == "next");
  CHECK(d.seen.drained == 2);
}

TEST_CASE("on demand: writing left on (a connect) is turned off once empty") {
  OnDemand d(EV_READ | EV_WRITE);
  CHECK(d.writing());
  d.Queue("first");  // libevent adds its event: writing was on
  CHECK(d.pair.Drain() == "first");
  CHECK_FALSE(d.writing());
  CHECK_FALSE(d.write_event());
  CHECK_FALSE(d.Queue("second"));
  CHECK(d.pair.Drain() == "second");
}

TEST_CASE("on demand: bytes the socket has no room for turn writing on") {
  OnDemand d(EV_READ);
  const std::string big = Pattern(8 * 1024 * 1024);
  d.Queue(big);
  const size_t left =
      evbuffer_get_length(bufferevent_get_output(d.pair.bev.get()));
  CHECK(left > 0);
  CHECK(d.writing());
  CHECK(d.write_event());  // libevent writes the rest when there is room
  CHECK(d.seen.drained == 0);
  std::string got = d.pair.Drain();
  for (int i = 0; i < 1000 && got.size() < big.size(); ++i) {
    d.pair.Once();
    got += d.pair.Drain();
  }
  CHECK(got == big);
  CHECK(d.seen.drained >= 1);
  CHECK_FALSE(d.write_event());
  // The next request is written at once again, writing turned off.
  CHECK(d.Queue("after") == d.writing());
  CHECK(d.pair.Drain() == "after");
  CHECK_FALSE(d.writing());
}

TEST_CASE("on demand: a failed write is left to libevent, which reports it") {
  std::signal(SIGPIPE, SIG_IGN);  // as the proxy has it
  OnDemand d(EV_READ);
  close(d.pair.peer);
  d.pair.peer = -1;
  d.Queue("lost");
  CHECK(d.writing());  // libevent's write meets the error
  CHECK(d.write_event());
  for (int i = 0; i < 10 && !(d.seen.events & BEV_EVENT_WRITING); ++i)
    d.pair.Once();
  CHECK((d.seen.events & BEV_EVENT_WRITING) != 0);
  CHECK((d.seen.events & BEV_EVENT_ERROR) != 0);
}

TEST_CASE("direct reads deliver everything in order, small and large") {
  Pair pair;
  Seen seen;
  bufferevent_setcb(pair.bev.get(), OnRead, nullptr, OnEvent, &seen);
  const event_callback_fn libevents = event_get_callback(&pair.bev->ev_read);
  ReadDirectly(pair.bev.get());
  CHECK((event_get_callback(&pair.bev->ev_read) != libevents));  // tandem's
  REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ) == 0);
  REQUIRE(send(pair.peer, "GET / HTTP/1.1\r\n\r\n", 18, 0) == 18);
  pair.Once();
  CHECK(seen.read == "GET / HTTP/1.1\r\n\r\n");
  CHECK(seen.reads == 1);
  // Larger than the in-place part: the spill area's bytes follow in order.
  const std::string big = Pattern(200 * 1024);
  size_t sent = 0;
  for (int i = 0; i < 10000 && seen.read.size() < 18 + big.size(); ++i) {
    if (sent < big.size()) {
      ssize_t n =
          send(pair.peer, big.data() + sent, big.size() - sent, MSG_DONTWAIT);
      if (n > 0) sent += static_cast<size_t>(n);
    }
    pair.Once();
  }
  CHECK(seen.read == "GET / HTTP/1.1\r\n\r\n" + big);
  shutdown(pair.peer, SHUT_WR);
  for (int i = 0; i < 10 && seen.events == 0; ++i) pair.Once();
  CHECK(seen.events == (BEV_EVENT_READING | BEV_EVENT_EOF));
  CHECK((bufferevent_get_enabled(pair.bev.get()) & EV_READ) == 0);
}

TEST_CASE("direct reads stop at the read high-water mark and resume below it") {
  Pair pair;
  Seen seen;
  bufferevent_setcb(pair.bev.get(), OnReadKeep, nullptr, OnEvent, &seen);
  bufferevent_setwatermark(pair.bev.get(), EV_READ, 0, 100);
  ReadDirectly(pair.bev.get());
  REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ) == 0);
  const std::string data = Pattern(1000);
  REQUIRE(send(pair.peer, data.data(), data.size(), 0) == 1000);
  for (int i = 0; i < 20; ++i) pair.Once();
  evbuffer* input = bufferevent_get_input(pair.bev.get());
  CHECK(evbuffer_get_length(input) == 100);  // no more read, and no spin
  CHECK(seen.reads == 1);
  evbuffer_drain(input, 100);
  for (int i = 0; i < 20; ++i) pair.Once();
  CHECK(evbuffer_get_length(input) == 100);
  CHECK(seen.reads == 2);
}

TEST_CASE("a reset connection is a read error, reported as libevent does") {
  Pair pair;
  Seen seen;
  bufferevent_setcb(pair.bev.get(), OnRead, nullptr, OnEvent, &seen);
  ReadDirectly(pair.bev.get());
  REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ) == 0);
  // A peer that closes with bytes it never read resets the connection.
  REQUIRE(send(bufferevent_getfd(pair.bev.get()), "unread", 6, 0) == 6);
  close(pair.peer);
  pair.peer = -1;
  for (int i = 0; i < 10 && seen.events == 0; ++i) pair.Once();
  CHECK(seen.events == (BEV_EVENT_READING | BEV_EVENT_ERROR));
  CHECK(EVUTIL_SOCKET_ERROR() == ECONNRESET);
  CHECK((bufferevent_get_enabled(pair.bev.get()) & EV_READ) == 0);
}

TEST_CASE("a read timeout is reported as libevent does, once, after a read") {
  Pair pair;
  Seen seen;
  bufferevent_setcb(pair.bev.get(), OnRead, nullptr, OnEvent, &seen);
  const timeval idle{0, 50 * 1000};
  REQUIRE(bufferevent_set_timeouts(pair.bev.get(), &idle, nullptr) == 0);
  REQUIRE(bufferevent_enable(pair.bev.get(), EV_READ) == 0);
  ReadDirectly(pair.bev.get());
  // Bytes within the timeout are read; then a silent peer times out.
  REQUIRE(send(pair.peer, "ping", 4, 0) == 4);
  for (int i = 0; i < 10 && seen.read.empty(); ++i) pair.Once();
  CHECK(seen.read == "ping");
  CHECK(seen.events == 0);
  for (int i = 0; i < 20 && seen.events == 0; ++i) {
    const timeval turn{0, 100 * 1000};  // each wait bounded: 2 s in all
    event_base_loopexit(pair.base.get(), &turn);
    event_base_loop(pair.base.get(), EVLOOP_ONCE);
  }
  CHECK(seen.events == (BEV_EVENT_READING | BEV_EVENT_TIMEOUT));
  CHECK((bufferevent_get_enabled(pair.bev.get()) & EV_READ) == 0);
  CHECK(seen.reads == 1);
}

// ---- TLS: libevent's OpenSSL bufferevents ----------------------------------

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// A server context with a self-signed P-256 certificate made here.
SslCtxPtr ServerContext() {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  REQUIRE(ctx != nullptr);
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  REQUIRE((key != nullptr && cert != nullptr));
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  X509_sign(cert, key, EVP_sha256());
  CHECK(SSL_CTX_use_certificate(ctx.get(), cert) == 1);
  CHECK(SSL_CTX_use_PrivateKey(ctx.get(), key) == 1);
  X509_free(cert);
  EVP_PKEY_free(key);
  return ctx;
}

// Both ends of a socket pair as OpenSSL bufferevents on one loop: the proxy's
// end accepting, a client connecting (it does not verify the certificate).
struct TlsPair {
  EventBasePtr base = LoopBase();
  SslCtxPtr server_ctx = ServerContext();
  SslCtxPtr client_ctx{SSL_CTX_new(TLS_client_method())};
  BufferEventPtr server;  // the proxy's end
  BufferEventPtr client;
  Seen server_seen;
  Seen client_seen;
  TlsPair() {
    REQUIRE(client_ctx != nullptr);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    REQUIRE(evutil_make_socket_nonblocking(fds[0]) == 0);
    REQUIRE(evutil_make_socket_nonblocking(fds[1]) == 0);
    server.reset(bufferevent_openssl_socket_new(
        base.get(), fds[0], SSL_new(server_ctx.get()),
        BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE));
    client.reset(bufferevent_openssl_socket_new(
        base.get(), fds[1], SSL_new(client_ctx.get()),
        BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE));
    REQUIRE((server != nullptr && client != nullptr));
    bufferevent_setcb(server.get(), nullptr, OnDrained, OnEvent, &server_seen);
    bufferevent_setcb(client.get(), OnRead, nullptr, OnEvent, &client_seen);
    REQUIRE(bufferevent_enable(server.get(), EV_READ | EV_WRITE) == 0);
    REQUIRE(bufferevent_enable(client.get(), EV_READ | EV_WRITE) == 0);
  }
  void Once() { event_base_loop(base.get(), EVLOOP_ONCE | EVLOOP_NONBLOCK); }
  // Turns until `done`, at most 2,000 of them.
  bool RunUntil(const std::function<bool()>& done) {
    for (int i = 0; i < 2000 && !done(); ++i) Once();
    return done();
  }
  bool Connected() const {
    return (server_seen.events & BEV_EVENT_CONNECTED) != 0 &&
           (client_seen.events & BEV_EVENT_CONNECTED) != 0;
  }
};

TEST_CASE("TLS output queued in a turn is encrypted and written in that turn") {
  TlsPair t;
  REQUIRE(t.RunUntil([&] { return t.Connected(); }));
  // Idle, as a kept-alive connection: nothing to write, no write event.
  REQUIRE(t.RunUntil([&] {
    return event_pending(&t.server->ev_write, EV_WRITE, nullptr) == 0;
  }));
  t.server_seen.drained = 0;
  WriteBehind behind(t.base.get());
  WriteBehind::Slot slot;
  InTurn(t.base.get(), [&] {
    bufferevent_write(t.server.get(), "secret words", 12);
    behind.Add(t.server.get(), &slot);
  });
  // libevent alone would only now ask epoll for writability.
  CHECK(evbuffer_get_length(bufferevent_get_output(t.server.get())) == 0);
  CHECK(event_pending(&t.server->ev_write, EV_WRITE, nullptr) == 0);
  CHECK(t.server_seen.drained == 1);
  CHECK(t.RunUntil([&] { return t.client_seen.read.size() >= 12; }));
  CHECK(t.client_seen.read == "secret words");
}

TEST_CASE("TLS output queued in many pieces leaves as one record") {
  TlsPair t;
  REQUIRE(t.RunUntil([&] { return t.Connected(); }));
  // A first exchange: what OpenSSL sends after the handshake (TLS 1.3
  // session tickets) is out of the way.
  bufferevent_write(t.server.get(), "x", 1);
  REQUIRE(t.RunUntil([&] { return t.client_seen.read == "x"; }));
  REQUIRE(t.RunUntil([&] {
    return event_pending(&t.server->ev_write, EV_WRITE, nullptr) == 0;
  }));
  bufferevent_disable(t.client.get(), EV_READ);
  // Twenty chains, as a turn's heads, bodies and frames are queued.
  evbuffer* output = bufferevent_get_output(t.server.get());
  std::string sent;
  for (int i = 0; i < 20; ++i) {
    const std::string piece = "piece " + std::to_string(i) + ";";
    EvbufferPtr part(evbuffer_new());
    evbuffer_add(part.get(), piece.data(), piece.size());
    evbuffer_add_buffer(output, part.get());
    sent += piece;
  }
  REQUIRE(evbuffer_peek(output, -1, nullptr, nullptr, 0) > 1);
  CHECK(WriteNow(t.server.get()));
  // One record: the bytes plus one record's header and tag (22 bytes in
  // TLS 1.3, 29 in TLS 1.2 with AES-GCM); a record per piece would add 20
  // of them.
  int queued = 0;
  REQUIRE(ioctl(bufferevent_getfd(t.client.get()), FIONREAD, &queued) == 0);
  CHECK(static_cast<size_t>(queued) > sent.size());
  CHECK(static_cast<size_t>(queued) <= sent.size() + 29);
  REQUIRE(bufferevent_enable(t.client.get(), EV_READ) == 0);
  CHECK(
      t.RunUntil([&] { return t.client_seen.read.size() >= 1 + sent.size(); }));
  CHECK(t.client_seen.read == "x" + sent);
}

TEST_CASE("TLS output a full send buffer stops is finished by libevent") {
  TlsPair t;
  REQUIRE(t.RunUntil([&] { return t.Connected(); }));
  REQUIRE(t.RunUntil([&] {
    return event_pending(&t.server->ev_write, EV_WRITE, nullptr) == 0;
  }));
  // The client reads nothing until the server has written what it could.
  bufferevent_disable(t.client.get(), EV_READ);
  const std::string big = Pattern(8 * 1024 * 1024);
  bufferevent_write(t.server.get(), big.data(), big.size());
  CHECK(WriteNow(t.server.get()));
  // OpenSSL wrote records until the socket was full (it keeps the rest of
  // its write to retry; libevent drains the output only when it is done).
  int queued = 0;
  REQUIRE(ioctl(bufferevent_getfd(t.client.get()), FIONREAD, &queued) == 0);
  CHECK(queued > 0);
  CHECK(event_pending(&t.server->ev_write, EV_WRITE, nullptr) != 0);
  REQUIRE(bufferevent_enable(t.client.get(), EV_READ) == 0);
  CHECK(t.RunUntil([&] { return t.client_seen.read.size() >= big.size(); }));
  CHECK(t.client_seen.read == big);  // in order, nothing twice
}

// The proxy's end reads as an HTTP/2 connection does: all it is given,
// then TlsReadAhead::AfterRead.
struct AheadReader {
  Seen seen;
  TlsReadAhead ahead;
  std::vector<size_t> reads;  // bytes per read callback
};

void ReadAllAhead(bufferevent* bev, void* arg) {
  auto* reader = static_cast<AheadReader*>(arg);
  const size_t bytes = evbuffer_get_length(bufferevent_get_input(bev));
  reader->reads.push_back(bytes);
  OnRead(bev, &reader->seen);
  reader->ahead.AfterRead(bytes);
}

// Five records from the client, in the server's socket before it reads.
std::string SendRecords(TlsPair& t) {
  std::string sent;
  for (int i = 0; i < 5; ++i) {
    const std::string piece = "record " + std::to_string(i) + ";";
    bufferevent_write(t.client.get(), piece.data(), piece.size());
    REQUIRE(WriteNow(t.client.get()));  // one record each
    sent += piece;
  }
  return sent;
}

// `pieces` as the client's TLS records, one each, made in memory and not
// sent: from now on the client's writes go to a memory BIO (its socket BIO
// stays the read side), so a test can put the records in the socket as it
// likes.
std::string RecordsInMemory(TlsPair& t,
                            const std::vector<std::string>& pieces) {
  bufferevent_disable(t.client.get(), EV_READ | EV_WRITE);
  SSL* ssl = bufferevent_openssl_get_ssl(t.client.get());
  BIO* memory = BIO_new(BIO_s_mem());
  REQUIRE(memory != nullptr);
  SSL_set0_wbio(ssl, memory);
  for (const std::string& piece : pieces) {
    REQUIRE(SSL_write(ssl, piece.data(), static_cast<int>(piece.size())) ==
            static_cast<int>(piece.size()));
  }
  char* records = nullptr;
  const long length = BIO_get_mem_data(memory, &records);
  return std::string(records, static_cast<size_t>(length));
}

// A connected pair whose server end reads ahead (after a first exchange:
// what OpenSSL sends after the handshake is out of the way).
void StartReadingAhead(TlsPair& t, AheadReader& reader) {
  REQUIRE(t.RunUntil([&] { return t.Connected(); }));
  bufferevent_setcb(t.server.get(), ReadAllAhead, OnDrained, OnEvent, &reader);
  reader.ahead.Start(t.server.get());
  bufferevent_write(t.client.get(), "x", 1);
  REQUIRE(t.RunUntil([&] { return reader.seen.read == "x"; }));
  reader.reads.clear();
}

TEST_CASE("TLS records read ahead are all read in the turn that found them") {
  TlsPair t;
  AheadReader reader;
  StartReadingAhead(t, reader);
  const std::string sent = SendRecords(t);
  t.Once();  // one poll: OpenSSL took all five records in one read
  CHECK(reader.seen.read == "x" + sent);
  // The socket is empty: no poll would have reported what OpenSSL held.
  int queued = -1;
  REQUIRE(ioctl(bufferevent_getfd(t.server.get()), FIONREAD, &queued) == 0);
  CHECK(queued == 0);
  reader.ahead.Stop();
}

TEST_CASE("a client sending without pause is read a turn's bytes a turn") {
  TlsPair t;
  AheadReader reader;
  // OpenSSL's own buffer (16 KiB) bounds a poll's reads to less than a turn's
  // bytes; one of 256 KiB holds more than a turn takes.
  SSL_set_default_read_buffer_len(bufferevent_openssl_get_ssl(t.server.get()),
                                  256 * 1024);
  StartReadingAhead(t, reader);
  // 1,200 small records (as a flood of small frames comes) in the socket at
  // once, written in one go.
  const std::vector<std::string> pieces(1200, Pattern(100));
  std::string sent;
  for (const std::string& piece : pieces) sent += piece;
  const std::string records = RecordsInMemory(t, pieces);
  REQUIRE(write(bufferevent_getfd(t.client.get()), records.data(),
                records.size()) == static_cast<ssize_t>(records.size()));
  t.Once();
  const size_t first_turn = reader.seen.read.size() - 1;
  CHECK(first_turn >= TlsReadAhead::kTurnBytes);
  // No more than the turn's bytes and the read that passed them.
  CHECK(first_turn < TlsReadAhead::kTurnBytes + 4096);
  // The rest in the turns after, none lost, none twice.
  CHECK(t.RunUntil([&] { return reader.seen.read.size() >= 1 + sent.size(); }));
  CHECK(reader.seen.read == "x" + sent);
  reader.ahead.Stop();
}

TEST_CASE("a TLS record split in two is read once whole, with no spin") {
  TlsPair t;
  AheadReader reader;
  StartReadingAhead(t, reader);
  // One record, its first half in the socket.
  const std::string piece = Pattern(1000);
  const std::string record = RecordsInMemory(t, {piece});
  const ssize_t length = static_cast<ssize_t>(record.size());
  const int fd = bufferevent_getfd(t.client.get());
  REQUIRE(write(fd, record.data(), static_cast<size_t>(length / 2)) ==
          length / 2);
  // OpenSSL holds the half (it has pending bytes); the read asked for finds
  // no more in the socket and the owner hears nothing. The turns end.
  for (int i = 0; i < 5; ++i) t.Once();
  CHECK(reader.seen.read == "x");
  CHECK(reader.reads.empty());
  CHECK(SSL_has_pending(bufferevent_openssl_get_ssl(t.server.get())) == 1);
  const ssize_t rest = length - length / 2;
  REQUIRE(write(fd, record.data() + length / 2, static_cast<size_t>(rest)) ==
          rest);
  CHECK(
      t.RunUntil([&] { return reader.seen.read.size() >= 1 + piece.size(); }));
  CHECK(reader.seen.read == "x" + piece);
  reader.ahead.Stop();
}

TEST_CASE("without read-ahead a poll reads one record of the five") {
  // What read-ahead is for: libevent alone reads a record per readable event
  // and leaves the rest to later polls, a loop turn each.
  TlsPair t;
  AheadReader reader;  // never started: AfterRead does nothing
  REQUIRE(t.RunUntil([&] { return t.Connected(); }));
  bufferevent_setcb(t.server.get(), ReadAllAhead, OnDrained, OnEvent, &reader);
  bufferevent_write(t.client.get(), "x", 1);
  REQUIRE(t.RunUntil([&] { return reader.seen.read == "x"; }));
  const std::string sent = SendRecords(t);
  t.Once();
  CHECK(reader.seen.read.size() < 1 + sent.size());
  CHECK(t.RunUntil([&] { return reader.seen.read == "x" + sent; }));
}

TEST_CASE("TLS output queued during the handshake is left to libevent") {
  TlsPair t;
  bufferevent_write(t.server.get(), "early", 5);
  CHECK_FALSE(WriteNow(t.server.get()));  // OpenSSL has not finished
  CHECK(evbuffer_get_length(bufferevent_get_output(t.server.get())) == 5);
  REQUIRE(t.RunUntil([&] { return t.client_seen.read.size() >= 5; }));
  CHECK(t.client_seen.read == "early");
}

}  // namespace
}  // namespace tandem::net
