// What a loop needs of a client connection, whatever protocol it speaks
// (HTTP/1.1: ClientConnection; HTTP/2: H2Connection): the shutdown calls,
// the memory gauge, its place in the loop's list, and deletion by the loop
// (Loop::Retire).
#pragma once

#include <cstdint>

namespace tandem::dispatcher {

class FrontConnection {
 public:
  // Shutdown: close now if no request is in progress, else once the
  // requests in progress have ended.
  virtual void CloseWhenIdle() = 0;
  // Grace period over: close at once (requests in progress are logged DC).
  virtual void Abort() = 0;
  // Bytes this connection holds in buffers now.
  virtual uint64_t BufferedBytes() const = 0;

  // Intrusive list of a loop's connections.
  FrontConnection* next = nullptr;
  FrontConnection* prev = nullptr;

 protected:
  friend class Loop;  // deletes it (Loop::Retire)
  FrontConnection() = default;
  virtual ~FrontConnection() = default;
  FrontConnection(const FrontConnection&) = delete;
  FrontConnection& operator=(const FrontConnection&) = delete;
};

}  // namespace tandem::dispatcher
