"""A target named by a host name is resolved as its connection opens; that lookup is part of
the connect and bound by timeouts.connect. A resolver that never answers (a nameserver gone
or filtered, resolv.conf's 5 s timeout times its attempts and servers) held the request
well past it. The hanging resolver here is a gevent resolver class (GEVENT_RESOLVER names
it) that waits for any name under .hang.test and resolves the rest as gevent's own does."""
import textwrap
import time

import pytest

from ..conftest import gateway_conf, python_path_with

RESOLVER = textwrap.dedent("""
    import gevent
    from gevent.resolver.thread import Resolver

    class HangingResolver(Resolver):
        def getaddrinfo(self, host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name.endswith(".hang.test"):
                gevent.sleep(30)        # a nameserver that never answers
            return super().getaddrinfo(host, *args, **kwargs)
""")


@pytest.mark.parametrize("url, protocol", [("http://up.hang.test:9", "http1"),
                                           ("https://up.hang.test:9", "http1"),
                                           ("http://up.hang.test:9", "h2")])
def test_a_hanging_name_lookup_is_bound_by_the_connect_timeout(launcher, tmp_path, upstream,
                                                               url, protocol):
    (tmp_path / "hanging_resolver.py").write_text(RESOLVER)
    gw = launcher.gateway(gateway_conf([
        {"id": "hang", "paths": ["/hang"], "timeouts": {"connect": 0.5},
         "upstream": {"targets": [{"url": url}], "protocol": protocol}},
        {"id": "ok", "paths": ["/ok"],
         "upstream": {"targets": [{"url": f"http://localhost:{upstream.port}"}]}}]),
        env={**python_path_with(tmp_path),
             "GEVENT_RESOLVER": "hanging_resolver.HangingResolver"})
    assert gw.request("GET", "/ok")[0].status == 200     # other names resolve as ever
    begun = time.monotonic()
    resp, body = gw.request("GET", "/hang", timeout=10)
    took = time.monotonic() - begun
    assert resp.status == 504 and took < 2.0, (resp.status, took, body[:200])
