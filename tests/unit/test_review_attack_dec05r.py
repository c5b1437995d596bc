"""A review, as an attacker, of 28b90d4's ticket-key rotation (the attack pass of 2026-12-05,
helper s9): the parts that need no process (tests/integration/test_review_attack_dec05r.py
has the rest, and the list of defects). Each test failed on 28b90d4.
"""
import os
import stat

import pytest

from gwserver.client import tickets


def test_a_key_file_that_is_a_symbolic_link_is_refused_and_lends_nothing(tmp_path):
    """1. current.key a link to another file (/etc/shadow, root:shadow 0640, here a file of
    group 4242): the new key took that file's owner, group and group read (os.stat followed
    the link), where the rename replaced only the link."""
    other = tmp_path / "shadow"
    other.write_bytes(b"root:$6$...\n")
    os.chown(other, 0, 4242) if os.geteuid() == 0 else None
    other.chmod(0o640)
    tickets_dir = tmp_path / "tickets"
    tickets_dir.mkdir()
    link = tickets_dir / "current.key"
    link.symlink_to(other)
    with pytest.raises(tickets.KeyFileLinkError) as caught:
        tickets.write_key_file(str(link))
    assert "is a symbolic link" in caught.value.strerror
    assert str(other) in caught.value.strerror
    assert link.is_symlink() and other.read_bytes() == b"root:$6$...\n"
    assert [p.name for p in tickets_dir.iterdir()] == ["current.key"]   # no temp file left
    assert stat.S_IMODE(other.stat().st_mode) == 0o640


def test_the_temp_file_is_made_where_the_system_finds_the_key(tmp_path, monkeypatch):
    """1. "link/../current.key", link to a directory on another file system (the system
    reads '..' after the link, abspath by text): the temp file was made in the current
    directory and the rename crossed file systems ("Invalid cross-device link")."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp_path")
    import tempfile
    other = tempfile.mkdtemp(dir="/dev/shm")
    try:
        os.mkdir(os.path.join(other, "sub"))
        (tmp_path / "link").symlink_to(os.path.join(other, "sub"))
        monkeypatch.chdir(tmp_path)
        tickets.write_key_file("link/../current.key")
        assert len(open(os.path.join(other, "current.key"), "rb").read()) == 80
        assert sorted(os.listdir(tmp_path)) == ["link"]
        assert sorted(os.listdir(other)) == ["current.key", "sub"]
    finally:
        import shutil
        shutil.rmtree(other)
