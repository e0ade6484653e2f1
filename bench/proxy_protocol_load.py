#!/usr/bin/env python3
"""The PROXY protocol at scale, two measurements (figures, not assertions):

1. send_proxy: REQUESTS keep-alive requests through tandem (cluster
   send_proxy = "v2") from SOURCES loopback addresses, each client connection
   sending PER_CONNECTION requests; the backend reads every connection's header
   and names its source in each answer. Prints how many answers named another
   client (must be 0) and how many backend connections there were.
2. headerless: IDLE connections to a listener with proxy_protocol = true that
   never send a header; prints how many tandem closed by the timeout (+1 s),
   and whether a connection that does send a header is served meanwhile.

  bench/proxy_protocol_load.py [--tandem build/tandem] [--requests 100000]
      [--sources 1000] [--idle 10000] [--timeout 2]
"""

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def read_header(reader):
    head = await reader.readexactly(16)
    assert head[:12] == SIGNATURE, head
    block = await reader.readexactly(struct.unpack("!H", head[14:16])[0])
    if head[12] == 0x20:
        return None
    return "%s:%d" % (socket.inet_ntoa(block[0:4]), struct.unpack("!H", block[8:10])[0])


class Backend:
    """Answers each request with the source its connection's header named
    (with `headers`), or "-"."""

    def __init__(self, headers=True):
        self.connections = 0
        self.headers = headers

    async def serve(self, reader, writer):
        self.connections += 1
        try:
            source = ((await read_header(reader)) if self.headers else None) or "-"
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                body = source.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.contextmanager
def tandem(binary, port, backend_port, listener="", cluster=""):
    """tandem on 127.0.0.1:`port` in front of one backend, with `listener`
    and `cluster` keys added; stopped and its directory removed on exit."""
    config = """[global]
threads = 1
access_log = "off"
[listeners.web]
listen = "127.0.0.1:%d"
cluster = "compute"
%s
[clusters.compute]
%s
[clusters.compute.health]
kind = "none"
[[clusters.compute.backends]]
address = "127.0.0.1:%d"
""" % (port, listener, cluster, backend_port)
    with tempfile.TemporaryDirectory(prefix="pp-load-") as directory:
        path = os.path.join(directory, "tandem.toml")
        with open(path, "w") as f:
            f.write(config)
        with open(os.path.join(directory, "tandem.log"), "w") as log:
            process = subprocess.Popen([binary, "-c", path], stdout=log, stderr=log)
            try:
                wait_port(port)
                yield
            finally:
                process.terminate()
                process.wait()


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


async def client(port, source, count, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    mine = "%s:%d" % writer.get_extra_info("sockname")[:2]
    for _ in range(count):
        writer.write(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        body = (await reader.readexactly(length)).decode()
        results["answered"] += 1
        if body != mine:
            results["misattributed"] += 1
    writer.close()


async def send_proxy_run(args):
    backend = Backend()
    server = await asyncio.start_server(backend.serve, "127.0.0.1", 0, backlog=4096)
    port = free_port()
    with tandem(args.tandem, port, server.sockets[0].getsockname()[1],
                cluster='send_proxy = "v2"\nmax_idle_connections = 1024'):
        sources = ["127.1.%d.%d" % (i // 250, i % 250 + 1) for i in range(args.sources)]
        per_connection = max(1, args.requests // args.sources // args.rounds)
        results = {"answered": 0, "misattributed": 0}
        start = time.monotonic()
        for _ in range(args.rounds):
            await asyncio.gather(*(client(port, s, per_connection, results) for s in sources))
        elapsed = time.monotonic() - start
        print("send_proxy v2: %d requests from %d source addresses in %.1f s: %d misattributed, "
              "%d backend connections (%d client connections)" % (
                  results["answered"], len(sources), elapsed, results["misattributed"],
                  backend.connections, len(sources) * args.rounds))
    server.close()


def reclaimed(sockets):
    """How many of `sockets` the peer has closed (read end of stream or reset)."""
    closed = 0
    for s in sockets:
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except ConnectionError:
            closed += 1
        s.close()
    return closed


async def headerless_run(args):
    backend = Backend(headers=False)
    server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    port = free_port()
    with tandem(args.tandem, port, server.sockets[0].getsockname()[1],
                listener='proxy_protocol = true\nproxy_protocol_timeout = "%ds"' % args.timeout):
        start = time.monotonic()
        sockets = []
        for _ in range(args.idle):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            sockets.append(s)
        opened = time.monotonic() - start
        # A proxied request in the middle of it all.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n"
        writer.write(v1 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        served = b"200" in await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        writer.close()
        await asyncio.sleep(args.timeout + 1 - (time.monotonic() - start))
        closed = reclaimed(sockets)
        print("headerless: %d connections opened in %.2f s; %d of them closed by tandem within "
              "timeout + 1 s (%d s); a proxied request meanwhile: %s" % (
                  len(sockets), opened, closed, args.timeout + 1,
                  "served" if served else "NOT served"))
    server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tandem", default="build/tandem")
    parser.add_argument("--requests", type=int, default=100000)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--timeout", type=int, default=2)
    args = parser.parse_args()
    limit = max(args.idle, args.sources) * 2 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, limit), hard), hard))
    asyncio.run(send_proxy_run(args))
    asyncio.run(headerless_run(args))


if __name__ == "__main__":
    sys.exit(main())
