"""Attacks on split's ``rollout.abandoned_after`` (db8d10d): a request whose client left once
the upstream had held it that long without an answer's head is its group's failure. Each of
the first three failed before its fix:

1-2. A request queued for a free stream of an HTTP/2 upstream's connection (its
   SETTINGS_MAX_CONCURRENT_STREAMS), which the upstream had not seen, whose client left
   (an HTTP/2 client's reset, an HTTP/1.1 client's close) past abandoned_after, counted its
   whole wait as the upstream's: clients leaving a saturated, healthy canary rolled it back.
3. A gRPC call's own grpc-timeout running out (the client's patience, as a client leaving
   is) counted as the canary's failure, whatever abandoned_after: 1 ms deadlines rolled back
   a canary answering in 0.4 s. It now counts as a client leaving does.

The rest cover the HTTP/2 upstream path: clients leaving a hung canary, over both client
protocols, and gRPC deadlines on a hung one, count once each; a paused streamed upload does not.
"""
import re
import socket
import threading
import time
from types import SimpleNamespace

import h2.events

from ..conftest import wait_until
from ..h2_upstreams import ScriptedH2Upstream
from ..h2client import RawH2
from .test_rollout_abandoned_dec16c import impatient
from .test_rollout_attack_dec05 import canary_keys
from .test_rollouts import rollout_conf, rollout_of


def h2_canary_gateway(launcher, tmp_path, canary, abandoned_after, **server):
    """The route shop split between v1 (HTTP/1.1) and ``canary`` (an h2c upstream) with a
    rollout at 50 % and abandoned_after; h2c for clients too."""
    v1 = launcher.upstream("v1")
    v2 = SimpleNamespace(url=f"http://127.0.0.1:{canary.port}")
    conf = rollout_conf(tmp_path, v1, v2, workers=1, steps=[50, 100], interval=600,
                        min_requests=4, gates=[{"kind": "success_rate", "min": 95}],
                        abandoned_after=abandoned_after)
    conf["upstreams"]["v2"]["protocol"] = "h2"
    conf["http2"] = {"h2c": True}
    conf["server"].update(server)
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=10)
    return gw


def all_failed(entry):
    """The count of the canary's requests the rollback was judged on, all failed (at a tick
    of the helper's: 4 (min_requests) or all 5 a test sent, never one counted twice), or
    None."""
    counted = re.search(r"\((\d+) of (\d+) failed\)", entry["history"][-1]["reason"])
    return int(counted[1]) if counted and counted[1] == counted[2] else None


def queue_behind_two(gw, canary):
    """Two patient requests to ``canary`` (one stream at a time, 1 s each): the first holds
    its stream, the second waits for it; the threads, to join."""
    first, second = canary_keys(2, 50)
    answered = []

    def patient(key):
        resp, _ = gw.request("GET", "/shop/echo", headers={"X-User": key}, timeout=5)
        answered.append(resp.status)
    threads = [threading.Thread(target=patient, args=(key,)) for key in (first, second)]
    threads[0].start()
    wait_until(lambda: canary.requests == 1, timeout=5)    # it holds the one stream
    threads[1].start()
    time.sleep(0.1)
    return threads, answered


def test_an_http2_clients_reset_in_the_wait_for_a_free_stream_is_no_failure(launcher,
                                                                             tmp_path):
    """A healthy canary answering in 1 s that allows one stream at a time: requests queued
    behind the ones it answers wait for a free stream in the gateway, which the canary has
    not seen. Their clients resetting after 1.7 s (abandoned_after 1.5 s) say nothing of
    the canary: counted as failures, as their whole wait was, they rolled back a canary
    that failed nobody."""
    canary = ScriptedH2Upstream("v2", "slow", delay=1.0, max_streams=1)
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=1.5)
        threads, answered = queue_behind_two(gw, canary)
        client = RawH2(gw.port)
        try:
            streams = [client.request("/shop/echo", headers=[("x-user", key)])
                       for key in canary_keys(6, 50)[2:]]
            client.pump(lambda c: False, timeout=1.7)       # queued behind the two
            for sid in streams:
                client.conn.reset_stream(sid)
            client.flush()
        finally:
            client.sock.close()
        for thread in threads:
            thread.join(5)
        assert answered == [200, 200], answered
        time.sleep(1.5)         # the helper's ticks (0.5 s) sum what the workers counted
        entry = rollout_of(gw)
        assert entry["status"] == "running", entry
        assert entry["canary"] == {"requests": 2, "failures": 0}, entry["canary"]
    finally:
        canary.close()


def test_an_http1_client_gone_in_the_wait_for_a_free_stream_is_no_failure(launcher,
                                                                           tmp_path):
    """The same over HTTP/1.1: a client that left while its request waited for a free
    stream is seen once the request has one; the wait before it is not the canary's."""
    canary = ScriptedH2Upstream("v2", "slow", delay=1.0, max_streams=1)
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=1.5)
        threads, answered = queue_behind_two(gw, canary)
        impatient(gw, canary_keys(4, 50)[2:], patience=1.7)
        for thread in threads:
            thread.join(5)
        assert answered == [200, 200], answered
        # the two left are seen within a second each of getting a stream (find_hangups)
        wait_until(lambda: canary.requests == 4, timeout=5)
        time.sleep(2.0)
        entry = rollout_of(gw)
        assert entry["status"] == "running", entry
        assert entry["canary"]["failures"] == 0, entry["canary"]
    finally:
        canary.close()


def test_clients_leaving_a_hung_http2_canary_count_once_each(launcher, tmp_path):
    """The HTTP/2 upstream path (h2proxy) keeps the wait too: HTTP/1.1 clients that leave
    and HTTP/2 clients that reset their streams on a canary that answers nobody are its
    failures, each counted once, in the window of the step they were placed in."""
    canary = ScriptedH2Upstream("v2", "slow", delay=20)
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=0.5)
        keys = canary_keys(5, 50)
        client = RawH2(gw.port)
        try:
            streams = [client.request("/shop/echo", headers=[("x-user", key)])
                       for key in keys[:2]]
            impatient(gw, keys[2:], patience=1.0)       # the canary holds them all
            for sid in streams:
                client.conn.reset_stream(sid)
            client.flush()
            wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=10)
            client.pump(lambda c: False, timeout=0.1)
            assert not [e for e in client.events if isinstance(e, h2.events.ResponseReceived)]
        finally:
            client.sock.close()
        entry = rollout_of(gw)
        assert all_failed(entry) in (4, 5), entry
    finally:
        canary.close()


def test_a_paused_streamed_upload_left_is_no_failure_of_an_http2_canary(launcher, tmp_path):
    """Bodies streamed to an HTTP/2 canary (request_buffer_size 0), whose clients send a
    piece and pause 1.5 s before leaving (an HTTP/2 client's reset; an HTTP/1.1 client that
    asked 100-continue, its close): the wait was the client's, not the canary's, whatever
    abandoned_after (1 s)."""
    canary = ScriptedH2Upstream("v2", "slow", delay=20)       # answers at the body's end
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=1.0,
                               request_buffer_size=0)
        h2_key, h1_key = canary_keys(2, 50)
        client = RawH2(gw.port)
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            sid = client.request("/shop/upload", method="POST", body=b"x" * 10, end=False,
                                 headers=[("x-user", h2_key), ("content-length", "100")])
            sock.sendall(b"POST /shop/upload HTTP/1.1\r\nHost: h\r\nX-User: %s\r\n"
                         b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
                         % h1_key.encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 100"), "no 100 Continue"
            sock.sendall(b"x" * 10)
            wait_until(lambda: canary.requests == 0 and len(canary.heads) == 2, timeout=5)
            client.pump(lambda c: False, timeout=1.5)       # the clients pause
            client.conn.reset_stream(sid)
            client.flush()
        finally:
            sock.close()
            client.sock.close()
        time.sleep(2.0)         # a hang-up seen within 1 s; the helper's ticks
        entry = rollout_of(gw)
        assert entry["status"] == "running", entry
        assert entry["canary"] == {"requests": 0, "failures": 0}, entry["canary"]
    finally:
        canary.close()


def canary_calls(client, grpc_timeout):
    """Five gRPC calls on ``client`` whose keys the weights place on the canary, each with
    ``grpc_timeout`` -> their stream ids."""
    return [client.request("/shop/Svc/Call", method="POST", body=b"\0\0\0\0\0",
                           headers=[("x-user", key), ("te", "trailers"),
                                    ("content-type", "application/grpc"),
                                    ("grpc-timeout", grpc_timeout)])
            for key in canary_keys(5, 50)]


def test_a_grpc_clients_own_short_deadline_is_no_failure_of_a_healthy_canary(launcher,
                                                                              tmp_path):
    """gRPC clients whose calls carry grpc-timeout: 1m (a millisecond) to a canary that
    answers in 0.4 s: each call ends at its deadline (the gateway's DEADLINE_EXCEEDED at
    0.1 s), which is the client's patience, as a client leaving is: counted as the canary's
    failure, a client rolled a healthy canary back by its deadlines (passive health already
    says it is no failure of the target's). Under abandoned_after (1 s) it would count once
    the upstream had the call that long."""
    canary = ScriptedH2Upstream("v2", "slow", delay=0.4)
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=1.0)
        client = RawH2(gw.port)
        try:
            streams = canary_calls(client, "1m")
            client.pump(lambda c: all(c.ended(sid) or c.reset_code(sid) is not None
                                      for sid in streams), timeout=3)
            statuses = [dict(e.headers).get(b"grpc-status") for e in client.events
                        if isinstance(e, (h2.events.ResponseReceived,
                                          h2.events.TrailersReceived))]
            assert statuses.count(b"4") == 5, statuses      # DEADLINE_EXCEEDED, each
        finally:
            client.sock.close()
        time.sleep(1.5)         # the helper's ticks
        entry = rollout_of(gw)
        assert entry["status"] == "running", entry
        assert entry["canary"]["failures"] == 0, entry["canary"]
    finally:
        canary.close()


def test_grpc_calls_a_hung_canary_held_past_abandoned_after_roll_it_back(launcher, tmp_path):
    """Deadlines still tell of a hung canary: calls of grpc-timeout 1.2 s, which it held
    that long (past abandoned_after, 1 s) unanswered, are its failures."""
    canary = ScriptedH2Upstream("v2", "slow", delay=20)
    try:
        gw = h2_canary_gateway(launcher, tmp_path, canary, abandoned_after=1.0)
        client = RawH2(gw.port)
        try:
            streams = canary_calls(client, "1200m")
            client.pump(lambda c: all(c.ended(sid) for sid in streams), timeout=4)
        finally:
            client.sock.close()
        wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=5)
        assert all_failed(rollout_of(gw)) in (4, 5), rollout_of(gw)
    finally:
        canary.close()
