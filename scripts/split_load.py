"""Load for scripts/bench-traffic's split figures: N requests with random X-Trace-ID keys over
keep-alive connections to the given URLs, then stickiness probes. Prints "name count" lines.

    python scripts/split_load.py N URL [URL ...]
Loopback only; bounded by N.
"""
from gevent import monkey

monkey.patch_all()

import collections  # noqa: E402
import http.client  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402

CONNECTIONS = 32
STICKY_KEYS = 2000


def main():
    total = int(sys.argv[1])
    urls = [urlsplit(u) for u in sys.argv[2:]]
    counts = collections.Counter()
    remaining = [total]

    def get(conn, url, key):
        conn.request("GET", url.path, headers={"X-Trace-ID": key})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()

    def client(i):
        url = urls[i % len(urls)]
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                status, body = get(conn, url, uuid.uuid4().hex)
                counts[body if status == 200 else "errors"] += 1
            except (OSError, http.client.HTTPException):
                counts["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.close()
    gevent.joinall([gevent.spawn(client, i) for i in range(CONNECTIONS)])

    moved = [0]

    def sticky(keys):
        for key in keys:
            seen = set()
            for attempt in range(4):
                url = urls[attempt % len(urls)]
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                seen.add(get(conn, url, key)[1])
                conn.close()
            moved[0] += len(seen) > 1
    keys = [uuid.uuid4().hex for _ in range(STICKY_KEYS)]
    gevent.joinall([gevent.spawn(sticky, keys[i::16]) for i in range(16)])
    counts.setdefault("errors", 0)
    for name in ("v1", "v2", "errors"):
        print(name, counts[name])
    print("sticky_keys", STICKY_KEYS)
    print("moved_keys", moved[0])


if __name__ == "__main__":
    main()
