"""Attack pass on the plugins a route carries, where they meet the HTTP/1.1 and HTTP/2 edges.

1. An answer a plugin makes itself with a status that has no body (fault's ``abort.status =
   204``, limit_conn's ``status = 304``) went out with its JSON body and a Content-Length:
   an HTTP/1.1 client reads no body after a 204 or 304 (RFC 9110 6.4.1), so it took the
   JSON for the start of the next answer on its keep-alive connection, and an HTTP/2
   client's stream was reset instead of answered. And limit_conn's ``status`` took a 1xx (an
   interim status, no answer at all: ``gwserver check`` now refuses it, as fault's does).
2. A third-party plugin's edits of the request's headers were never checked, where its
   edits of an answer's head are (docs/plugins.md): ``ctx.set_header`` checks the name
   only, and the HTTP/1.1 upstream's head is written from ``ctx.headers`` as it is. A
   plugin that copies a client's value into a header (a decoded query parameter, as
   ``ctx.value_of("query", ...)`` gives it) let the client write header lines of its own
   upstream: ``X-Injected``, or a ``Content-Length`` that had the upstream read the rest of
   the gateway's head as a body (a request smuggled onto a pooled connection). Now such a
   request is a 500 whose log names the plugin, as a response hook's bad head is.
3. A third-party plugin's Reply with a 1xx status (an "early hints" 103) went out as the
   answer: a client reads a 1xx as interim and waits on, taking the Reply's body, and then
   the next answer on its connection, for the final one. It is now a 500 naming the plugin,
   as a status outside 100-599 already was.
4. key_auth with ``query``: a second key in the query under ASP.NET's ``%uXXXX`` spelling of
   the parameter's name (``api%u006Bey``, which System.Web's Request.QueryString decodes to
   ``apikey``) was no key to the gateway: beside a good key in the header the request was
   served as that key's consumer and the other key went upstream, where docs/plugins.md
   promises "every spelling an upstream may read" counts (401 ambiguous_key) and is taken
   out. Now that spelling counts as the others do.
"""
import subprocess
import sys

import h2.events

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, installed_plugin, route, to_toml
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request


def test_a_bodiless_status_a_plugin_answers_with_keeps_the_connection_in_step(launcher,
                                                                              upstream):
    gw = launcher.gateway(gateway_conf([
        route("f", ["/f"], upstream.url, plugins={"fault": {"abort": {"status": 204}}}),
        route("e", ["/echo"], upstream.url)], http2={"h2c": True}))
    out = gw.raw(b"GET /f HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204 "), out
    assert b"content-length" not in first.lower(), first
    # what follows the 204's head is the second answer, not the first one's body
    assert rest.startswith(b"HTTP/1.1 200 "), out
    client = RawH2(gw.port)
    try:
        answer = client.response(client.request("/f"))
        assert answer is not None and answer[0] == 204 and answer[2] == b"", \
            [e for e in client.events if getattr(e, "stream_id", 0)]
        assert not any(isinstance(e, h2.events.StreamReset) for e in client.events)
    finally:
        client.close()



def test_limit_conn_refuses_with_a_final_status_only(launcher, upstream):
    path = launcher.tmp_dir / "interim.toml"
    path.write_text(to_toml(gateway_conf([route("l", ["/l"], upstream.url, plugins={
        "limit_conn": {"limit": 1, "status": 103}})])))
    check = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    said = check.stdout + check.stderr
    assert check.returncode != 0 and "plugins.limit_conn: status: must be a status from 200" in said, said


TAGGER = '''
from gwserver.core.context import Reply
from gwserver.core.schema import Schema


class tagger:
    """Tags the request for the upstream with the client's ?tag= (decoded)."""
    NAME, PRIORITY, SCHEMA = "tagger", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        if ctx.path == "/hints":
            return Reply(103, b"{}", [("Link", "</app.css>; rel=preload")])
        ctx.set_header("X-Tag", ctx.value_of("query", "tag") or "none")
'''


def install_tagger(tmp_path):
    return installed_plugin(tmp_path, "gwtagger", TAGGER, "tagger = gwtagger:tagger\n")


def test_a_third_party_plugins_request_header_cannot_carry_a_clients_cr_lf(launcher, upstream,
                                                                          tmp_path):
    gw = launcher.gateway(gateway_conf([route("t", ["/*rest"], upstream.url,
                                              plugins={"tagger": {}})]),
                          env=install_tagger(tmp_path))
    ask = b"GET /echo?tag=%s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    answer = raw_request(gw.port, ask % b"blue")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'["X-Tag", "blue"]' in answer, answer
    before = upstream.stats()["requests"]
    for tag in (b"a%0d%0aX-Injected:%20yes", b"a%0d%0aContent-Length:%2040%0d%0a%0d%0a"):
        answer = raw_request(gw.port, ask % tag)
        assert answer.startswith(b"HTTP/1.1 500 "), answer[:600]
    assert upstream.stats()["requests"] == before      # nothing went upstream
    assert "plugin tagger: a request header it set, b'X-Tag'" in gw.log()


def test_a_third_party_plugins_reply_with_an_interim_status_is_a_500(launcher, upstream,
                                                                    tmp_path):
    gw = launcher.gateway(gateway_conf([route("t", ["/*rest"], upstream.url,
                                              plugins={"tagger": {}})]),
                          env=install_tagger(tmp_path))
    answer = raw_request(gw.port, b"GET /hints HTTP/1.1\r\nHost: h\r\n\r\n"
                                  b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:600]
    assert "plugin tagger: its Reply's status must be an integer from 200" in gw.log()


KEY = "ak_live_dec06k_0ddba11c0ffee"


def test_an_iis_spelling_of_the_key_parameter_is_a_key_too(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/*rest"], upstream.url, plugins={"key_auth": {"query": "apikey"}})],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}}))
    ask = b"GET /echo?%s HTTP/1.1\r\nHost: h\r\n%sConnection: close\r\n\r\n"
    header = b"X-API-Key: %s\r\n" % KEY.encode()
    # two keys, one of them spelt for ASP.NET: ambiguous, never alice's request with another
    # key riding along to the upstream
    answer = raw_request(gw.port, ask % (b"a=1&api%u006Bey=ak_other", header))
    assert answer.startswith(b"HTTP/1.1 401 ") and b"ambiguous_key" in answer, answer[:600]
    # the same key that way alone is the key, taken out before proxying
    answer = raw_request(gw.port, ask % (b"a=1&api%%u006Bey=%s" % KEY.encode(), b""))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:600]
    assert b'"path": "/echo?a=1"' in answer and KEY.encode() not in answer, answer[-700:]
