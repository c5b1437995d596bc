"""Session tickets that outlive a reload and span hosts (issue 15): real gateways, Python's ssl
client resuming with `session=`, key files made by `gwserver tls new-ticket-key`."""
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import free_port, gateway_conf, route, wait_until
from ..pki import CA
from .test_tls import tls_get


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


@pytest.fixture
def client(ca):
    """One client context: Python's ssl resumes a session only on the context it came from."""
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.ca = ca
    return context


@pytest.fixture
def site(ca):
    cert, key, _ = ca.issue("site")
    return cert, key


def new_key(path):
    subprocess.run([sys.executable, "-m", "gwserver", "tls", "new-ticket-key", str(path)],
                   check=True)
    return path


def ticket_conf(upstream, site, key_files=None, workers=2):
    tls = {"bind": [f"127.0.0.1:{free_port()}"],
           "certificates": [{"cert": str(site[0]), "key": str(site[1])}]}
    if key_files is not None:
        tls["ticket_key_files"] = [str(p) for p in key_files]
    return gateway_conf([route("r", ["/*rest"], upstream.url)], workers=workers, tls=tls)


def start(launcher, conf):
    gw = launcher.gateway(conf)
    gw.tls_port = int(conf["tls"]["bind"][0].rpartition(":")[2])
    return gw


def ticket(gw, client):
    """A TLS 1.3 session (its ticket arrives after the handshake; tls_get reads the answer)."""
    data, session, reused, _, _ = tls_get(gw.tls_port, client.ca, context=client)
    assert data.startswith(b"HTTP/1.1 200") and session.has_ticket and not reused
    return session


def resumes(gw, client, session):
    return tls_get(gw.tls_port, client.ca, session=session, context=client)[2]


def reload(gw, key_files=None):
    """SIGHUP (with new ticket_key_files written first); returns once only new workers
    serve."""
    if key_files is not None:
        text = gw.conf_path.read_text()
        listed = ", ".join(f'"{p}"' for p in key_files)
        changed = re.sub(r'"?ticket_key_files"? = \[[^\]]*\]',
                         f"ticket_key_files = [{listed}]", text)
        assert changed != text
        gw.conf_path.write_text(changed)
    old = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: len(gw.worker_pids()) >= 2 and old.isdisjoint(gw.worker_pids()),
               timeout=30)


def test_new_ticket_key_writes_80_private_bytes_in_place(tmp_path):
    path = new_key(tmp_path / "ticket.key")
    first = path.read_bytes()
    assert len(first) == 80 and stat.S_IMODE(path.stat().st_mode) == 0o600
    new_key(path)                                           # replaced, never appended to
    assert len(path.read_bytes()) == 80 and path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.key"]      # no temp file left


def test_a_ticket_from_one_gateway_resumes_on_another_sharing_the_key_file(
        launcher, upstream, site, client, tmp_path):
    shared = new_key(tmp_path / "ticket.key")
    a = start(launcher, ticket_conf(upstream, site, [shared]))
    b = start(launcher, ticket_conf(upstream, site, [shared]))
    stranger = start(launcher, ticket_conf(upstream, site))       # its own key
    session = ticket(a, client)
    assert resumes(b, client, session)
    assert resumes(a, client, ticket(b, client))                           # and the other way
    assert not resumes(stranger, client, session)                      # a full handshake there


@pytest.mark.parametrize("with_key_files", [True, False], ids=["key-files", "master-key"])
def test_a_ticket_issued_before_a_reload_resumes_after_it(launcher, upstream, site, client,
                                                           tmp_path, with_key_files):
    key_files = [new_key(tmp_path / "ticket.key")] if with_key_files else None
    gw = start(launcher, ticket_conf(upstream, site, key_files))
    session = ticket(gw, client)
    reload(gw)
    assert resumes(gw, client, session)
    reload(gw)                                                     # and after a second one
    assert resumes(gw, client, session)


def test_after_a_rotation_old_tickets_resume_and_new_ones_use_the_new_key(
        launcher, upstream, site, client, tmp_path):
    old = new_key(tmp_path / "old.key")
    gw = start(launcher, ticket_conf(upstream, site, [old]))
    before = ticket(gw, client)
    new = new_key(tmp_path / "new.key")
    reload(gw, key_files=[new, old])                # the new key first: it seals from now on
    assert resumes(gw, client, before)                  # the old key still opens
    after = ticket(gw, client)
    # Which key sealed a ticket: a gateway that knows only the new key opens it.
    only_new = start(launcher, ticket_conf(upstream, site, [new]))
    assert resumes(only_new, client, after)
    assert not resumes(only_new, client, before)
    # Once the old key is dropped, its tickets get a full handshake; new ones still resume.
    reload(gw, key_files=[new])
    assert not resumes(gw, client, before) and resumes(gw, client, after)


def check(conf_path):
    return subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf_path)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    (b"x" * 20, "20 bytes; a ticket key file holds exactly 48 or 80 bytes"),
    (b"x" * 81, "more than 80 bytes; a ticket key file holds exactly 48 or 80 bytes"),
    (b"x" * 48, None),
    (b"x" * 80, None),
])
def test_a_missing_or_short_key_file_is_a_check_error_naming_it(upstream, site, tmp_path,
                                                                 content, expected):
    from ..conftest import to_toml
    key_file = tmp_path / "ticket.key"
    if content is not None:
        key_file.write_bytes(content)
    conf_path = tmp_path / "gw.toml"
    conf_path.write_text(to_toml(ticket_conf(upstream, site, [key_file])))
    result = check(conf_path)
    if expected is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert f"tls.ticket_key_files[0]: {key_file}" in result.stderr and expected in \
        result.stderr, result.stderr


def test_the_rotation_units_verify(tmp_path):
    """systemd-analyze verify on systemd/gwserver-ticket-key.{service,timer}, the gwserver
    path pointed at this checkout's (verify wants executables that exist)."""
    root = Path(__file__).resolve().parents[2]
    gwserver = Path(sys.executable).with_name("gwserver")
    for name in ("gwserver-ticket-key.service", "gwserver-ticket-key.timer"):
        text = (root / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/gwserver/bin/gwserver", str(gwserver)))
    verify = subprocess.run(["systemd-analyze", "verify", *(str(p) for p in
                             sorted(tmp_path.glob("gwserver-ticket-key.*")))],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
