"""A review, as an attacker and as a broken etcd, of the commits that just landed: 28b90d4
(`gwserver register`'s instance ids, rotated ticket keys' access), 3cafd21 / 491922f (get's
masks, put's refusal of a mask given back) and b1390bb (etcd's refusals said as such). The
attack pass of 2026-12-05, helper s9; each test failed on 28b90d4.

1. `gwserver tls new-ticket-key current.key` where current.key is a symbolic link (to
   /etc/shadow, root:shadow 0640): the new key took the owner, group and group read of the
   file the link points to (os.stat followed it), where the rename replaced the link: a key
   readable by group shadow. Now refused, naming the link's target, nothing written. And
   "link/../current.key" (the system reads '..' after the link, abspath by text): the temp
   file went beside the link, and the rename crossed file systems. (tests/unit/
   test_review_attack_dec05r.py)
2. `gwserver register` whose put etcd refused once (a role not granted yet, a 503 from a
   member losing its leader) after the lease was granted: the next turns only kept the
   lease alive, and the instance was never registered while the process ran, saying nothing
   after its first `retrying`. The lease is the registration's only once the put is in (a
   lease whose put was refused is revoked).
3. A write etcd refused (`routes put`, `register`, a user with read access only) was told to
   "grant its role read on it": the remedy of a refused range, which the user had. The
   remedy names the access the refused call needs (readwrite for a write).
4. A member answering 429 (`etcdserver: too many requests`: its apply loop behind, a
   lagging member) was "etcd refused the sync's call", and raised at once: the next member
   was never asked, and the gateway never synced while the first listed member lagged.
   429 is that member failing, as a 5xx is; the next is asked.
5. Two `gwserver register` of one host and port (http://127.0.0.1:8080 and
   http://[::1]:8080, one service on both stacks; two containers sharing the host's name):
   both HOSTNAME-8080, the second put over the first's key, and when it stopped its
   revocation deleted the key the first still kept alive: the first, `registered`, was
   never served again. The key is now taken only when absent or holding the same value (a
   registration restarted before its lease ran out takes it back at once); else register
   says whose it is and that each needs its own --instance, and waits for it to go.
6. `routes validate|put` of a route whose headers plugin sets an Authorization written as
   a list (`["Bearer ..."]`, a header of several values), or as a number: refused, with the
   value quoted whole, the credential in it, in the CLI's error (pasted into tickets), the
   sync's log and /admin/config's rejected items, where get/list mask it. A header value
   that is not text is said by its type (the redirect's uri, fault's and rewrite's values
   too).
"""
import json
import subprocess
import sys

import pytest

from ..conftest import to_toml, wait_until
from .test_etcd import PREFIX, UP, all_workers_at, etcd_conf, put, serves
from .test_etcd_attack_dec05k import enable_auth, member_answering

CTL_ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}


def etcdctl(etcd, *args):
    subprocess.run(["etcdctl", "--endpoints", etcd.url, "--user", "root:s3cret", *args],
                   env=CTL_ENV, check=True, capture_output=True, timeout=30)


def user_with_role(etcd, user, password, permission=None):
    """A user with role ROLE-USER, granted ``permission`` on PREFIX/ if given."""
    etcdctl(etcd, "user", "add", f"{user}:{password}")
    etcdctl(etcd, "role", "add", f"role-{user}")
    etcdctl(etcd, "user", "grant-role", user, f"role-{user}")
    if permission:
        grant(etcd, user, permission)


def grant(etcd, user, permission):
    etcdctl(etcd, "role", "grant-permission", f"role-{user}", "--prefix=true", permission,
            f"{PREFIX}/")


def line_of(stream, timeout=10):
    """The next line ``stream`` gives within ``timeout`` seconds ('' if none: never a hang)."""
    import select
    return stream.readline() if select.select([stream], [], [], timeout)[0] else ""


def cli(conf_path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", *args, "-c", str(conf_path)],
                          input=stdin, capture_output=True, text=True, timeout=60)


# -- 2. register: a put refused once is never tried again -----------------------------------

def test_register_puts_its_key_once_etcd_takes_it(launcher, tmp_path):
    etcd = launcher.etcd()
    root = enable_auth(etcd)
    user_with_role(etcd, "svc", "svc-pw")       # no access yet: the put is refused
    conf = etcd_conf(tmp_path, [etcd.url], workers=1, username="svc", password="svc-pw")
    conf_path = tmp_path / "register.toml"
    conf_path.write_text(to_toml(conf))
    proc = subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c",
                             str(conf_path), "--service", "orders", "--instance", "i1",
                             "--url", "http://127.0.0.1:8080", "--ttl", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    launcher.started.append(proc)
    said = line_of(proc.stderr)
    assert "permission denied" in said and "retrying" in said, said
    grant(etcd, "svc", "readwrite")
    key = f"{PREFIX}/services/orders/i1"
    assert wait_until(lambda: root.get(key) is not None, timeout=10), \
        "the instance was never registered once etcd took the put"
    assert line_of(proc.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    leases = subprocess.run(["etcdctl", "--endpoints", etcd.url, "--user", "root:s3cret",
                             "lease", "list"], env=CTL_ENV, capture_output=True, text=True,
                            timeout=30).stdout
    assert leases.startswith("found 1 leases"), leases     # the refused puts' were revoked
    proc.terminate()
    assert proc.wait(10) == 0 and root.get(key) is None


# -- 3. a refused write is told to grant read -----------------------------------------------

def test_a_refused_write_is_told_the_access_a_write_needs(launcher, upstream, tmp_path):
    etcd = launcher.etcd()
    enable_auth(etcd)
    user_with_role(etcd, "reader", "reader-pw", "read")
    conf_path = tmp_path / "reader.toml"
    conf_path.write_text(to_toml(etcd_conf(tmp_path, [etcd.url], workers=1,
                                           username="reader", password="reader-pw")))
    run = cli(conf_path, "upstreams", "put", "-", stdin=json.dumps({"id": "up", **UP(upstream)}))
    assert run.returncode == 2, run
    assert "HTTP 403 etcdserver: permission denied" in run.stderr, run.stderr
    assert "grant its role readwrite on it" in run.stderr, run.stderr
    assert "grant its role read on it" not in run.stderr, run.stderr


# -- 4. a member answering 429 ---------------------------------------------------------------

@pytest.fixture
def lagging_member():
    """A member whose apply loop is behind, as the JSON gateway answers it: 429 to every call."""
    with member_answering(429, "etcdserver: too many requests", 8) as url:
        yield url


def test_a_member_answering_429_is_passed_over_not_a_refusal(launcher, upstream,
                                                              lagging_member, tmp_path):
    etcd = launcher.etcd()
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
    gw = launcher.gateway(etcd_conf(tmp_path, [lagging_member, etcd.url], workers=1))
    assert wait_until(lambda: all_workers_at(gw, revision), timeout=10), gw.log()[-2000:]
    assert serves(gw, "/orders") == 200
    assert "refused" not in gw.log(), gw.log()[-2000:]



# -- 5. two registrations of one host and port ---------------------------------------------

def register_conf(launcher, tmp_path):
    """An etcd, and a conf file for `gwserver register` to use it: -> (etcd, its client,
    the conf's path)"""
    etcd = launcher.etcd()
    conf_path = tmp_path / "register.toml"
    conf_path.write_text(to_toml(etcd_conf(tmp_path, [etcd.url], workers=1)))
    return etcd, etcd.client(), conf_path


def register(conf_path, url, *args):
    return subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c", str(conf_path),
                             "--service", "orders", "--url", url, "--ttl", "3", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_second_registration_of_one_host_and_port_does_not_take_the_firsts_key(
        launcher, tmp_path):
    import signal
    import socket
    etcd, client, conf_path = register_conf(launcher, tmp_path)
    key = f"{PREFIX}/services/orders/{socket.gethostname()}-8080"
    url = lambda: json.loads(client.get(key))["url"] if client.get(key) else None  # noqa
    first = register(conf_path, "http://127.0.0.1:8080")
    launcher.started.append(first)
    assert line_of(first.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    second = register(conf_path, "http://[::1]:8080")       # the same HOSTNAME-8080
    launcher.started.append(second)
    said = line_of(second.stderr)
    assert said.startswith(f"{key} is held by another registration (http://127.0.0.1:8080)"), \
        said
    assert "its own --instance" in said and url() == "http://127.0.0.1:8080"
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    assert url() == "http://127.0.0.1:8080"         # the first, still registered
    # A registration restarted before its lease ran out (killed: the key stays) takes its
    # own key back at once.
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    again = register(conf_path, "http://127.0.0.1:8080")
    launcher.started.append(again)
    assert line_of(again.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    again.send_signal(signal.SIGTERM)
    assert again.wait(10) == 0 and client.get(key) is None


# -- 6. a header value that is not text, quoted whole ----------------------------------------

def test_a_header_value_that_is_not_text_is_refused_without_quoting_it(launcher, upstream,
                                                                      tmp_path):
    etcd = launcher.etcd()
    conf_path = tmp_path / "cli.toml"
    conf_path.write_text(to_toml(etcd_conf(tmp_path, [etcd.url], workers=1)))
    secret = "Bearer eyJhbGciOiJIUzI1NiJ9.sup3r-s3cret"
    for value, kind in (([secret], "list"), ({"token": secret}, "table")):
        route = {"id": "r", "paths": ["/r"], "upstream": UP(upstream),
                 "plugins": {"headers": {"request": {"set": {"Authorization": value}}}}}
        for action in ("validate", "put"):
            run = cli(conf_path, "routes", action, "-", stdin=json.dumps(route))
            assert run.returncode == 2, run
            assert f"request.set.Authorization: must be a header value (text), got a {kind} " \
                f"(not shown: it may be a secret)" in run.stderr, run.stderr
            assert "s3cret" not in run.stdout + run.stderr, run.stderr
    assert etcd.client().get(f"{PREFIX}/routes/r") is None
