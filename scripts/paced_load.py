"""A paced load generator for the benchmarks: RATE requests a second for SECONDS, spread over
keep-alive connections to the given URLs (round robin), after WARMUP seconds unmeasured.

    python scripts/paced_load.py RATE SECONDS WARMUP URL [URL ...]  -> prints "status count" lines
Loopback only; bounded in count and time.
"""
from gevent import monkey

monkey.patch_all()

import collections  # noqa: E402
import http.client  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402


def main():
    rate, seconds, warmup = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    urls = [urlsplit(u) for u in sys.argv[4:]]
    connections = 40
    counts = collections.Counter()
    start = time.monotonic() + 0.2
    measure_from, end = start + warmup, start + warmup + seconds

    def client(i):
        url = urls[i % len(urls)]
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        n = 0
        while True:
            # request k of this client is due at start + (k * connections + i) / rate
            due = start + (n * connections + i) / rate
            if due >= end:
                return
            delay = due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            try:
                conn.request("GET", url.path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = "error"
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            if due >= measure_from:
                counts[status] += 1
            n += 1

    gevent.joinall([gevent.spawn(client, i) for i in range(connections)])
    for status, count in sorted(counts.items(), key=str):
        print(status, count)


if __name__ == "__main__":
    main()
