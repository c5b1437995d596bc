"""Review of 589547d, 760d520 and 276788e (helper r15), through real gateways and upstreams.
Each test failed on 589547d.

1. ``ctx.add_header``, new in 589547d and documented beside ``set_header`` and
   ``remove_header`` for every plugin (docs/plugins.md), took its name and value as bytes
   only, and none of the names the gateway writes itself was refused:
   - a third-party plugin that called it as it calls ``set_header`` (``"X-Tag", "blue"``)
     put a str pair in the request's headers, and every request of its route was a 500
     (the check of a plugin's request edits refused the pair); its ``sent_header`` kept a
     str name, which no lookup finds;
   - ``add_header("X-Consumer-ID", ...)``, which ``set_header`` refuses (ValueError), sent
     the upstream a consumer identity no auth plugin had found (the check after a plugin's
     access leaves X-Consumer-* to ``identify``): a request of no consumer read upstream as
     the consumer "admin".
2. The access log's ``user_agent`` and ``referer`` ("headers as sent", docs/operations.md)
   were read from the request as its route's plugins left it for the upstream: a route that
   keeps the Referer from its upstream (``headers``' ``remove``, a privacy rule) or names
   itself to it (``rewrite``'s ``set`` of User-Agent) logged no Referer and its own
   User-Agent for every client, and an abuse report's Referer or bot could not be found in
   the log. They are the values the client sent (``sent_header``'s).
"""
from ..conftest import gateway_conf, installed_plugin, route, wait_until
from .test_attack_pass_dec03 import raw_request

ADDER = '''
from gwserver.core.schema import Schema


class adder:
    """Adds request headers with ctx.add_header, as a plugin calls set_header."""
    NAME, PRIORITY, SCHEMA = "adder", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        if ctx.path.startswith("/consumer"):
            ctx.add_header(b"X-Consumer-ID", b"admin")
            return
        ctx.add_header("X-Tag", "blue")                     # str, as set_header takes it
        # added for the upstream: as the client sent it, the request had none
        ctx.set_header("X-Sent-Tag", str(ctx.sent_header("X-TAG")))
'''


def adder_gateway(launcher, upstream, tmp_path):
    return launcher.gateway(gateway_conf([route("a", ["/*rest"], upstream.url,
                                                plugins={"adder": {}})]),
                            env=installed_plugin(tmp_path, "gwadder", ADDER,
                                                 "adder = gwadder:adder\n"))


def test_add_header_takes_text_as_set_header_does(launcher, upstream, tmp_path):
    gw = adder_gateway(launcher, upstream, tmp_path)
    answer = raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:600]
    assert b'["X-Tag", "blue"]' in answer, answer
    assert b'["X-Sent-Tag", "None"]' in answer, answer


def test_add_header_refuses_a_consumer_identity_as_set_header_does(launcher, upstream,
                                                                   tmp_path):
    gw = adder_gateway(launcher, upstream, tmp_path)
    before = upstream.stats()["requests"]
    answer = raw_request(gw.port, b"GET /consumer/echo HTTP/1.1\r\nHost: h\r\n"
                                  b"Connection: close\r\n\r\n")
    assert b"admin" not in answer, answer
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:600]
    assert upstream.stats()["requests"] == before      # nothing went upstream
    assert "is written by the gateway itself" in gw.log()


def test_the_access_log_keeps_the_headers_the_client_sent(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("h", ["/h/*rest"], upstream.url, plugins={
            "headers": {"request": {"remove": ["Referer"]}},
            "rewrite": {"request_headers": {"set": {"User-Agent": "gw-internal"}}}})],
        log={"access_fields": ["time", "path", "status", "user_agent", "referer"]}))
    answer = raw_request(gw.port, b"GET /h/echo HTTP/1.1\r\nHost: h\r\n"
                                  b"User-Agent: curl/8.5\r\nReferer: https://evil.example/\r\n"
                                  b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:600]
    # the edits went upstream as configured
    assert b'["User-Agent", "gw-internal"]' in answer and b"evil.example" not in answer, answer
    assert wait_until(lambda: any(line["path"] == "/h/echo" for line in gw.access_lines()),
                      timeout=5), gw.log()[-2000:]
    line, = [line for line in gw.access_lines() if line["path"] == "/h/echo"]
    assert (line["user_agent"], line["referer"]) == ("curl/8.5", "https://evil.example/"), line
