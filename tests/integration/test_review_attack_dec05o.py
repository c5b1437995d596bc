"""Review of cf6a422 (the etcd sync's CallDeadline, AuthRejected, names_once, the GOAWAY race),
491922f (`get` masks secrets, `put` refuses the mask), 583377e and 89e96da, as an attacker
and as a legitimate operator (helper s6, 2026-12-05). Every test starts real processes (etcd,
the CLI) and talks to them over loopback; each failed on the code before its fix.

1. `routes validate` / `put` of a document nested a few hundred levels deep (a generated
   file gone wrong, or anyone who may feed the CLI a file) died with a RecursionError and
   a traceback: 491922f's mask check (``masks_in``) walked the document recursively, two
   frames a level, before anything else looked at it. Before it, the same file was one
   `error:` line (``x: unknown key``), exit 2. The walk is now a loop.
2. ``put`` refused "***" wherever it stood, not where ``get`` prints it in place of a
   secret: a rewrite that sets ``Server: ***`` (hiding the upstream's software), a fault's
   abort body "***", a header match on "***": all legitimate, all refused ("the mask `get`
   prints in place of a secret: give the secret itself"), for a value that is no secret.
   And the mask ``get`` prints inside a value was not refused at all: a redirect to
   ``https://sso.example.com/start?token=...`` is shown ``?token=***``, and that output put
   back stored the redirect with the token "***" (exit 0), the very copy-paste 491922f meant
   to stop. ``masks_in`` now asks ``redact`` itself whether each "***" stands where it masks
   a secret (a whole value under a secret's name, a URL's password or token parameter).
3. ``get`` of a value put by hand that is not JSON (``etcdctl put`` of a Python-style dict,
   ``{'plugins': {'jwt': {'secret': '...'}}}``) printed its start as stored, its jwt secret
   in clear, without ``--show-secrets``, in the error an operator pastes into the ticket
   about why the route is rejected; ``list`` showed it too. A value that is not JSON and
   names a secret (by the names redact masks) is now shown as its length and that note,
   unless ``--show-secrets``; one naming none is shown as before.
4. A member (or a proxy in front of it) that trickles a watch's messages was, about one
   watch in three, taken for a quiet one: "etcd watch silent; resuming it", on the same
   member, never the next (cf6a422's WatchLost and failover skipped). The CallDeadline's
   thread cuts the connection, then says ``expired``; the watch's read failed at the cut
   and asked ``expired`` at once, before the thread had said it, and fell to the "silent"
   branch. Through a trickling relay, 6 of 20 watches returned quietly. The watch now
   waits for the cut under way (disarm takes the lock the cut holds) before it asks.

Second part (helper u4, 2026-12-05): a review of c617270 (HTTP/2: a PRIORITY of the wrong
size, a WINDOW_UPDATE's reserved bit, an undecodable block), b749dba, 1a56336 and 5939b40
(redis URLs) and 9d147875 (JointPreflight a Chain), as an attacker; real gateways, Redis and
hand-built HTTP/2 frames over loopback.

5. A frame whose header declares more than the max_frame_size the gateway announced was
   refused only once all of it had arrived: h2's frame reader waits for the whole frame
   before it checks its length. A client (or an HTTP/2 upstream) that declared a 16 MiB
   PRIORITY, DATA or unknown frame and then sent its bytes had the connection hold them all,
   up to 16 MiB a connection whatever SETTINGS_MAX_FRAME_SIZE said (c617270's question: is a
   PRIORITY of a huge declared length bounded by it? It never was): 4 MiB sent after the
   header drew no answer at all. The shared reader (core.h2frames) now refuses the frame as
   soon as its header is in (GOAWAY FRAME_SIZE_ERROR, RFC 9113 4.2), on both sides.
6. An HTTP/2 upstream's PRIORITY of the wrong size (c617270's new stream error) weighed one
   against the upstream's flood budget whatever its size, where every other frame with
   nothing to relay weighs one more per KiB: 16 KiB of junk went through the parser for the
   price of a 4-byte one. It is weighed by its size now (pure code: the test is
   tests/unit/test_h2frames_dec05o.py).

Held up: a PRIORITY of the wrong size on stream 0 or inside a header block still ends the
connection, one split across reads is whole before it is judged, and each weighs as a
control frame at the client edge; a block HPACK cannot decode ends the connection on both
sides (never a stream error with the table out of step), an HPACK bomb is still
ENHANCE_YOUR_CALM; the reserved bit is still the upstream's connection error. redis://,
rediss:// (ssl options kept) and unix:// clients all take the gateway's timeouts and no
retries whatever their query says; password_file still goes to AUTH; `check`'s new warnings
quote no secret (user part, ?password=, pass%77ord=). JointPreflight answers as before on
header-steered paths (the existing joint preflight tests pass on it).
"""
import json
import socket
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from gwserver.sync.etcd import EtcdClient, WatchLost

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream
from ..h2client import RawH2
from .test_h2_upstream_fields import answer_to
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_review_attack_dec05n import Trickle
from .test_routes_cli import PREFIX, cli, conf_path, one_error  # noqa: F401 (a fixture)

E = h2.errors.ErrorCodes

UPSTREAM = {"targets": [{"url": "http://127.0.0.1:9"}]}


# -- 1. a deeply nested document killed `routes validate` and `put` -----------------------------

def test_a_deeply_nested_document_is_one_error_not_a_traceback(conf_path):
    deep = "[" * 700 + "]" * 700
    text = f'{{"id": "r", "paths": ["/r"], "upstream": {json.dumps(UPSTREAM)}, "x": {deep}}}'
    for action in ("validate", "put"):
        one_error(cli(conf_path, "routes", action, "-", stdin=text), "route r: x: unknown key")
    assert conf_path.etcd.client().range_prefix(PREFIX + "/")[1] == []


# -- 2. "***" refused where it is no mask, taken where it is one ----------------------------------

def test_a_value_that_is_three_stars_but_no_secret_is_taken(conf_path):
    route = {"id": "stars", "paths": ["/s"], "upstream": UPSTREAM,
             "headers": {"X-Debug": "***"},
             "plugins": {"rewrite": {"response_headers": {"set": {"Server": "***"}}},
                         "fault": {"abort": {"status": 503, "body": "***",
                                             "percentage": 0.0}},
                         # a secret with "***" in it is a secret, not the mask
                         "jwt": {"algorithms": ["HS256"],
                                 "secret": "k***" + "0123456789abcdef" * 3}}}
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=json.dumps(route))
        assert run.returncode == 0, run
    shown = cli(conf_path, "routes", "get", "stars", "--show-secrets")
    assert shown.returncode == 0 and json.loads(shown.stdout) == route, shown


def test_a_mask_inside_a_value_given_back_is_refused(conf_path):
    uri = "https://sso.example.com/start?token=tk-0a1b2c3d4e5f&next=/home"
    route = {"id": "sso", "paths": ["/login"], "upstream": UPSTREAM,
             "plugins": {"redirect": {"uri": uri, "status": 302}}}
    assert cli(conf_path, "routes", "put", "-", stdin=json.dumps(route)).returncode == 0
    shown = cli(conf_path, "routes", "get", "sso")
    assert shown.returncode == 0 and "tk-0a1b2c3d4e5f" not in shown.stdout, shown
    assert "?token=***&next=/home" in shown.stdout
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=shown.stdout)
        assert run.returncode == 2, run                     # 0 before: stored with "***"
        assert "routes/sso: plugins.redirect.uri holds ***, the mask `get` prints" in \
            run.stderr, run.stderr
    stored = cli(conf_path, "routes", "get", "sso", "--show-secrets")
    assert json.loads(stored.stdout)["plugins"]["redirect"]["uri"] == uri


# -- 3. `get` of a value that is not JSON printed its secret -------------------------------------

def test_a_stored_value_that_is_not_json_keeps_its_secret_unless_asked(conf_path):
    secret = "hs256-0123456789abcdef0123456789abcdef"
    raw = "{'paths': ['/j'], 'plugins': {'jwt': {'secret': '%s'}}}" % secret
    conf_path.etcd.client().put(f"{PREFIX}/routes/hand", raw.encode())
    run = cli(conf_path, "routes", "get", "hand")
    one_error(run, f"{PREFIX}/routes/hand: stored value is not valid JSON",
              f"{len(raw)} bytes", "--show-secrets")
    listed = cli(conf_path, "routes", "list")
    assert listed.returncode == 0 and "hand" in listed.stdout, listed
    for text in (run.stdout + run.stderr, listed.stdout + listed.stderr):
        assert secret not in text, text
    shown = cli(conf_path, "routes", "get", "hand", "--show-secrets")
    one_error(shown, f"{PREFIX}/routes/hand: stored value is not valid JSON", secret)


# -- 4. a trickled watch was often taken for a quiet one ------------------------------------------

def test_a_watch_whose_messages_trickle_is_lost_every_time(launcher):
    etcd = launcher.etcd()
    relay = Trickle(etcd.client_port, watch_only=True)     # the watch's body, a byte / 0.3 s
    try:
        client = EtcdClient([relay.url], timeout=1.0)
        revision = client.identity()[1]
        outcomes = []
        for _ in range(16):
            try:
                for _ in client.watch_prefix(PREFIX + "/", revision + 1, 0.5):
                    outcomes.append("a message")        # (never: none comes whole)
                outcomes.append("resumed as quiet")
            except WatchLost as exc:
                outcomes.append("lost" if "no whole message within 0.5s of its start" in
                                str(exc) else str(exc))
    finally:
        relay.close()
    assert outcomes == ["lost"] * 16, outcomes      # ~1 in 3 "resumed as quiet" before


# -- 5. a frame over max_frame_size was held until all of it had come -----------------------------

def overlong_header(kind, stream_id):
    """The 9-byte header of a frame of ``kind`` that declares 16 MiB - 1 of payload (the most
    a length can say; the gateway announces 16 KiB)."""
    return ((1 << 24) - 1).to_bytes(3, "big") + bytes([kind, 0]) + stream_id.to_bytes(4, "big")


@pytest.mark.parametrize("kind", [0x2, 0x0, 0xBB], ids=["priority", "data", "unknown"])
def test_a_client_frame_declared_over_max_frame_size_is_refused_at_its_header(launcher,
                                                                              upstream, kind):
    """A client declares a 16 MiB frame on its stream and sends its bytes: before, the
    gateway read and held 4 MiB of them without a word (all 16 MiB, had they come)."""
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    sid = client.request("/echo", method="POST", end=False)
    client.send_raw(overlong_header(kind, sid))
    sent = 0
    while sent < 4 << 20 and not client.closed:     # what the gateway held, before
        client.send_raw(b"\0" * 65536)
        sent += 65536
        if client.pump(lambda c: c.goaway() is not None, timeout=0.01):
            break
    assert client.pump(lambda c: c.goaway() is not None, timeout=3), f"{sent} bytes held"
    assert client.goaway().error_code == E.FRAME_SIZE_ERROR     # RFC 9113 4.2
    assert sent <= 1 << 20, f"{sent} bytes of the frame read before it was refused"
    client.close()


class OverlongH2Upstream(H2cUpstream):
    """Answers each request with a DATA frame header that declares 16 MiB - 1, then sends its
    bytes 64 KiB at a time (at most 4 MiB, 2 s), until the gateway closes or says GOAWAY."""

    def __init__(self):
        self.goaway, self.sent = None, 0
        self.done = threading.Event()
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            sock.settimeout(0.01)
            try:
                self.serve_one(sock, conn)
            except (h2.exceptions.ProtocolError, OSError):
                pass
            self.done.set()

    def serve_one(self, sock, conn):
        started = None
        deadline = time.monotonic() + 5
        while self.goaway is None and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.goaway = event.error_code
                    elif isinstance(event, h2.events.RequestReceived) and started is None:
                        conn.send_headers(event.stream_id, [(b":status", b"200")])
                        sock.sendall(conn.data_to_send() +
                                     overlong_header(0x0, event.stream_id))
                        started = time.monotonic()
                sock.sendall(conn.data_to_send())
            except socket.timeout:
                pass
            if started is not None and self.sent < 4 << 20 and \
                    time.monotonic() - started < 2:
                sock.sendall(b"\0" * 65536)
                self.sent += 65536


def test_an_upstream_frame_declared_over_max_frame_size_is_refused_at_its_header(launcher):
    """An HTTP/2 upstream does the same with its answer's DATA: before, the gateway read and
    held what came until the read timeout; now the connection ends at the header, a 502."""
    up = OverlongH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "timeouts": {"read": 3}, "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{up.port}"}], "protocol": "h2"}}]))
        began = time.monotonic()
        answer = answer_to(gw.port, b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        took = time.monotonic() - began
        assert up.done.wait(10)
    finally:
        up.close()
    # (before: the bytes were read and held until the read timeout, 3 s, gave the 502)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
    assert took < 2 and up.sent <= 1 << 20, (took, up.sent)
    assert "Received overlong frame: length 16777215, max 16384" in gw.log()
