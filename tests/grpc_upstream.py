"""A real gRPC server (grpcio) for the gRPC-Web tests, its stubs generated at start by
grpcio-tools from tests/grpc/echo.proto into a temp dir.

    python tests/grpc_upstream.py PORT
Unary: echoes text; text "fail" -> INVALID_ARGUMENT "asked to fail"; sleep_ms delays the
answer (deadline tests); text "trailers" adds trailing metadata (x-note, x-blob-bin), text
"metadata" initial metadata (x-cost, x-shard). Stream:
`count` replies. Collect (client streaming): one reply, the texts joined, index = how many
messages and bytes (index = bytes when text "bytes"). Chat (bidi): one reply per message, at
once. Prints "ready" when serving.
"""
import os
import shutil
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_tools import protoc


def generated_modules():
    out = tempfile.mkdtemp(prefix="gwgrpc-")
    proto_dir = Path(__file__).parent / "grpc"
    code = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(proto_dir / "echo.proto")])
    if code:
        raise SystemExit(f"protoc failed ({code})")
    sys.path.insert(0, out)
    try:
        import echo_pb2
        import echo_pb2_grpc
    finally:
        # Imported modules live on in memory: the generated files are not needed again, and
        # a run starts this server often enough to fill /tmp with them.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)
    return echo_pb2, echo_pb2_grpc


def main():
    pb, pb_grpc = generated_modules()

    class Echo(pb_grpc.EchoServicer):
        def Unary(self, request, context):
            if request.sleep_ms:
                time.sleep(request.sleep_ms / 1000)
            if request.text == "fail":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
            if request.text == "metadata":
                context.send_initial_metadata([("x-cost", "7"), ("x-shard", "eu-1")])
            if request.text == "trailers":
                context.set_trailing_metadata([("x-note", "kept"),
                                               ("x-blob-bin", b"\x00\xffbin")])
            return pb.EchoReply(text=request.text, index=0)

        def Collect(self, requests, context):
            texts, size = [], 0
            for request in requests:
                texts.append(request.text)
                size += len(request.text)
            if texts and texts[0] == "bytes":
                return pb.EchoReply(text="bytes", index=size)
            return pb.EchoReply(text="".join(texts), index=len(texts))

        def Chat(self, requests, context):
            for i, request in enumerate(requests):
                yield pb.EchoReply(text=request.text.upper(), index=i)

        def Stream(self, request, context):
            for i in range(request.count):
                yield pb.EchoReply(text=request.text, index=i)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    main()
