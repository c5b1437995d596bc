"""Calls an upstream cannot take in the protocol it speaks.

1. A native gRPC call from an HTTP/2 client on a route whose upstream speaks HTTP/1.1 was
   forwarded as an HTTP/1.1 POST: the upstream got a request it cannot answer as gRPC
   (whose status rides on trailers, which an HTTP/1.1 answer does not carry here), and the
   client got whatever it answered, its "missing status" to puzzle over. Now 12
   UNIMPLEMENTED that says what the route needs (protocol = "h2"); the upstream gets nothing.
2. A websocket handshake on a route whose upstream speaks HTTP/2 was sent as a plain GET,
   Upgrade dropped: the client got the upstream's 200 for a handshake. Now 501 that says
   why; the upstream gets nothing.
"""
import grpc

from ..conftest import gateway_conf, open_websocket, wait_until
from ..grpc_upstream import generated_modules

pb, pb_grpc = generated_modules()


def test_a_native_grpc_call_to_an_http1_upstream_is_unimplemented_not_forwarded(
        launcher, h1_up):
    gw = launcher.gateway(gateway_conf([{
        "id": "grpc-on-h1", "paths": ["/gwtest.Echo/*method"],
        "upstream": {"targets": [{"url": h1_up.url}]}}], http2={"h2c": True}))
    channel = grpc.insecure_channel(f"127.0.0.1:{gw.port}")
    try:
        call = pb_grpc.EchoStub(channel).Unary
        try:
            call(pb.EchoRequest(text="x"), timeout=10)
            raise AssertionError("the call succeeded")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (err.code(), err.details())
            assert 'protocol = "h2"' in err.details(), err.details()
    finally:
        channel.close()
    assert h1_up.heads == []
    wait_until(gw.access_lines)         # (written on the worker's tick)
    entry = gw.access_lines()[-1]
    assert entry["status"] == 501 and entry["route"] == "grpc-on-h1"
    assert "speaks HTTP/1.1" in gw.log()


def test_a_websocket_handshake_to_an_h2_upstream_is_refused_not_sent_as_a_get(
        launcher, h2_up):
    gw = launcher.gateway(gateway_conf([{
        "id": "ws-on-h2", "paths": ["/ws"],
        "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                     "protocol": "h2"}}]))
    sock, head, _ = open_websocket(gw.port)
    sock.close()
    assert head.startswith(b"HTTP/1.1 501 "), head
    assert h2_up.requests == []
    assert "speaks HTTP/2" in gw.log()
