"""A docs-truth pass over what the commits of 2026-12-06 changed in docs/ (3bca753..44c6ed5).

The hand-written header lists of docs/security.md mirror code lists that grew today (four
more spellings of the client's address, the client-certificate headers): nothing compared
them, so a name added to the code and not to the page (or the other way) went unnoticed.
The tests below read the page's lists (with its `-Suffix` shorthand expanded) and hold them
to gwserver/core/headers.py and client/http1.py's CLIENT_NAMING; the last of them shows the
comparison fails on a broken copy of the page.

Found: the identity list said "`X-Auth-Request-User` and its siblings" while the code drops
four named ones (`-Email`, `-Preferred-Username`, `-Groups`, `-Access-Token`) that the page
never named; it names them now.

Defect found holding the page to a real gateway: "A proxy that names no client there (an
nginx set to write `X-Real-IP $remote_addr` alone) says who the client is in them: they pass
as it wrote them". Behind such a proxy that passes a client's `Connection` through, a
client's `Connection: X-Real-IP` dropped the proxy's `X-Real-IP` (only the header named by
`real_ip_header` was kept from it, 849c19d): the upstream that reads it took its own peer,
the gateway's internal address, for the client. The headers of CLIENT_NAMING are kept from a
trusted proxy's `Connection` now, as `X-Forwarded-For` is.
"""
import re

from gwserver.client.http1 import CLIENT_NAMING
from gwserver.core.headers import (_PROXY_SAYS, IDENTITY_SET, STEERING_SET,
                                   X_FORWARDED_MORE)

from ..conftest import ROOT, gateway_conf, route
from .test_attack_pass_dec03 import raw_request

SECURITY = ROOT / "docs" / "security.md"
# names the paragraphs mention without listing them as dropped (context, not list items)
MENTIONED = {"x-forwarded-for", "xheaders", "rewrite", "tracestate"}


def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


def listed(block, known):
    """The header names `quoted` in block, a `-Suffix` read against the last full name:
    the longest of its prefixes (at a dash) that makes a name the code knows, else kept
    unexpanded so that the comparison shows it."""
    out, last = [], None
    for token in re.findall(r"`([^`]+)`", block):
        if not re.fullmatch(r"-?[A-Za-z0-9][A-Za-z0-9-]*", token):
            continue        # a value, a path, `SSL_CLIENT_CERT`, `$consumer` ...
        if not token.startswith("-"):
            last = token
            out.append(token)
            continue
        parts = last.split("-")
        spelt = ["-".join(parts[:i]) + token for i in range(len(parts), 0, -1)]
        out.append(next((s for s in spelt if s.lower().encode() in known), last + token))
    return out


def lower(names):
    return {name.lower().encode() for name in names}


def dropped_from_clients(text):
    """Who the client is: every name the first paragraph lists as a proxy's word alone."""
    para = between(text, "## Who the client is", "Headers that name another path")
    known = _PROXY_SAYS | IDENTITY_SET
    return lower(listed(para, known)) - lower(MENTIONED), known


def test_the_proxy_only_header_list_is_the_code_s():
    got, known = dropped_from_clients(SECURITY.read_text())
    assert sorted(known - got) == [], "dropped by the code, not named in docs/security.md"
    assert sorted(got - known) == [], "named in docs/security.md, not dropped by the code"


def test_the_client_naming_lists_are_client_naming_as_the_gateway_spells_them():
    text = SECURITY.read_text()
    walk = between(text, "When it names a client in `X-Forwarded-For`,",
                   "(IP allow-lists and libraries")
    forwarded = between(text, "So may it a client's", ": one that came is")
    forwarded = forwarded.replace("(nginx's, written beside `X-Forwarded-For`)", "")
    spelt = sorted(name.decode() for name in CLIENT_NAMING.values())
    for block in (walk, forwarded):
        assert sorted(listed(block, CLIENT_NAMING.keys())) == spelt


def test_the_forwarded_mode_list_is_what_a_forwarded_proxy_does_not_vouch_for():
    text = SECURITY.read_text()
    block = between(text, 'With `real_ip_header = "Forwarded"`', "So may it a client's")
    block = block.replace("`X-Forwarded-*`", "`X-Forwarded`")   # -For is X-Forwarded + -For
    got = lower(listed(block, X_FORWARDED_MORE | {b"x-forwarded-for", b"x-forwarded-proto",
                                                  b"x-forwarded-host"}))
    assert got - {b"x-forwarded"} == X_FORWARDED_MORE | {
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


def test_the_steering_list_is_the_code_s():
    block = between(SECURITY.read_text(), "Headers that name another path",
                    "A load balancer trusted")
    methods = {b"post", b"delete"}      # the methods named, not headers
    assert lower(listed(block, STEERING_SET)) - methods == STEERING_SET


def test_tls_md_names_client_certificate_headers_the_gateway_drops():
    tls = (ROOT / "docs" / "tls.md").read_text()
    block = between(tls, "the headers in which TLS terminators pass a", "are dropped from")
    names = lower(listed(block, IDENTITY_SET))
    assert len(names) >= 3 and names <= IDENTITY_SET


def test_the_comparison_fails_on_a_broken_copy_of_the_page():
    text = SECURITY.read_text()
    for broken in (text.replace("`Fastly-Client-IP`, ", "", 1),       # a name left out
                   text.replace("`-Leaf`", "`-Leaf`, `-Root`", 1)):   # one the code lacks
        got, known = dropped_from_clients(broken)
        assert got != known
    walk_broken = text.replace("`X-Envoy-External-Address` and", "and", 1)
    walk = between(walk_broken, "When it names a client in `X-Forwarded-For`,",
                   "(IP allow-lists and libraries")
    assert len(listed(walk, CLIENT_NAMING.keys())) == len(CLIENT_NAMING) - 1


def test_a_clients_connection_header_cannot_drop_the_client_a_trusted_proxy_named(launcher,
                                                                                   h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={"trusted_proxies": ["127.0.0.1/32"]}))
    # an nginx that writes X-Real-IP (and True-Client-IP) alone, passing Connection through
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: a\r\nX-Real-IP: 203.0.113.7\r\n"
                                  b"True-Client-IP: 203.0.113.7\r\nX-Other: x\r\nConnection: "
                                  b"X-Real-IP, true-client-ip, X-Other, close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert h1_up.header(-1, "X-Real-IP") == ["203.0.113.7"], h1_up.heads[-1]
    assert h1_up.header(-1, "True-Client-IP") == ["203.0.113.7"], h1_up.heads[-1]
    assert h1_up.header(-1, "X-Other") == [], h1_up.heads[-1]     # the rest hop-by-hop still
    # one that names the client in X-Forwarded-For: a client's copy says the walk's client
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.9"
                                  b"\r\nX-Real-IP: 6.6.6.6\r\nConnection: X-Real-IP, close"
                                  b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert h1_up.header(-1, "X-Real-IP") == ["198.51.100.9"], h1_up.heads[-1]
