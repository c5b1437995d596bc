"""An upstream the breaker benchmark can break: answers 200, or 500 once told to fail.

    python scripts/flaky_upstream.py PORT
    GET /-/fail | /-/ok     switch mode;  GET /-/stats: JSON with the arrival time (time.time())
                            of every request served while failing (at most 1,000,000)
Any other request: 200 (mode ok) or 500 (mode fail), keep-alive. Loopback only.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

STATE = {"failing": False, "arrivals": [], "served": 0}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in ("/-/fail", "/-/ok"):
        STATE["failing"] = path == "/-/fail"
        body = b"mode " + path[3:].encode()
    elif path == "/-/stats":
        body = json.dumps({"failing": STATE["failing"], "served": STATE["served"],
                           "fail_arrivals": STATE["arrivals"]}).encode()
    else:
        STATE["served"] += 1
        if STATE["failing"]:
            if len(STATE["arrivals"]) < 1_000_000:
                STATE["arrivals"].append(time.time())
            start_response("500 Internal Server Error", [("Content-Length", "7")])
            return [b"failing"]
        body = b"ok"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None).serve_forever()
