"""A bounded HTTP load client for the keepalived test, run inside the client
network namespace: one GET per new connection, back to back with a short
pause, and one line per request on stdout:

    START END ok STATUS     or     START END fail REASON

START and END are CLOCK_MONOTONIC seconds (the whole machine shares that
clock, so the test can line requests up with its own events). The client
stops when its stdin closes or after --max-seconds, whichever comes first.
"""

import argparse
import http.client
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between requests")
    parser.add_argument("--max-seconds", type=float, default=85.0)
    args = parser.parse_args()

    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        start = time.monotonic()
        connection = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        try:
            connection.request("GET", args.path)
            response = connection.getresponse()
            response.read()
            outcome = ("ok %d" % response.status if response.status == 200
                       else "fail status-%d" % response.status)
        except (OSError, http.client.HTTPException) as e:
            outcome = "fail " + type(e).__name__
        finally:
            connection.close()
        print("%.6f %.6f %s" % (start, time.monotonic(), outcome), flush=True)
        stop.wait(args.pause)


if __name__ == "__main__":
    main()
