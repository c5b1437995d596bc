"""The pure parts of the review pass of 2026-12-05 (helper h6; the integration tests are
tests/integration/test_review_attack_dec05c.py).

4. TLS: an SNI name is read with one trailing dot taken off (the edge pass), but a ``hosts``
   name written with one (``api.example.com.``, DNS's spelling, which the check takes) was
   kept whole: it matched no SNI name at all, and its clients got the first entry.
"""
import pytest

from gwserver.client.tls import server_tls
from gwserver.settings import parse_conf

from ..pki import CA
from .test_edge_attack_dec05c import Handshake


@pytest.fixture(scope="module")
def dotted(tmp_path_factory):
    """Entries whose ``hosts`` are written as DNS writes names, with the root's dot."""
    ca = CA(tmp_path_factory.mktemp("pki"))
    entries = [ca.issue("first", hosts=("first.test",)), ca.issue("api", hosts=("api.test",)),
               ca.issue("wild", hosts=("x.eu.test",))]
    certificates = [{"cert": str(c), "key": str(k)} for c, k, _ in entries]
    certificates[1]["hosts"] = ["api.test."]
    certificates[2]["hosts"] = ["*.eu.test."]
    tls = server_tls(parse_conf({"tls": {"certificates": certificates}, "routes": []}))
    return tls, {name: tls.contexts[i][1] for i, name in enumerate(("first", "api", "wild"))}


@pytest.mark.parametrize("sni, entry", [
    (b"api.test", "api"),
    (b"api.test.", "api"),
    (b"x.eu.test", "wild"),
    (b"a.b.eu.test.", "wild"),
    (b"eu.test", "first"),
])
def test_a_hosts_name_with_the_roots_dot_is_the_name(dotted, sni, entry):
    tls, contexts = dotted
    handshake = Handshake(sni)
    tls._pick_by_sni(handshake)
    assert (handshake.context or tls.default) is contexts[entry]


def test_a_token_given_as_a_urls_user_is_masked_in_the_dump_and_admin_views():
    """redact kept a URL's user and masked its password; a token written as the user
    (https://TOKEN@collector, no colon) showed whole in `check --dump` and the admin views."""
    from gwserver.redact import redact
    assert redact("https://tok_5ecret@collector:4318/v1/traces") == \
        "https://***@collector:4318/v1/traces"
    assert redact("redis://alice:pw@h:6379/0") == "redis://alice:***@h:6379/0"
    assert redact({"otlp_endpoint": "http://tok@c:4318"}) == {"otlp_endpoint": "http://***@c:4318"}
    assert redact("http://h/a@b") == "http://h/a@b"         # an "@" in a path is no user
