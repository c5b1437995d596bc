"""A connect that failed for want of a file descriptor is the gateway's limit, not the
target's failure, however urllib3 wrapped it (the attack pass of 2026-12-05, helper h1;
tests/integration/test_tunnel_attack_dec05c.py runs it against a real worker)."""
import errno

import pytest
from urllib3.exceptions import NewConnectionError

from gwserver.net.sockets import failure_reason, out_of_files


def wrapped(code):
    """An OSError with ``code`` as urllib3 raises it: a NewConnectionError whose context is
    the OSError."""
    try:
        try:
            raise OSError(code, "the OS's words")
        except OSError as exc:
            raise NewConnectionError(None, f"Failed to establish a new connection: {exc}")
    except NewConnectionError as exc:
        return exc


@pytest.mark.parametrize("code, ours", [(errno.EMFILE, True), (errno.ENFILE, True),
                                        (errno.ECONNREFUSED, False), (errno.EHOSTUNREACH, False)])
def test_out_of_files_is_told_from_a_refusal(code, ours):
    assert out_of_files(OSError(code, "x")) is ours
    assert out_of_files(wrapped(code)) is ours
    assert failure_reason(wrapped(code)) == "the OS's words"


def test_an_error_without_an_errno_is_no_limit():
    assert not out_of_files(ValueError("x")) and not out_of_files(OSError("no errno"))
