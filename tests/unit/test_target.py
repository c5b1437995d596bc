"""The canonical request target and Host (core.target), as tables."""
import pytest

from gwserver.core.realip import TrustedProxies
from gwserver.net.sockets import peer_address
from gwserver.core.target import normalise_host, normalise_path, strip_path_prefix
from gwserver.errors import BadRequest


@pytest.mark.parametrize("raw, canonical", [
    (b"/api/users/42", b"/api/users/42"),           # the common path: untouched
    (b"//admin//x/", b"/admin/x/"),
    (b"/%61dmin/%7Euser", b"/admin/~user"),         # unreserved decoded
    # the path characters that delimit nothing in a segment: decoded, as upstreams do
    (b"/v1/things%3AbatchDelete", b"/v1/things:batchDelete"),
    (b"/%40me/%21%24%26%27%28%29%2a%2c%3d", b"/@me/!$&'()*,="),
    (b"/a%2bb", b"/a%2Bb"),             # not +: S3 and PHP's urldecode read it as a space
    (b"/a%3f%23%c3%a9%20", b"/a%3F%23%C3%A9%20"),   # the rest: upper-case hex
    (b"/%2561", b"/%2561"),                         # %25 stays: never decoded twice
    (b"/.well-known/acme", b"/.well-known/acme"),
    (b"/a..b/c.", b"/a..b/c."),                     # dots inside names are fine
])
def test_normalise_path(raw, canonical):
    assert normalise_path(raw) == canonical


@pytest.mark.parametrize("raw", [
    b"/a/../b", b"/a/./b", b"/a/%2e%2E/b", b"/%2E/b", b"/a/..", b"/a%2fb", b"/a%2Fb",
    b"/a%5cb", b"/a\\b", b"/a%00b", b"/%C0%AE%C0%AE/x", b"/%ff", b"/%zz", b"/%4", b"/a%",
])
def test_normalise_path_refuses(raw):
    with pytest.raises(BadRequest):
        normalise_path(raw)


@pytest.mark.parametrize("raw, action, canonical", [
    (b"/a%2fb%5Cc\\d", "decode", b"/a/b/c/d"),
    (b"/a%2fb%5Cc\\d", "keep", b"/a%2Fb%5Cc%5Cd"),
    (b"/x/..%2fadmin", "decode", None),             # decoding makes a dot segment: refused
])
def test_escaped_slash_actions(raw, action, canonical):
    if canonical is None:
        with pytest.raises(BadRequest):
            normalise_path(raw, action)
    else:
        assert normalise_path(raw, action) == canonical


def test_path_parameters():
    with pytest.raises(BadRequest, match="path_parameters"):
        normalise_path(b"/admin;x/y")
    assert normalise_path(b"/a;jsessionid=1/b", path_parameters="keep") == b"/a;jsessionid=1/b"
    with pytest.raises(BadRequest, match="encoded ;"):      # a container may decode, then
        normalise_path(b"/admin%3bx/y")                     # strip: Spring refuses it too
    assert normalise_path(b"/a%3bx", path_parameters="keep") == b"/a%3Bx"
    # dot segments whatever the action; "..%3B" is "..;" to an upstream that decodes first
    for probe in (b"/..;/admin", b"/x/.;x/y", b"/x/..%3B/admin", b"/x/%2e%2e%3bv=1/a"):
        with pytest.raises(BadRequest, match="dot segment"):
            normalise_path(probe, path_parameters="keep")


def test_slashes_kept_when_merging_is_off():
    assert normalise_path(b"//a//b%61", merge_slashes=False) == b"//a//ba"


@pytest.mark.parametrize("raw, name, port", [
    (b"Admin.Example", b"admin.example", b""),
    (b"admin.example.", b"admin.example", b""),
    (b"admin.example.:8080", b"admin.example", b"8080"),
    (b"[::1]:80", b"[::1]", b"80"),
    (b"10.0.0.1", b"10.0.0.1", b""),
    (b"svc_a.internal", b"svc_a.internal", b""),
])
def test_normalise_host(raw, name, port):
    assert normalise_host(raw) == (name, port)


@pytest.mark.parametrize("raw", [b"", b".", b"a..b", b"a.b..", b".a", b"-a", b"a b", b"a:",
                                 b"a:x", b"a:0", b"a:70000", b"a:1:2", b"[::1", b"[zz]",
                                 b"user@a", b"a/b", b"a%2eb"])
def test_normalise_host_refuses(raw):
    with pytest.raises(BadRequest):
        normalise_host(raw)


@pytest.mark.parametrize("value", [b'for="unterminated, for=10.0.0.3', b"garbage",
                                   b'for=1.2.3.4;host="a"b"', b"for=a b"])
def test_an_unparsable_forwarded_header_is_refused_not_taken_for_the_proxy(value):
    """Taken for the trusted proxy itself, a client that spoils the header its proxy appends
    to would pass the allow-lists that name the proxy's own (internal) address."""
    with pytest.raises(BadRequest):
        TrustedProxies(["10.0.0.0/8"], "Forwarded").client_of("10.0.0.1", value)


@pytest.mark.parametrize("header, value", [
    ("X-Forwarded-For", b"garbage, 10.0.0.2"), ("X-Forwarded-For", b"unknown"),
    ("X-Forwarded-For", b"6.6.6.6, 1.2.3.4:bad"), ("X-Forwarded-For", b"[::1]x"),
    ("X-Forwarded-For", b"fe80::1%eth0"), ("Forwarded", b'for="[fe80::1%eth0]"'),
    ("Forwarded", b"for=6.6.6.6, for=unknown"), ("Forwarded", b'for="_hidden"'),
    ("Forwarded", b'for=""'),
    # an element without for= (a client's, slipped in before the proxy's; or the proxy's)
    ("Forwarded", b"for=6.6.6.6, proto=https"),
    ("Forwarded", b"for=6.6.6.6;for=10.0.0.3")])                 # for= twice: garbage
def test_garbage_where_a_trusted_proxy_named_the_client_is_an_unknown_client(header, value):
    """Not the last trusted address (the proxy, which internal allow-lists name), nor a 400
    for every client of such a proxy: "unknown", on no allow-list."""
    assert TrustedProxies(["10.0.0.0/8"], header).client_of("10.0.0.1", value) == "unknown"


@pytest.mark.parametrize("header, value, client", [
    ("X-Forwarded-For", b"6.6.6.6, 10.0.0.2", "6.6.6.6"),       # 10/8 is trusted: walk on
    ("X-Forwarded-For", b"6.6.6.6, 7.7.7.7", "7.7.7.7"),        # stop at the first untrusted
    ("X-Forwarded-For", b"garbage, 6.6.6.6, 10.0.0.2", "6.6.6.6"),   # never reached
    ("X-Forwarded-For", b"6.6.6.6,, 10.0.0.2:80,", "6.6.6.6"),  # empty elements skipped
    ("X-Forwarded-For", b"", "10.0.0.1"),
    ("Forwarded", b'for=6.6.6.6;proto=https, for="[2001:db8::1]:443"', "2001:db8::1"),
    ("Forwarded", b"for=6.6.6.6, for=10.0.0.3", "6.6.6.6"),
    # an element without for= left of an untrusted one is never reached
    ("Forwarded", b"by=10.0.0.9, for=6.6.6.6", "6.6.6.6"),
    # a quoted host may hold "," and ";": they are not elements or pairs of their own
    ("Forwarded", b'for=10.0.0.3;host="a,for=6.6.6.6;proto=https"', "10.0.0.3"),
    # empty pairs and elements are allowed (RFC 9110 5.6.1), not garbage
    ("Forwarded", b"for=6.6.6.6;;by=x, for=7.7.7.7", "7.7.7.7"),
    ("Forwarded", b",for=6.6.6.6,, for=10.0.0.3,", "6.6.6.6"),
])
def test_client_address_walked_from_the_right(header, value, client):
    proxies = TrustedProxies(["10.0.0.0/8"], header)
    assert proxies.trusts("10.0.0.1") and not proxies.trusts("11.0.0.1")
    assert proxies.client_of("10.0.0.1", value) == client


@pytest.mark.parametrize("trusted, value, client", [
    (["10.0.0.0/8"], b"6.6.6.6, unix:", "unix"),            # nginx's word for a unix: client
    (["10.0.0.0/8", "unix:"], b"6.6.6.6, unix:", "6.6.6.6"),  # a trusted unix: peer: walk on
])
def test_an_nginx_unix_hop_is_a_unix_peer_not_garbage(trusted, value, client):
    assert TrustedProxies(trusted).client_of("10.0.0.1", value) == client


@pytest.mark.parametrize("value, proto, host", [
    (b"for=1.2.3.4;proto=https;host=shop.example.com", b"https", b"shop.example.com"),
    (b'for=6.6.6.6;proto=http, for=1.2.3.4;proto=HTTPS;host="a.b:8443"', b"https", b"a.b:8443"),
    (b"for=1.2.3.4;proto=gopher;host=\"a b\"", None, None),       # nothing usable
    (b"for=1.2.3.4", None, None),
    (b'for=1.2.3.4;proto=http;host="good.example,for=10.1.2.3;proto=https;host=x"', b"http", None),
])
def test_forwarded_scheme_and_host_are_the_last_elements(value, proto, host):
    assert TrustedProxies(["10.0.0.0/8"], "Forwarded").forwarded_scheme_and_host(value) == \
        (proto, host)


@pytest.mark.parametrize("addr, address", [
    (("::ffff:10.0.0.5", 80, 0, 0), "10.0.0.5"), (("10.0.0.5", 80), "10.0.0.5"),
    (("::1", 80, 0, 0), "::1"), (("2001:db8::ffff:1", 80, 0, 0), "2001:db8::ffff:1"),
    ("", "unix")])
def test_a_dual_stack_listeners_ipv4_client_is_its_ipv4_address(addr, address):
    assert peer_address(addr) == address


def test_an_ipv4_mapped_peer_is_its_ipv4_address():
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.trusts("::ffff:10.0.0.1")
    assert proxies.client_of("::ffff:10.0.0.1", b"::ffff:6.6.6.6, ::ffff:10.0.0.2") == "6.6.6.6"


@pytest.mark.parametrize("value, chunked", [
    (b"chunked", True), (b"identity", False), (b"identity, chunked", True), (b"", False),
    (b"chunked, identity", None),       # chunked not last: llhttp reads to the close
    (b"gzip, chunked", None),
    (b", chunked", True), (b"chunked  ", True),
    (b"chunked,", None), (b"chunked\t", None),     # llhttp reads these to the close too
])
def test_a_response_transfer_coding_is_chunked_close_delimited_or_refused(value, chunked):
    from gwserver.upstream.proxy import response_chunked
    from gwserver.errors import UpstreamError
    if chunked is None:
        with pytest.raises(UpstreamError):
            response_chunked(value)
    else:
        assert response_chunked(value) is chunked


@pytest.mark.parametrize("value", [
    b"chunked", b"CHUNKED", b"chunked ", b"chunked,", b"chunked, ", b"chunked ,", b",chunked",
    b"chunked,,", b"chunked\t", b"\tchunked", b"chunked \t", b"identity ,chunked",
    b"identity\t, chunked", b"identity", b"identity,", b"chunked;q=1", b"chunked, identity"])
def test_a_response_is_taken_as_chunked_exactly_when_llhttp_decodes_it_so(value):
    """The relay ends a body as the gateway read its Transfer-Encoding, llhttp decodes it as
    it reads it: where they differ (``chunked,``), the client got the chunk framing as body
    and then a cut answer."""
    import httptools
    from gwserver.upstream.proxy import response_chunked
    from gwserver.errors import UpstreamError

    class Ends:
        complete = False

        def on_message_complete(self):
            self.complete = True

    ends = Ends()
    httptools.HttpResponseParser(ends).feed_data(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    try:
        chunked = response_chunked(value)
    except UpstreamError:
        return                          # refused: a 502, whatever llhttp makes of it
    assert chunked is ends.complete


def test_a_peer_file_from_a_former_boot_is_ignored_and_removed(tmp_path):
    import json
    import os
    import time
    from gwserver.state.hostshare import HostShare
    share = HostShare(str(tmp_path))
    old = tmp_path / "1.json"
    old.write_text(json.dumps({"wall": time.time() - 3600, "counts": {"u": [50, 50]},
                               "refused": {"http://t:1": 10 ** 9}}))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    live = tmp_path / "2.json"
    live.write_text(json.dumps({"wall": time.time(), "counts": {"u": [5, 1]}, "refused": {}}))
    counts, refused = share.peers(time.monotonic())
    assert counts == {"u": [5, 1]} and refused == {}
    assert not old.exists() and live.exists()


@pytest.mark.parametrize("path, prefix, stripped", [
    ("/api/users", "/api", "/users"),
    ("/api", "/api", "/"),
    ("/api/", "/api", "/"),
    ("/api/users", "/api/", "/users"),
    ("/api", "/api/", "/"),             # the bare prefix, as /api/*rest matches /api
    ("/apix/y", "/api", "/x/y"),        # a cut inside a segment (string prefix, as before)
    ("/other", "/api", "/other"),       # not under the prefix: as it is
    ("/svc../admin", "/svc", None),     # a rewrite's canonical path cut into "/../admin"
    ("/svc./admin", "/svc", None),
    ("/svc..", "/svc", None),
    ("/svc...x/y", "/svc", "/...x/y"),  # "...x" is no dot segment
    ("/svc..;x/admin", "/svc", None),   # path_parameters = "keep": "..;x" is ".." upstream
    ("/svc..%3Bx/admin", "/svc", None),
    ("/svc..x;y/a", "/svc", "/..x;y/a"),
])
def test_strip_path_prefix(path, prefix, stripped):
    assert strip_path_prefix(path, prefix) == stripped
