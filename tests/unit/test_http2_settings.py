"""Per-listener [http2] settings: entries name HTTP/2 listeners only, and fall back to [http2]."""
import socket

import pytest

from gwserver.client.h2server import ListenerSettings
from gwserver.errors import ConfigError
from gwserver.settings import parse_conf

TLS = {"bind": ["127.0.0.1:8443"], "certificates": [{"cert": "/nonexistent.pem",
                                                      "key": "/nonexistent.key"}]}


def problems_of(doc):
    with pytest.raises(ConfigError) as info:
        parse_conf(doc)
    return info.value.problems


@pytest.mark.parametrize("http2, tls, expected", [
    ({"listeners": {"127.0.0.1:8080": {}}}, None,
     'http2.listeners."127.0.0.1:8080": not an HTTP/2 listener: h2c is not on there'),
    ({"h2c": True, "listeners": {"10.9.9.9:80": {}}}, None,
     'http2.listeners."10.9.9.9:80": not an HTTP/2 listener: it is in neither server.bind '
     'nor tls.bind'),
    ({"listeners": {"127.0.0.1:8443": {}}}, {**TLS, "alpn": ["http/1.1"]},
     'http2.listeners."127.0.0.1:8443": not an HTTP/2 listener: tls.alpn does not offer h2'),
    ({"h2c": True, "listeners": {"127.0.0.1:8080": {"max_frame_size": 1}}}, None,
     "http2.listeners.127.0.0.1:8080.max_frame_size: must be an integer between 16384"),
    ({"h2c": True, "listeners": {"127.0.0.1:8080": {"h2c": True}}}, None,
     "http2.listeners.127.0.0.1:8080.h2c: unknown key"),
    ({"h2c": True, "listeners": {"nowhere": {}}}, None, "http2.listeners.nowhere: must be"),
])
def test_a_listener_entry_must_name_an_http2_listener(http2, tls, expected):
    doc = {"server": {"bind": ["127.0.0.1:8080"]}, "http2": http2}
    if tls:
        doc["tls"] = tls
    problems = problems_of(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_h2_and_h2c_listeners_may_have_entries():
    conf = parse_conf({"server": {"bind": ["127.0.0.1:8080", "127.0.0.1:8081"]},
                       "http2": {"h2c": ["127.0.0.1:8081"], "max_concurrent_streams": 64,
                                 "listeners": {"127.0.0.1:8081": {"max_frame_size": 65536}}}})
    assert conf.http2["listeners"]["127.0.0.1:8081"]["max_frame_size"] == 65536


class FakeSocket:
    def __init__(self, address):
        self.address = address

    def getsockname(self):
        return self.address


@pytest.mark.parametrize("local, expected", [
    (("127.0.0.1", 8081), (7, 65536, 64)),      # its entry; unset values are [http2]'s
    (("127.0.0.1", 8080), (64, 16384, 64)),     # no entry: [http2]
    (("10.1.2.3", 9000), (3, 16384, 64)),       # bound to 0.0.0.0:9000
    (("::ffff:10.1.2.3", 9000), (3, 16384, 64)),
])
def test_a_connection_gets_its_listeners_settings(local, expected):
    conf = parse_conf({"server": {"bind": ["127.0.0.1:8080", "127.0.0.1:8081", "0.0.0.0:9000"]},
                       "http2": {"h2c": True, "max_concurrent_streams": 64,
                                 "max_resets_per_second": 64, "listeners": {
                                     "127.0.0.1:8081": {"max_concurrent_streams": 7,
                                                        "max_frame_size": 65536},
                                     "0.0.0.0:9000": {"max_concurrent_streams": 3}}}})
    got = ListenerSettings(conf.http2).of(FakeSocket(local))
    assert (got["max_concurrent_streams"], got["max_frame_size"],
            got["max_resets_per_second"]) == expected
    assert "listeners" not in got


def test_a_unix_listener_gets_the_defaults():
    conf = parse_conf({"http2": {"h2c": True, "listeners": {"127.0.0.1:8080": {
        "max_concurrent_streams": 7}}}})
    with socket.socket(socket.AF_UNIX) as sock:
        assert ListenerSettings(conf.http2).of(sock)["max_concurrent_streams"] == 100
