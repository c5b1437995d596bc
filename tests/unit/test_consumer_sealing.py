"""`gwserver consumers put|validate` and `hash-password`: a clear credential bcrypt or UTF-8
cannot take is an error naming it, not a traceback (and never quoted back)."""
import subprocess
import sys
from pathlib import Path

import pytest

from gwserver.errors import ConfigError
from gwserver.routes_cli import seal

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, cred, problem", [
    ("basic_auth", {"username": "bob", "password": "p" * 73}, "longer than 72 bytes"),
    ("basic_auth", {"username": "bob", "password": "\u00e9" * 37}, "longer than 72 bytes"),
    ("basic_auth", {"username": "bob", "password": "pw\ud800"}, "lone surrogate"),
    ("key_auth", {"key": "k\ud800"}, "lone surrogate"),
])
def test_a_clear_credential_that_cannot_be_sealed_is_named(name, cred, problem):
    """bcrypt refuses a password over 72 bytes with ValueError, and JSON's "\\ud800" has
    no UTF-8: `consumers put` died with a traceback on either (and the gateway could never
    have checked such a password: bcrypt refuses it there too, so it would answer 401)."""
    with pytest.raises(ConfigError) as caught:
        seal({"credentials": {name: cred}}, "acme")
    text = str(caught.value)
    assert text.startswith(f"consumer acme: credentials.{name}: ") and problem in text, text
    secret = cred.get("password") or cred.get("key")
    assert secret not in text


def test_hash_password_names_a_password_bcrypt_cannot_take():
    run = subprocess.run([sys.executable, "-m", "gwserver", "consumers", "hash-password"],
                         input="p" * 100 + "\n", capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "longer than 72 bytes" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
