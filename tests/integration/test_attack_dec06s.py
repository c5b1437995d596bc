"""Attack pass on the two fixes before it: a trusted proxy's X-Forwarded-* held to rules
(test_attack_dec06m.py, test_forwarded_dec06r.py) and a third-party plugin's request line,
Host and request id checked.

1. X-Forwarded-Prefix was held to a path's rules as one value, while the frameworks that
   read it take it as a list: ``/,//evil.example`` passed (it starts with one "/"), and
   werkzeug's ProxyFix (the last element) and Spring's ForwardedHeaderFilter (the elements
   joined, each less its trailing "/") both read ``//evil.example``, a link to another host.
2. A port of more than 4300 digits in a trusted proxy's X-Forwarded-Host made ``int()`` raise
   ValueError, past the BadRequest the vouching catches: the request was a 400 ("malformed
   request: User callback error", the reason lost) where such a value is dropped and the
   gateway's own view goes upstream (a Host so spelt: the same 400, now saying why).
3. A third-party plugin's ``ctx.client_ip`` and ``ctx.host_header`` were written upstream as
   they were (X-Forwarded-For; Host under the default pass_host, and X-Forwarded-Host), past
   the check the previous pass gave method, path, query and the upstream Host, and so were
   the ``header_map`` values of Via and X-Forwarded-* (which ``set_header`` refuses, but a
   plugin may write there): a client's decoded CR LF there wrote header lines of its own
   upstream. Such a value is now a 500 naming the plugin.
4. X-Real-IP was made to say the client the walk found, while the other headers that name
   the client as a proxy would (X-Client-IP, True-Client-IP, CF-Connecting-IP,
   X-Cluster-Client-IP: IP allow-lists and libraries such as request-ip read them) passed
   from a trusted proxy as they came: a client's ``True-Client-IP: 6.6.6.6`` through a
   balancer that writes none of them. They now say the walk's client too.
"""

from ..conftest import gateway_conf, installed_plugin, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


# -- 1. X-Forwarded-Prefix as a list -----------------------------------------------------------

def test_a_trusted_proxys_prefix_list_cannot_name_another_host(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED))
    ask = (b"GET /p HTTP/1.1\r\nHost: good.example\r\nX-Forwarded-Prefix: %s\r\n"
           b"Connection: close\r\n\r\n")
    cases = [  # X-Forwarded-Prefix sent -> what the upstream gets
        (b"/shop", ["/shop"]),
        (b"/outer,/inner", ["/outer,/inner"]),          # a list of paths stays as it came
        (b"/,//evil.example", []),                      # joined or last: //evil.example
        (b"/ok,//evil.example", []),
        (b"/ok,/\\evil.example", []),
        (b"/ok,evil.example", []),
        (b"/ok,", []),
    ]
    for prefix, want in cases:
        answer = raw_request(gw.port, ask % prefix)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert h1_up.header(-1, "X-Forwarded-Prefix") == want, (prefix, h1_up.heads[-1])


# -- 2. a port of thousands of digits ------------------------------------------------------------

def test_a_forwarded_host_whose_port_has_thousands_of_digits_is_dropped(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED))
    port = b"1" * 4400
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example:%s\r\n"
                                  b"Connection: close\r\n\r\n" % port)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    # a trusted proxy's X-Forwarded-Host so spelt is no Host: the gateway's own view goes
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n"
                                  b"X-Forwarded-Host: evil.example:%s\r\n"
                                  b"Connection: close\r\n\r\n" % port)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert h1_up.header(-1, "X-Forwarded-Host") == ["good.example"], h1_up.heads[-1]
    assert "Traceback" not in gw.log()


# -- 3. a third-party plugin's client_ip and host_header ----------------------------------------

NAMER = '''
from gwserver.core.schema import Schema


class namer:
    """Copies the client's ?v= (decoded) into ctx.client_ip, ctx.host_header or the Via
    header_map holds, as the path's last segment says."""
    NAME, PRIORITY, SCHEMA = "namer", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        value = ctx.value_of("query", "v")
        what = ctx.path.rsplit("/", 1)[-1]
        if value is None:
            return None
        if what == "client":
            ctx.client_ip = value
        elif what == "host":
            ctx.host_header = value.encode("latin-1")
        elif what == "via":         # what set_header refuses, written where the core reads
            ctx.header_map[b"via"] = value.encode("latin-1")
        return None
'''


def install_namer(tmp_path):
    return installed_plugin(tmp_path, "gwnamer", NAMER, "namer = gwnamer:namer\n")


def test_a_third_party_plugins_client_ip_and_host_header_cannot_carry_cr_lf(
        launcher, h1_up, tmp_path):
    gw = launcher.gateway(gateway_conf([route("s", ["/*rest"], h1_up.url,
                                              plugins={"namer": {}})]),
                          env=install_namer(tmp_path))
    ask = b"GET /s/%s?v=%s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    # values that fit go through as the plugin set them
    answer = raw_request(gw.port, ask % (b"client", b"2001:db8::7"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert h1_up.header(-1, "X-Forwarded-For") == ["2001:db8::7"], h1_up.heads[-1]
    answer = raw_request(gw.port, ask % (b"host", b"other.example:8080"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert h1_up.header(-1, "Host") == ["other.example:8080"], h1_up.heads[-1]
    sent = len(h1_up.heads)
    for what in (b"host", b"client", b"via"):
        answer = raw_request(gw.port, ask % (what, b"a%0d%0aX-Injected:%20yes"))
        assert answer.startswith(b"HTTP/1.1 500 "), (what, answer[:400], h1_up.heads[-1])
    assert len(h1_up.heads) == sent, h1_up.heads[sent:]     # nothing went upstream
    # (the log names the plugin: the first of these 500s, a route's are throttled)
    assert "plugin namer: the host_header it set" in gw.log()


# -- 4. the other headers that name the client --------------------------------------------

# The client's address as other proxies name it: IP allow-lists and libraries (request-ip
# reads X-Client-IP first) take these as X-Real-IP is taken, and a balancer trusted for
# X-Forwarded-For that writes none of them passes a client's through unread.
CLIENT_NAMING = ("X-Client-IP", "True-Client-IP", "CF-Connecting-IP", "X-Cluster-Client-IP",
                 "X-Real-IP")


def test_a_trusted_proxys_other_client_ip_headers_say_the_client_the_walk_found(launcher,
                                                                               h1_up):
    forged = b"".join(b"%s: 6.6.6.6\r\n" % name.encode() for name in CLIENT_NAMING)
    for server, named in ((TRUSTED, b"X-Forwarded-For: 203.0.113.7"),
                          ({**TRUSTED, "real_ip_header": "Forwarded"},
                           b"Forwarded: for=203.0.113.7")):
        gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=server,
                                           http2={"h2c": True}))
        answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n%s\r\n%s"
                                      b"Connection: close\r\n\r\n" % (named, forged))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        for name in CLIENT_NAMING:
            assert h1_up.header(-1, name) == ["203.0.113.7"], (server, name, h1_up.heads[-1])
    client = RawH2(gw.port)                     # an HTTP/2 client alike, each copy replaced
    try:
        sid = client.request("/p", authority="good.example",
                             headers=[("forwarded", "for=203.0.113.9"),
                                      ("true-client-ip", "6.6.6.6"),
                                      ("true-client-ip", "7.7.7.7")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    assert h1_up.header(-1, "True-Client-IP") == ["203.0.113.9"], h1_up.heads[-1]
