"""The pure parts of the open items fixed in tests/integration/test_open_items_dec05e.py (its
docstring tells each attack): a redirect's query without key_auth's key, a 101's block without
Content-Length, and [etcd]'s files held to regular files."""
import os

import pytest

from gwserver.core.chain import build_chain
from gwserver.plugins import load_registry
from gwserver.settings import etcd_file_problems
from gwserver.upstream.proxy import without_field

from .test_traffic_plugins import ctx_for

KEY = "ak_live_unit_0123456789"


class _ChainRoute:
    id = "r"
    strip_prefix = None

    def __init__(self, chain):
        self.chain = chain


def location_of(plugins, query):
    chain = build_chain("route r", plugins, None, load_registry())
    ctx = ctx_for("/p", query)
    ctx.route = _ChainRoute(chain)
    return dict(chain.run_access(ctx).headers)["Location"]


@pytest.mark.parametrize("redirect, query, location", [
    ({"uri": "https://new.example$path", "append_query": True}, f"a=1&api_key={KEY}&b=2",
     "https://new.example/p?a=1&b=2"),
    ({"uri": "https://new.example$path", "append_query": True}, f"Api.Key={KEY}",
     "https://new.example/p"),
    ({"uri": "/v2$path?$query"}, f"api_key={KEY};c=3&d=4", "/v2/p?d=4"),
])
def test_a_redirect_made_before_key_auth_ran_carries_no_key(redirect, query, location):
    assert location_of({"key_auth": {"query": "api_key"}, "redirect": redirect}, query) == \
        location


def test_only_a_key_key_auth_hides_is_taken_out_of_a_redirect():
    moved = {"uri": "/v2$path", "append_query": True}
    assert location_of({"key_auth": {"query": "k"}, "redirect": moved}, f"k={KEY}&a=1") == \
        "/v2/p?a=1"
    # the operator lets the key go on; http_to_https sends the client back here, over TLS
    assert location_of({"key_auth": {"query": "k", "hide_credentials": False},
                        "redirect": moved}, f"k={KEY}") == f"/v2/p?k={KEY}"
    assert location_of({"key_auth": {"query": "k"}, "redirect": {"http_to_https": True}},
                       f"k={KEY}") == f"https://api.example.com/p?k={KEY}"


def test_without_field_drops_every_line_of_the_name_only():
    block = b"Upgrade: websocket\r\nContent-Length: 5\r\ncontent-length :5\r\nX-Len: 1\r\n"
    assert without_field(block, b"content-length") == b"Upgrade: websocket\r\nX-Len: 1\r\n"
    assert without_field(b"", b"content-length") == b""


def test_etcd_files_must_be_regular_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    from tests.pki import CA
    CA(tmp_path)            # ca.pem: a regular file that is a CA (check loads it, dec08d)
    problems = etcd_file_problems({"ca_file": str(tmp_path / "fifo"), "cert_file": str(tmp_path),
                                   "key_file": "/dev/zero",
                                   "snapshot_path": str(tmp_path / "fifo")})
    assert problems == [f"etcd.ca_file: {tmp_path}/fifo: cannot read: not a regular file",
                        f"etcd.cert_file: {tmp_path} is a directory, not a PEM file",
                        "etcd.key_file: /dev/zero: cannot read: not a regular file",
                        f"etcd.snapshot_path: {tmp_path}/fifo is not a regular file"]
    assert etcd_file_problems({"ca_file": str(tmp_path / "ca.pem"),
                               "snapshot_path": str(tmp_path / "none.json")}) == []
    assert etcd_file_problems({"key_file": str(tmp_path / "ca.pem")}) == [
        "etcd.key_file: needs etcd.cert_file (the client certificate it is the key of)"]
