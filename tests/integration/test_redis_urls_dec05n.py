"""Redis URLs, their masks and the Redis store, attacked (the attack pass of 2026-12-05,
helper s1, on bff7bbf). Each test failed on that commit.

1. The batcher sent a batch again on a new connection when the connection it held from the
   batch before was lost before its replies came: taken for one Redis had closed while
   idle, which had run nothing. A connection lost after the batch reached Redis (killed
   by ``CLIENT KILL``, cut by a proxy or a firewall's idle timer, Redis dying between its
   write and our read) had run it: every hit of the batch was counted twice, and a client
   of a ``rate = 5`` limit got 2 requests. A held connection is now polled before it is
   written to (one poll per batch: closed, it is replaced, nothing sent), and a batch lost
   after its write is never sent again: its calls fall back to ``on_store_error``.
2. A password of digits followed by "?" and an option of redis-py's
   (``redis://:12345?client_name=q@10.0.0.7:6379/0``), a user and such a password, or a
   token user part so (``redis://tok?client_name=q@...``): the masks took the "?" for the
   options query's, whose "@" ends no user part (":12345" read as a port, "tok" as a host),
   so ``check --dump`` and every masked text showed the password whole; ``check`` said ok,
   and redis-py connected to port 12345 of localhost (or host "tok") without it. Such a URL
   is now refused, its password masked, by the one reading of a redis URL the check and the
   masks share (redact.redis_url_parts, held to redis-py's own on every URL it accepts).
3. A ``redis+sentinel://`` URL with a query (``/mymaster?socket_timeout=1``,
   ``?password=...``): check said ok, the query was taken into the master's name, no
   Sentinel knew that master, every limit fell back, and the log said the name, password and
   all, in each ``redis unreachable (No master found for 'mymaster?password=...')``; a
   ``redis+cluster://`` URL's query was dropped unread. Both are refused now, naming it.
4. A ``redis+sentinel://`` URL whose db is not a number (``/mymaster/abc``): check said ok
   and every worker died as it started, over and over (int("abc")), the gateway serving
   nothing. Refused now, as is a path after a Cluster's hosts (it has one database).
5. An option's name percent-encoded (``?pass%77ord=...``), which redis-py decodes and takes
   as the AUTH password: ``check --dump`` and the masks showed its value.
6. An option redis-py's connection does not take (``?socket_timout=1``, or ``ssl_ca_certs``
   on a redis:// URL), or a value it refuses only when it makes a connection
   (``ssl_cert_reqs=bogus``): check said ok, and every batch of every worker raised
   (TypeError, RedisError), a traceback in the log each time, while every limit fell back.
   Refused now, naming the option.
7. ``password_file`` with a URL holding ``?password=``: redis-py takes the URL's over the
   file's, so the file was read and unused, unsaid. Refused, as a password in the user part
   with ``password_file`` is.
"""
import http.client
import socket
import subprocess
import sys

import pytest

from ..conftest import TcpRelay, gateway_conf, route, to_toml, wait_until
from ..pki import CA
from .test_open_items_dec05h import check_dump

HOUR = 3600.0


class ReplyDropper(TcpRelay):
    """A relay to Redis that, once armed, lets the next command through, drops Redis' reply
    and cuts the client's connection: the batch ran, its answer never came."""

    armed = False

    def forward(self, data, dst, to_client):
        if to_client and self.armed:
            self.armed = False
            dst.shutdown(socket.SHUT_RDWR)
            return
        dst.sendall(data)


def remaining(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/lim")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.getheader("RateLimit-Remaining")


# -- 1. a batch whose connection was lost after it ran is not counted twice -------------------

def test_a_batch_lost_after_it_reached_redis_is_not_counted_again(launcher, upstream):
    redis = launcher.redis()
    relay = ReplyDropper(redis.port)
    try:
        gw = launcher.gateway(gateway_conf(
            [route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
                "rate": 5, "per": HOUR, "burst": 5, "key": "route",
                "on_store_error": "allow"}})],
            redis={"url": f"redis://127.0.0.1:{relay.port}/0", "timeout": 0.5}))
        assert remaining(gw) == (200, "4")
        relay.armed = True          # the next batch runs in Redis, its answer is lost
        assert remaining(gw) == (200, None)         # allow: passed on, uncounted here
        assert not relay.armed
        # Redis counted that request once: 5 - 2 left 3; sent again, it said 2
        assert remaining(gw) == (200, "2")
        assert "redis unreachable" not in gw.log()     # one lost connection pauses nothing
        wait_until(lambda: "not sent again, it may have counted" in gw.log(), timeout=5)
    finally:
        relay.close()


# -- 2. a password of digits, or a token, and "?option=" --------------------------------------

SECRET = "58213"      # a port to redis-py


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}?client_name=q@127.0.0.1:6379/0",
    f"redis://gw:{SECRET}?client_name=q@127.0.0.1:6379/0",
    f"redis://tok{SECRET}?client_name=q@127.0.0.1:6379/0",
    f"unix://:{SECRET}?client_name=q@/run/redis/redis.sock",
])
def test_a_password_of_digits_and_an_option_is_refused_and_never_shown(tmp_path, url):
    code, out = check_dump(tmp_path, url)
    assert code != 0 and "must be percent-encoded" in out and "%40" in out, out
    assert SECRET not in out, out
    # written as redis-py reads it as meant, it passes, the password masked
    code, out = check_dump(tmp_path, url.replace("?", "%3F"))
    assert code == 0 and "url = " in out and SECRET not in out, out


# -- 3. a Sentinel or Cluster URL with a query -------------------------------------------------

@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster?password=" + SECRET,
    "redis+sentinel://127.0.0.1:26379/mymaster?socket_timeout=1",
    "redis+sentinel://127.0.0.1:26379/mymaster#1",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/?password=" + SECRET,
])
def test_a_multi_host_url_with_a_query_is_refused(tmp_path, url):
    code, out = check_dump(tmp_path, url)
    assert code != 0 and "takes no ?options" in out, out
    assert SECRET not in out, out


# -- 4. a Sentinel URL whose db is no number ---------------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://127.0.0.1:26379/mymaster/abc", "a db number after it"),
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/5", "one database"),
])
def test_a_multi_host_url_path_no_worker_can_use_is_refused(tmp_path, url, words):
    code, out = check_dump(tmp_path, url)
    assert code != 0 and words in out, out
    code, out = check_dump(tmp_path, "redis+sentinel://127.0.0.1:26379/mymaster/3")
    assert code == 0, out


# -- 5. an option's name percent-encoded -------------------------------------------------------

def test_a_percent_encoded_password_option_is_masked(tmp_path):
    for url in (f"redis://127.0.0.1:6379/0?pass%77ord={SECRET}",
                f"redis://127.0.0.1:6379/0?db=0&%70assword={SECRET}"):
        code, out = check_dump(tmp_path, url)
        assert code == 0 and "url = " in out, out
        assert SECRET not in out, out


# -- 6. an option redis-py's connection does not take ------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("redis://127.0.0.1:6379/0?socket_timout=1", "redis-py takes no option 'socket_timout'"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ssl/ca.pem",
     "redis-py takes no option 'ssl_ca_certs'"),
    ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=bogus", "Invalid SSL Certificate Requirements"),
])
def test_an_option_redis_py_does_not_take_is_refused(tmp_path, url, words):
    code, out = check_dump(tmp_path, url)
    assert code != 0 and words in out, out
    ca_file = CA(tmp_path).cert_path    # (one check loads: a missing one is refused)
    code, out = check_dump(tmp_path, f"rediss://127.0.0.1:6380/0?ssl_ca_certs={ca_file}")
    assert code == 0, out


# -- 7. password_file and ?password= -----------------------------------------------------------

def test_password_file_with_a_password_in_the_urls_query_is_refused(tmp_path):
    secret_file = tmp_path / "redis.pw"
    secret_file.write_text("from-the-file\n")
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([], redis={
        "url": f"redis://127.0.0.1:6379/0?password={SECRET}",
        "password_file": str(secret_file)})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "redis.url holds a password too" in out, out
    assert SECRET not in out, out
