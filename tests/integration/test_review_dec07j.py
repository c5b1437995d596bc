"""Review of bfe4e1b and a333dd5 (the answer-changing plugins; an orphaned worker's drain)."""
import subprocess
import sys

import pytest

from ..conftest import gateway_conf, route, to_toml


@pytest.mark.parametrize("rewrite", [
    {"response_status": {"404": 205}, "response_body": "gone"},     # the text as its body
    {"response_status": {"200": 205}},                              # the upstream's body
])
def test_rewrite_cannot_map_an_answer_to_a_205(launcher, upstream, rewrite):
    """bfe4e1b left a 205 empty where response_body would replace its body, but
    response_status maps after the replacement: {"404" = 205} with a response_body sent
    "HTTP/1.1 205 Reset Content ... 4\\r\\ngone" (RFC 9110 15.3.6: a 205 has no content),
    and {"200" = 205} the upstream's own body. Refused in the conf, as 204 and 304 are."""
    path = launcher.tmp_dir / "to205.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/status/:s"], upstream.url,
                                                plugins={"rewrite": rewrite})])))
    check = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=30)
    said = check.stdout + check.stderr
    assert check.returncode != 0 and "cannot be rewritten to 205" in said, said
