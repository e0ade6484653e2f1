#include "net/direct_io.h"

#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cerrno>

namespace tandem::net {
namespace {

// A read lands in the input's own free space, up to what libevent's smallest
// chain holds (no copy: a request or response head nearly always fits, and a
// chain that small comes from the allocator's per-thread cache, where a 4 KiB
// one took a trip through its bins on every read into an empty input); the
// rest of a large read goes through the spill area and is copied in. A
// socket whose last read was larger (a body streaming through) reads all in
// place, into chains of kBulkRead: libevent rounds a chain's allocation up to
// a power of two, so a full 64 KiB would take 128 KiB, at the allocator's
// mmap threshold.
constexpr size_t kInPlaceRead = 4096;
// The most plaintext one TLS record carries.
constexpr size_t kTlsRecordBytes = 16 * 1024;
constexpr size_t kSpillBytes = 64 * 1024;
constexpr size_t kBulkRead = 64 * 1024 - 256;
// Which descriptors' last read was larger than kInPlaceRead, by number
// modulo the set's size (a stale bit only picks the other buffer size).
constexpr size_t kBulkSlots = 64 * 1024;

// The free space of libevent's smallest chain: what reserving one byte in an
// empty buffer offers.
size_t SmallChainSpace() {
  static const size_t space = [] {
    evbuffer* probe = evbuffer_new();
    evbuffer_iovec vec[1];
    size_t got = 0;
    if (probe != nullptr && evbuffer_reserve_space(probe, 1, vec, 1) == 1)
      got = vec[0].iov_len;
    if (probe != nullptr) evbuffer_free(probe);
    return std::clamp<size_t>(got, 256, kInPlaceRead);
  }();
  return space;
}

void ReadCb(evutil_socket_t fd, short what, void* arg) {
  auto* bev = static_cast<bufferevent*>(arg);
  if (what == EV_TIMEOUT) {
    // The read timeout (bufferevent_set_timeouts), as libevent reports it: a
    // timeout that came with readable bytes is no timeout.
    bufferevent_disable(bev, EV_READ);
    if (bev->errorcb != nullptr)
      bev->errorcb(bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, bev->cbarg);
    return;
  }
  evbuffer* input = bev->input;
  size_t want = static_cast<size_t>(bufferevent_get_max_single_read(bev));
  if (bev->wm_read.high != 0) {
    const size_t buffered = evbuffer_get_length(input);
    if (buffered >= bev->wm_read.high) {
      // libevent stops reading here; setting the same mark makes it do so
      // (and resume when the input drains).
      bufferevent_setwatermark(bev, EV_READ, bev->wm_read.low,
                               bev->wm_read.high);
      return;
    }
    want = std::min(want, bev->wm_read.high - buffered);
  }
  thread_local std::array<char, kSpillBytes> spill;
  thread_local std::bitset<kBulkSlots> bulk;
  const size_t slot = static_cast<size_t>(fd) % kBulkSlots;
  const bool streaming = bulk[slot];
  want = std::min(want, streaming ? kBulkRead : kSpillBytes);
  // The input is frozen at its end outside libevent's own read callback.
  evbuffer_unfreeze(input, 0);
  evbuffer_iovec space[1];
  if (evbuffer_reserve_space(
          input,
          static_cast<ev_ssize_t>(
              streaming ? want : std::min(want, SmallChainSpace())),
          space, 1) != 1) {
    evbuffer_freeze(input, 0);
    bufferevent_disable(bev, EV_READ);
    if (bev->errorcb != nullptr)
      bev->errorcb(bev, BEV_EVENT_READING | BEV_EVENT_ERROR, bev->cbarg);
    return;
  }
  const size_t in_place = std::min(space[0].iov_len, want);
  iovec parts[2] = {{space[0].iov_base, in_place},
                    {spill.data(), want - in_place}};
  // recvmsg, not readv: a socket's own call skips the file layer's work
  // (the position lock, the file checks and notifications) on every read.
  msghdr message{};
  message.msg_iov = parts;
  message.msg_iovlen = want > in_place ? 2 : 1;
  const ssize_t got = recvmsg(fd, &message, 0);
  const int error = errno;
  bulk[slot] = got > static_cast<ssize_t>(kInPlaceRead);
  if (got > 0) {
    space[0].iov_len = std::min(static_cast<size_t>(got), in_place);
    evbuffer_commit_space(input, space, 1);
    if (static_cast<size_t>(got) > in_place)
      evbuffer_add(input, spill.data(), static_cast<size_t>(got) - in_place);
  }
  evbuffer_freeze(input, 0);
  if (got > 0) {
    if (evbuffer_get_length(input) >= bev->wm_read.low &&
        bev->readcb != nullptr) {
      bev->readcb(bev, bev->cbarg);
    }
    return;
  }
  if (got < 0 && (error == EAGAIN || error == EWOULDBLOCK || error == EINTR))
    return;
  // End of stream or an error, reported as libevent reports them.
  bufferevent_disable(bev, EV_READ);
  errno = error;
  if (bev->errorcb != nullptr) {
    bev->errorcb(
        bev, BEV_EVENT_READING | (got == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR),
        bev->cbarg);
  }
}

// Writes the output's front with one system call, as evbuffer_write does,
// but with the socket's own call (send, or sendmsg for several chains) in
// place of writev, which goes through the file layer. Returns what was
// written and drained, or -1 with errno set.
ssize_t Send(evbuffer* output, evutil_socket_t fd) {
  // What libevent's own write takes at most (its NUM_WRITE_IOVEC).
  constexpr int kMostChains = 128;
  std::array<evbuffer_iovec, kMostChains> chains;
  const int count =
      std::min(evbuffer_peek(output, -1, nullptr, chains.data(), kMostChains),
               kMostChains);
  ssize_t sent = 0;
  if (count == 1) {
    sent = send(fd, chains[0].iov_base, chains[0].iov_len, MSG_NOSIGNAL);
  } else {
    // evbuffer_iovec is struct iovec's layout (libevent's promise on Unix).
    static_assert(sizeof(evbuffer_iovec) == sizeof(iovec));
    msghdr message{};
    message.msg_iov = reinterpret_cast<iovec*>(chains.data());
    message.msg_iovlen = static_cast<size_t>(std::max(count, 0));
    sent = sendmsg(fd, &message, MSG_NOSIGNAL);
  }
  if (sent > 0) evbuffer_drain(output, static_cast<size_t>(sent));
  return sent;
}

}  // namespace

void ReadDirectly(bufferevent* bev) {
  const evutil_socket_t fd = bufferevent_getfd(bev);
  if (fd < 0 || bufferevent_openssl_get_ssl(bev) != nullptr) return;
  const bool pending = event_pending(&bev->ev_read, EV_READ, nullptr) != 0;
  if (pending) event_del(&bev->ev_read);
  // The flags libevent gives it (EV_FINALIZE: freed through its finalizer).
  event_assign(&bev->ev_read, bufferevent_get_base(bev), fd,
               EV_READ | EV_PERSIST | EV_FINALIZE, ReadCb, bev);
  // Added again with the read timeout libevent gives it, if any.
  if (pending) {
    const bool timed = evutil_timerisset(&bev->timeout_read);
    event_add(&bev->ev_read, timed ? &bev->timeout_read : nullptr);
  }
}

void TlsReadAhead::Start(bufferevent* bev) {
  SSL* ssl = bufferevent_openssl_get_ssl(bev);
  if (ssl == nullptr) return;
  bev_ = bev;
  ssl_ = ssl;
  SSL_set_read_ahead(ssl, 1);
  AfterRead(0);
}

void TlsReadAhead::AfterRead(size_t bytes) {
  if (bev_ == nullptr) return;
  // A read this one asked for counts on; one a poll reported begins anew.
  taken_ = again_ ? taken_ + bytes : bytes;
  again_ = false;
  if (SSL_has_pending(ssl_) == 0 ||
      !(bufferevent_get_enabled(bev_) & EV_READ)) {
    return;
  }
  if (taken_ < kTurnBytes) {
    ReadAgain();
    return;
  }
  if (next_turn_ == nullptr) {
    next_turn_.reset(evtimer_new(bufferevent_get_base(bev_), NextTurnCb, this));
    if (next_turn_ == nullptr) return ReadAgain();
  }
  // A timeout of zero runs after the next poll.
  const timeval now{0, 0};
  event_add(next_turn_.get(), &now);
}

void TlsReadAhead::ReadAgain() {
  // The read event's callback reads. A partial record held runs it once for
  // nothing: its read of the socket finds no more and the owner's callback
  // is not called.
  again_ = true;
  event_active(&bev_->ev_read, EV_READ, 1);
}

void TlsReadAhead::NextTurnCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<TlsReadAhead*>(arg);
  if (self->bev_ == nullptr) return;
  self->taken_ = 0;
  self->ReadAgain();
}

void TlsReadAhead::Stop() {
  bev_ = nullptr;
  ssl_ = nullptr;
  next_turn_.reset();
}

namespace {

bool WriteTlsNow(bufferevent* bev, SSL* ssl) {
  // The event's callback writes only once the handshake is done: libevent
  // then gives the read and write events callbacks of their own (during the
  // handshake both run the handshake) and OpenSSL says it is finished.
  event* write = &bev->ev_write;
  if (!SSL_is_init_finished(ssl) ||
      event_get_callback(write) == event_get_callback(&bev->ev_read) ||
      event_pending(write, EV_WRITE, nullptr) == 0) {
    return false;
  }
  // libevent gives OpenSSL the output chain by chain, and each SSL_write is
  // a record and a write of its own: what a turn queued in pieces (heads,
  // bodies, HTTP/2 frames) is made one chain first, up to a full record.
  // (libevent lets OpenSSL find a retried write's bytes moved.)
  evbuffer* output = bufferevent_get_output(bev);
  const size_t front = std::min(evbuffer_get_length(output), kTlsRecordBytes);
  if (evbuffer_peek(output, static_cast<ev_ssize_t>(front), nullptr, nullptr,
                    0) > 1) {
    evbuffer_pullup(output, static_cast<ev_ssize_t>(front));
  }
  event_get_callback(write)(event_get_fd(write), EV_WRITE,
                            event_get_callback_arg(write));
  return true;
}

}  // namespace

bool WriteNow(bufferevent* bev, WriteEvent mode) {
  evbuffer* output = bufferevent_get_output(bev);
  if (evbuffer_get_length(output) == 0) return false;
  const bool enabled = (bufferevent_get_enabled(bev) & EV_WRITE) != 0;
  if (SSL* ssl = bufferevent_openssl_get_ssl(bev)) {
    return enabled && WriteTlsNow(bev, ssl);
  }
  const evutil_socket_t fd = bufferevent_getfd(bev);
  if (fd < 0) return false;  // a bufferevent pair
  const bool on_demand = mode == WriteEvent::kOnDemand;
  if (!enabled && !on_demand) return false;
  // libevent keeps the output's front frozen outside its own write callback.
  evbuffer_unfreeze(output, 1);
  const ssize_t written = Send(output, fd);
  evbuffer_freeze(output, 1);
  if (written <= 0) {
    // libevent's own write meets the error, or the socket's room.
    if (on_demand) bufferevent_enable(bev, EV_WRITE);
    return false;
  }
  if (evbuffer_get_length(output) > 0) {
    if (on_demand && !enabled) bufferevent_enable(bev, EV_WRITE);
  } else if (on_demand && enabled) {
    bufferevent_disable(bev, EV_WRITE);
  } else {
    // The write event was added (in libevent's changelist, no system call
    // yet) when the bytes were queued; deleted in the same turn, it costs
    // nothing.
    event_del(&bev->ev_write);
  }
  if (evbuffer_get_length(output) <= bev->wm_write.low &&
      bev->writecb != nullptr) {
    bev->writecb(bev, bev->cbarg);
  }
  return true;
}

WriteBehind::WriteBehind(event_base* base, WriteEvent mode)
    : event_(event_new(base, -1, 0, RunCb, this)), mode_(mode) {}

void WriteBehind::Add(bufferevent* bev, Slot* slot) {
  if (slot->index != 0) return;
  entries_.push_back({bev, slot});
  slot->index = static_cast<uint32_t>(entries_.size());
  // Made active now, the event runs after every callback already due in
  // this turn (libevent runs them in order), before the next poll.
  if (entries_.size() == 1) event_active(event_.get(), EV_TIMEOUT, 0);
}

void WriteBehind::Cancel(Slot* slot) {
  if (slot->index == 0) return;
  entries_[slot->index - 1] = {nullptr, nullptr};
  slot->index = 0;
}

void WriteBehind::RunCb(evutil_socket_t, short, void* arg) {
  static_cast<WriteBehind*>(arg)->Run();
}

void WriteBehind::Run() {
  // A write callback may queue more (appended, written in this pass), cancel
  // entries (nulled in place) or ask for a flush (this pass is it).
  if (running_) return;
  running_ = true;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry entry = entries_[i];
    if (entry.bev == nullptr) continue;
    entry.slot->index = 0;
    WriteNow(entry.bev, mode_);
  }
  entries_.clear();
  running_ = false;
}

}  // namespace tandem::net
