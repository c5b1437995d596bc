"""Ticket key files (issue 15): nginx's layouts, the errors `check` prints, the docs example."""
import os
import re
from pathlib import Path

import pytest

from gwserver.client.tickets import parse_key, read_key_files
from gwserver.errors import ConfigError
from gwserver.settings import parse_conf

ROOT = Path(__file__).resolve().parents[2]
NAME, A, B = b"N" * 16, bytes(range(16, 48)), bytes(range(48, 80))


@pytest.mark.parametrize("data, name, hmac, aes, cipher", [
    (NAME + A + B, NAME, A, B, b"AES-256-CBC"),                     # name | HMAC 32 | AES 32
    (NAME + A[:16] + B[:16], NAME, B[:16], A[:16], b"AES-128-CBC"),  # name | AES 16 | HMAC 16
])
def test_key_files_are_read_as_nginx_reads_them(data, name, hmac, aes, cipher):
    key = parse_key(data, "f")
    assert (key.name, key.hmac, key.aes, key.cipher) == (name, hmac, aes, cipher)


@pytest.mark.parametrize("sizes, problems", [
    ([80, 48], []),
    ([80, None], ["[1]: {1} does not exist"]),
    ([0, 79], ["[0]: {0}: 0 bytes; a ticket key file holds exactly 48 or 80 bytes",
               "[1]: {1}: 79 bytes; a ticket key file holds exactly 48 or 80 bytes"]),
])
def test_every_bad_file_is_named_with_the_sizes_expected(tmp_path, sizes, problems):
    paths = [str(tmp_path / f"{i}.key") for i in range(len(sizes))]
    for path, size in zip(paths, sizes):
        if size is not None:
            Path(path).write_bytes(os.urandom(size))
    if not problems:
        assert [k.source for k in read_key_files(paths)] == paths
        return
    with pytest.raises(ConfigError) as caught:
        read_key_files(paths)
    assert len(caught.value.problems) == len(problems)
    for got, expected in zip(caught.value.problems, problems):
        assert got.startswith("tls.ticket_key_files" + expected.format(*paths)), got


def test_the_docs_example_passes_check_with_real_key_files(tmp_path):
    from tests.pki import CA
    text = (ROOT / "docs" / "tls.md").read_text()
    block = next(m[1] for m in re.finditer(r"```toml\n(.*?)```", text, re.S)
                 if "ticket_key_files" in m[1])
    cert, key, _ = CA(tmp_path).issue("site")
    for name in ("current", "previous"):
        (tmp_path / f"{name}.key").write_bytes(os.urandom(80))
    block = block.replace("/etc/gwserver/tls/site.pem", str(cert)) \
        .replace("/etc/gwserver/tls/site.key", str(key)) \
        .replace("/etc/gwserver/tickets/", f"{tmp_path}/")
    import tomllib
    conf = parse_conf(tomllib.loads(block))
    assert conf.tls["ticket_key_files"][0].endswith("current.key")
