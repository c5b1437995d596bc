"""The naive baseline for scripts/bench: gunicorn's stock gevent worker + requests.Session.

    python -m gunicorn -k gevent -w 1 -b 127.0.0.1:PORT scripts.naive_proxy:app  (UPSTREAM=url)
"""
import os

import requests

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9101")
session = requests.Session()


def app(environ, start_response):
    resp = session.get(UPSTREAM + environ.get("PATH_INFO", "/"))
    start_response(f"{resp.status_code} {resp.reason}",
                   [("Content-Type", resp.headers.get("Content-Type", "text/plain")),
                    ("Content-Length", str(len(resp.content)))])
    return [resp.content]
