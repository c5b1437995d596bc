"""basic_auth's check of a password longer than bcrypt reads (72 bytes)."""
import types

import bcrypt

from gwserver.plugins import authlib, basic_auth


class Directory:
    generation = 1

    def __init__(self, consumer):
        self.consumer = consumer

    def find(self, plugin_name, lookup):
        return self.consumer if lookup == "alice" else None


def test_a_password_past_72_bytes_never_passes_whatever_bcrypt_does(monkeypatch):
    """bcrypt 5 refuses a password over 72 bytes; bcrypt 4.x (setup.cfg takes >= 4.1) reads
    its first 72, so the right password with anything after it passed. Checked here with
    4.x's way of reading, on the real library."""
    password = b"p" * 72
    stored = bcrypt.hashpw(password, bcrypt.gensalt(4))
    consumer = types.SimpleNamespace(credentials={"basic_auth": {"hash_b": stored}})
    reads_72 = types.SimpleNamespace(checkpw=lambda given, hashed: bcrypt.checkpw(given[:72],
                                                                                  hashed))
    monkeypatch.setattr(basic_auth, "_bcrypt", lambda: reads_72)
    directory = Directory(consumer)
    assert basic_auth.check(directory, b"alice", password,
                            authlib.CheckedCache(60, 10)) is consumer
    assert basic_auth.check(directory, b"alice", password + b"and-more",
                            authlib.CheckedCache(60, 10)) is None
