"""Attack pass (Dec 5, n), pure code: the etcd client's whole-answer read, the watch's first
message, and how a rejection is shown (the integration tests, with real processes:
tests/integration/test_etcd_attack_dec05n.py).

1. ``read_whole`` had no size cap: an answer that never ends was held in memory until the
   OOM killer came. It is capped (MAX_ANSWER), on the declared length and as it comes, and
   the connection of an answer cut so is closed, never pooled.
4. A watch's "created" message carries etcd's revision when the watch was made, before its
   catch-up (what came after start_revision) is sent: taken as the watch's position, a
   watch that hung between the two was resumed past the catch-up, its changes lost for good.
5. A rejection of a huge key, or with a huge reason, was quoted whole in the log and
   status.json (shown_rejection shortens them).
"""
import json

import pytest

from gwserver.sync import etcd
from gwserver.sync.etcd import AnswerTooLarge, EtcdClient, read_whole


class Answer:
    """What read_whole uses of a requests Response."""

    def __init__(self, chunks, declared=None):
        self.chunks, self.read, self.closed = chunks, 0, False
        self.headers = {} if declared is None else {"Content-Length": str(declared)}

    def iter_content(self, size):
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk

    def close(self):
        self.closed = True


class Deadline:
    def extend(self, seconds):
        pass


def endless(piece=b" " * 65536):
    while True:
        yield piece


def test_an_answer_past_the_cap_is_cut_there_and_its_connection_closed():
    answer = Answer(endless())
    with pytest.raises(AnswerTooLarge, match="an answer went past 1048576 bytes"):
        read_whole(answer, Deadline(), limit=1 << 20)
    assert answer.closed and answer.read <= (1 << 20) + 65536


def test_an_answer_declared_past_the_cap_is_not_read():
    answer = Answer(endless(), declared=1 << 40)
    with pytest.raises(AnswerTooLarge, match="it declared 1099511627776"):
        read_whole(answer, Deadline())
    assert answer.closed and answer.read == 0


def test_an_answer_within_the_cap_is_read_whole():
    answer = Answer([b'{"header":', b'{}}'], declared=13)
    read_whole(answer, Deadline(), limit=13)
    assert answer._content == b'{"header":{}}'
    assert etcd.MAX_ANSWER >= 256 << 20        # documented: docs/etcd.md


class Stream:
    """A watch answer: its messages, one a line, then etcd closing it."""

    status_code = 200

    def __init__(self, messages):
        self.body = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        self.raw = type("Raw", (), {"connection": None})()

    def iter_content(self, size):
        yield self.body

    def close(self):
        pass


def test_a_watch_s_created_message_is_no_position_past_its_catch_up(monkeypatch):
    header = {"cluster_id": "1", "revision": "40"}
    stream = Stream([{"result": {"header": header, "created": True}},
                     {"result": {"header": header, "events": [
                         {"kv": {"key": "L2d3L3IvYQ==", "value": "e30=",
                                 "mod_revision": "12"}}]}}])
    client = EtcdClient(["http://127.0.0.1:9"])
    monkeypatch.setattr(client, "_post", lambda *args, **kwargs: stream)
    seen = []
    with pytest.raises(etcd.WatchLost):        # (etcd closed the stream)
        for revision, events in client.watch_prefix("/gw/", 11, 5.0):
            seen.append((revision, [kind for kind, *_ in events]))
    assert seen == [(10, []), (40, ["put"])]    # the created one: 40 before


def test_a_long_key_and_reason_are_shown_shortened_with_what_is_wrong():
    from gwserver.sync.watcher import SHOWN_KEY, shown_rejection
    long_id = "k" * 100_000
    key, reason = shown_rejection(f"routes/{long_id}",
                                  f"route {long_id}: paths: is required; route {long_id}: x")
    assert len(key) < SHOWN_KEY + 100 and "... (100007 characters, sha1 " in key
    assert len(reason) < 2 * SHOWN_KEY + 200 and reason.count("(100000 characters") == 2
    assert "characters, sha1 " + key[-13:-1] not in reason      # (the id's digest, not key's)
    assert ": paths: is required; route " in reason and reason.endswith("): x")
    other = shown_rejection("routes/" + "k" * 99_999 + "j", "r")[0]
    assert other != key                         # two that begin alike stay apart
    assert shown_rejection("routes/r", "route r: short") == ("routes/r", "route r: short")
