"""A gateway's own answer to a gRPC call whose message is long (a fault abort's body, a
plugin's page) went out as a grpc-message of that length, percent-encoded: over the 8 KiB of
metadata gRPC clients take by default (grpc-core, grpc-java), the client failed the call on
its own (RESOURCE_EXHAUSTED or INTERNAL), not with the status the gateway answered."""
import grpc

from ..conftest import free_port, gateway_conf
from .test_grpc_native import pb, stub


def test_a_long_message_of_the_gateways_own_answer_is_cut_not_the_call(launcher):
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    gw = launcher.gateway(gateway_conf([
        {"id": "busy", "paths": ["/gw.Busy/*m"], "upstream": dead, "plugins": {
            "fault": {"abort": {"status": 503, "body": "maintenance: " + "ü" * 12000}}}}],
        http2={"h2c": True}))
    call, channel = stub(gw.port, "gw.Busy")
    try:
        call(pb.EchoRequest(text="x"), timeout=10)
        raise AssertionError("the call succeeded")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details()[:200])
        assert exc.details().startswith("maintenance: üüü") and len(exc.details()) < 700
    finally:
        channel.close()
