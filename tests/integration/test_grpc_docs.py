"""docs/grpc.md runs as written: its server command, its conf and its curl call, against a
real grpcio server and a real gateway (ports swapped for free ones); the answer is the one the
page shows, and the `fail` variant it describes ends with grpc-status 3."""
import base64
import re
import shlex
import subprocess
import sys
import tomllib

from ..conftest import ROOT, free_port, wait_for_port

DOC = ROOT / "docs" / "grpc.md"


def block(marker, text):
    match = re.search(rf"<!-- grpc demo: {marker} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, marker
    return match.group(1)


def test_the_grpc_web_example_runs_as_written(launcher):
    text = DOC.read_text()
    grpc_port = free_port()
    server = shlex.split(block("server", text).strip().rstrip("&"))
    assert server[:2] == [".venv/bin/python", "scripts/grpc-demo-server"]
    proc = subprocess.Popen([sys.executable, *server[1:-1], str(grpc_port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    launcher.started.append(proc)
    wait_for_port(grpc_port, proc=proc)

    conf = tomllib.loads(re.search(r"```toml\n(.*?)```", text, re.S).group(1))
    target = conf["routes"][0]["upstream"]["targets"][0]
    target["url"] = target["url"].replace(":50051", f":{grpc_port}")
    gw = launcher.gateway(conf)

    call = block("call", text).replace("\\\n", " ").replace("127.0.0.1:8080",
                                                            f"127.0.0.1:{gw.port}")
    out = subprocess.run(shlex.split(call), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == block("output", text).strip()
    raw = base64.b64decode(out.stdout)
    assert raw[7:19] == b"hello, world" and b"grpc-status:0" in raw

    fail = call.replace("AAAAAAcKBXdvcmxk", "AAAAAAYKBGZhaWw=")
    assert "AAAAAAYKBGZhaWw=" in text
    raw = base64.b64decode(subprocess.run(shlex.split(fail), capture_output=True, text=True,
                                          timeout=20).stdout)
    assert b"grpc-status:3" in raw and b"grpc-message:asked to fail" in raw
