// Tests of tandem's own reads and writes on libevent bufferevents over a real
// socket pair, on an event base made as the proxy's loops make theirs.
#include "net/direct_io.h"

#include <doctest/doctest.h>
#include <event2/bufferevent_struct.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace tandem::net {
namespace {

struct Pair {
  EventBasePtr base;
  BufferEventPtr bev;  // our end
  int peer = -1;       // the other end, read and written directly
  Pair() {
    event_config* config = event_config_new();
    REQUIRE(config != nullptr);
    event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
    event_config_set_flag(config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base.reset(event_base_new_with_config(config));
    event_config_free(config);
    REQUIRE(base != nullptr);
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
  // the write twice, cancels it if `cancel`; then runs one loop turn.
  void Queue(const char* text, bool cancel) {
    text_ = text;
    cancel_ = cancel;
    event* ev = event_new(pair.base.get(), -1, 0, QueueCb, this);
    REQUIRE(ev != nullptr);
    event_active(ev, EV_TIMEOUT, 0);
    pair.Once();
    event_free(ev);
  }

 private:
  static void QueueCb(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Behind*>(arg);
    bufferevent* bev = self->pair.bev.get();
    bufferevent_write(bev, self->text_, 6);
    self->behind.Add(bev, &self->slot);
    bufferevent_write(bev, self->text_ + 6, std::strlen(self->text_) - 6);
    self->behind.Add(bev, &self->slot);  // once, however often asked
    if (self->cancel_) self->behind.Cancel(&self->slot);
  }
  const char* text_ = nullptr;
  bool cancel_ = false;
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

}  // namespace
}  // namespace tandem::net
