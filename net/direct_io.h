// Plain sockets' reads and writes with fewer system calls than libevent's
// bufferevents make, on the same bufferevents (their buffers, watermarks and
// callbacks are unchanged).
//
// Writes: libevent writes a bufferevent's output when the next poll reports the
// socket writable: it adds EPOLLOUT to the interest set, polls, writes, and
// removes EPOLLOUT again, two epoll_ctl calls per write, and four per proxied
// request. Its OpenSSL bufferevents do the same. A socket that has nothing
// queued is nearly always writable, so tandem writes at once (after everything
// the turn adds is in the buffer) and leaves the poll for the case it is for: a
// socket whose send buffer is full.
//
// Reads: libevent asks the kernel how many bytes are waiting (ioctl FIONREAD)
// before every read, to size the buffer; tandem reads into the input's free
// space and a per-thread spill area instead, one system call per read.
//
// docs/performance.md has the measurements.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <vector>

#include "net/event_ptr.h"

namespace tandem::net {

// Writes `bev`'s output now, as libevent would on a writable socket: the
// output's front is written, the write event dropped once nothing is left,
// and the write callback called when the output is at or under its low-water
// mark. Only for a connected socket with writing enabled; anything else (a
// bufferevent pair, a TLS handshake under way; a connect still in progress
// is the caller's to rule out) returns false and is left to libevent. A
// failed write also returns false: libevent's own write then meets the error
// and reports it.
//
// A TLS bufferevent (libevent's OpenSSL one, on a socket) is written by
// running its own write event's callback, which is what the next poll would
// do: OpenSSL encrypts and writes, and libevent deletes the write event when
// nothing is left, in the turn that added it. libevent hands OpenSSL the
// output chain by chain, a record each, so the output's front is made one
// chain first, up to a full 16 KiB record. The bufferevent may be freed
// by its owner's callbacks inside; the caller must not touch it after.
//
// kOnDemand (plain sockets only; TLS ones are written as above): the
// socket's writing stays off (EV_WRITE disabled) while nothing waits to be
// written, so queuing bytes adds no write event: libevent adds one on every
// write into an output whose writing is on, and WriteNow deleted it again,
// two updates of libevent's change list per request. WriteNow then writes
// whether writing is on or not, and turns it off once the output is empty,
// or on when bytes remain (libevent writes them when the socket is
// writable). Only for a bufferevent whose owner never turns writing off to
// hold its output back, and always asks for its writes (WriteBehind).
enum class WriteEvent : uint8_t { kKept, kOnDemand };
bool WriteNow(bufferevent* bev, WriteEvent mode = WriteEvent::kKept);

// From now on, `bev`'s reads (a plain socket's, connected) are made by
// tandem: one recvmsg per readable event, as many bytes as libevent would take
// (the max single read, and no more than the read high-water mark allows).
// Must be called again after bufferevent_setfd or a connect, which give the
// read event back to libevent.
void ReadDirectly(bufferevent* bev);

// TLS reads, whole. libevent's OpenSSL bufferevent decrypts at most two
// records per readable event (one SSL_read per piece of input space) and
// OpenSSL reads each record with two system calls, its header's and its
// body's; a record the event left in the socket waits for the next poll, a
// whole loop turn. With read-ahead, OpenSSL takes all the socket holds (up to
// its 16 KiB buffer) in one read, and after each read callback its owner
// calls AfterRead, which has libevent read again while OpenSSL holds bytes it
// took from the socket: no poll would report those. OpenSSL's 16 KiB buffer
// bounds what that reads per poll; in case more is held, reads asked for
// this way take up to kTurnBytes a turn (the most a plain socket's read
// takes) and the next waits for the next turn, as a socket's would, so that
// a client sending without pause cannot keep the loop on its connection.
//
// Only for a bufferevent whose reading stays on while bytes may be held (an
// HTTP/2 connection, client's or worker's, reads until it ends): a read
// turned on again later would not see them.
class TlsReadAhead {
 public:
  static constexpr size_t kTurnBytes = 64 * 1024;

  TlsReadAhead() = default;
  TlsReadAhead(const TlsReadAhead&) = delete;
  TlsReadAhead& operator=(const TlsReadAhead&) = delete;

  // Read-ahead on for `bev` (nothing on a plain socket's), and a read now if
  // OpenSSL already holds bytes.
  void Start(bufferevent* bev);
  // After a read callback that took `bytes` from the input.
  void AfterRead(size_t bytes);
  // Before the bufferevent goes away.
  void Stop();

 private:
  void ReadAgain();
  static void NextTurnCb(evutil_socket_t, short, void* arg);

  bufferevent* bev_ = nullptr;
  SSL* ssl_ = nullptr;  // bev_'s
  EventPtr next_turn_;  // made the first time a turn's bytes run out
  size_t taken_ = 0;    // by reads since the last one a poll reported
  bool again_ = false;  // a read asked for, not yet seen
};

class WriteBehind {
 public:
  // Where an owner's queued entry is (0: none); the owner keeps it and
  // passes it to Cancel before its bufferevent goes away.
  struct Slot {
    uint32_t index = 0;
  };

  // `mode`: how WriteNow treats the write events of what is queued.
  explicit WriteBehind(event_base* base, WriteEvent mode = WriteEvent::kKept);
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  bool ok() const { return event_ != nullptr; }
  // WriteNow(bev) at the end of this loop turn, once however often it is
  // asked for.
  void Add(bufferevent* bev, Slot* slot);
  void Cancel(Slot* slot);
  // Writes what is queued now, not at the turn's end (asked for inside a
  // pass, by a write callback: that pass writes it).
  void Flush() { Run(); }

 private:
  struct Entry {
    bufferevent* bev;
    Slot* slot;
  };
  static void RunCb(evutil_socket_t, short, void* arg);
  void Run();

  std::vector<Entry> entries_;
  EventPtr event_;
  WriteEvent mode_;
  bool running_ = false;
};

}  // namespace tandem::net
