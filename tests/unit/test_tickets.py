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


@pytest.mark.parametrize("old_mode, new_mode", [(0o600, 0o600), (0o640, 0o640),
                                                (0o644, 0o640), (0o666, 0o640), (0o400, 0o600)])
def test_a_new_key_keeps_the_group_read_of_the_file_it_replaces_never_more(
        tmp_path, old_mode, new_mode):
    """docs/tls.md's rotation, as root, for a gateway running as gwserver: a key replaced
    kept no group read, and the gateway could not read the new one. Group read is kept;
    group write and anything for others never are (check warns of those)."""
    from gwserver.client.tickets import write_key_file
    path = tmp_path / "current.key"
    path.write_bytes(b"x" * 80)
    path.chmod(old_mode)
    write_key_file(str(path))
    assert os.stat(path).st_mode & 0o777 == new_mode
    assert len(path.read_bytes()) == 80 and path.read_bytes() != b"x" * 80


def test_a_key_that_cannot_take_the_old_files_owner_is_not_written(tmp_path, monkeypatch):
    """Unprivileged, over a file of another owner: refused, naming why; the old key stays,
    no temp file is left."""
    from gwserver.client import tickets
    path = tmp_path / "current.key"
    path.write_bytes(b"x" * 80)

    def refuse(fd, uid, gid):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(tickets.os, "fchown", refuse)
    with pytest.raises(tickets.KeepOwnerError) as caught:
        tickets.write_key_file(str(path))
    assert "cannot take the owner and group of the one it replaces" in caught.value.strerror
    assert path.read_bytes() == b"x" * 80
    assert [p.name for p in tmp_path.iterdir()] == ["current.key"]
