"""A plugin's 2xx Reply to a native gRPC call (HTTP/2) went through the route's reply hooks
twice: H2 streams ran them, then handed the reply to the HTTP/1.1 path, which ran them again
(a hook that adds a header added it twice). Once now, as for every other answer."""
import h2.events

from ..conftest import gateway_conf, installed_plugin, route
from ..h2client import RawH2

REPLIER = '''
from gwserver.core.context import Reply
from gwserver.core.schema import Schema


class replier:
    NAME, PRIORITY, SCHEMA = "replier", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return Reply(200, b"made by the plugin")

    @staticmethod
    def reply(conf, ctx, head):
        head.headers.append((b"X-Hooked", b"1"))
'''


def test_a_plugins_2xx_reply_to_a_grpc_call_runs_its_reply_hooks_once(launcher, h1_up,
                                                                       tmp_path):
    gw = launcher.gateway(gateway_conf([route("g", ["/*rest"], h1_up.url,
                                              plugins={"replier": {}})],
                                       http2={"h2c": True}),
                          env=installed_plugin(tmp_path, "gwreplier", REPLIER,
                                               "replier = gwreplier:replier\n"))
    client = RawH2(gw.port)
    try:
        for content_type in ("application/grpc", "text/plain"):     # (gRPC, and not)
            sid = client.request("/pkg.Svc/Get", method="POST", body=b"\0\0\0\0\0",
                                 headers=[("content-type", content_type), ("te", "trailers")])
            assert client.response(sid)[0] == 200
            (head,) = [e for e in client.events if isinstance(e, h2.events.ResponseReceived)
                       and e.stream_id == sid]
            hooked = [v for k, v in head.headers if bytes(k) == b"x-hooked"]
            assert hooked == [b"1"], (content_type, head.headers)    # before: two, gRPC's
    finally:
        client.close()
