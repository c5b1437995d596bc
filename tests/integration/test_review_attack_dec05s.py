"""A review, as an attacker and as a broken etcd, of 2297c8b (the Redis store's refusals and
its URLs' query passwords) and of 5deb8e7's etcd parts (register's claim of its key, 429
failing over, the remedies of refusals): the attack pass of 2026-12-05, helper s10. Each
test failed on 2297c8b.

1. A query password holding an unencoded "&" and then what looks like an option of its
   own (``redis://127.0.0.1:6379/0?password=Tr0ub&4dor=h0rse99``): the mask ended the
   value at any "&name=", so ``check``'s refusal ("redis-py takes no option '4dor'") and
   ``check --dump`` showed ``password=***&4dor=h0rse99``, the rest of the password. A
   query password is masked to the next of redis-py's own options, however spelt
   (``pass%77ord=``); another parameter's value is read again for a secret in it.
2. Two ``gwserver register`` of one URL (the same command started twice: a unit and a
   hand-run one, two containers of one host name): the second took the first's key back
   "at once", as a restart's, and the first never noticed, keeping an empty lease alive
   and saying ``registered``; when the second stopped, its revocation deleted the key and
   the instance stayed unregistered while the first ran. A key deleted under a running
   register (``etcdctl del``) was never put again either. Each turn now checks the key is
   still under its lease: deleted, it is put again at once; taken over, register says so
   and waits for the key to go, then takes it.
3. etcd answers 429 for every ResourceExhausted, not only a lagging member's "too many
   requests": its NOSPACE alarm (``etcdserver: mvcc: database space exceeded``, the
   cluster's database at its quota: every write refused by every member) was passed over
   as a failing member since 5deb8e7, and ``routes put`` and ``register`` said "no etcd
   endpoint answered" (an operator looks for a network problem). A 429 is passed over only
   for "too many requests"; a NOSPACE is a refusal, with what to do about it.
"""
import json
import signal
import socket
import subprocess
import sys

from ..conftest import to_toml, wait_until
from .test_etcd import PREFIX, UP, etcd_conf
from .test_open_items_dec05h import check_dump
from .test_review_attack_dec05r import cli, line_of, register, register_conf


# -- 1. a query password holding "&name=" --------------------------------------------------

def test_a_query_password_is_masked_to_the_next_of_redis_pys_options(tmp_path):
    code, out = check_dump(tmp_path, "redis://127.0.0.1:6379/0?password=Tr0ub&4dor=h0rse99")
    assert code != 0 and "takes no option" in out, out
    assert "Tr0ub" not in out and "h0rse99" not in out, out
    # encoded, it passes and shows whole but the password; the options after it still show
    code, out = check_dump(tmp_path, "redis://127.0.0.1:6379/0?password=Tr0ub%264dor%3D"
                                     "h0rse99&client_name=gw-7")
    assert code == 0 and "client_name=gw-7" in out, out
    assert "Tr0ub" not in out and "h0rse99" not in out, out


# -- 2. a registration whose key another one of its URL took -------------------------------

def test_a_registration_whose_key_was_taken_over_takes_it_again_once_it_goes(launcher,
                                                                            tmp_path):
    etcd, client, conf_path = register_conf(launcher, tmp_path)
    key = f"{PREFIX}/services/orders/{socket.gethostname()}-8080"
    first = register(conf_path, "http://127.0.0.1:8080")
    launcher.started.append(first)
    assert line_of(first.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    second = register(conf_path, "http://127.0.0.1:8080")      # the same command again
    launcher.started.append(second)
    assert line_of(second.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    said = line_of(first.stderr)
    assert said.startswith(f"{key} was taken over by another registration"), said
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    # the first, still running, registers again (was: never, while it ran)
    assert wait_until(lambda: client.get(key) is not None, timeout=5), \
        "the first registration's key was never put again"
    assert line_of(first.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    # a key deleted under it is put again at once
    subprocess.run(["etcdctl", "--endpoints", etcd.url, "del", key],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True, timeout=30)
    assert wait_until(lambda: client.get(key) is not None, timeout=5), \
        "a deleted key was never put again"
    first.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0 and client.get(key) is None


# -- 3. etcd's NOSPACE alarm, a 429 too -----------------------------------------------------

def fill(etcd):
    """Write to ``etcd`` (a small quota) until it raises its NOSPACE alarm."""
    client = etcd.client()
    for i in range(40):
        try:
            client.put(f"/filler/{i}", "x" * 400_000)
        except Exception as exc:        # noqa: BLE001 (the alarm, whatever its class)
            if "database space exceeded" in str(exc):
                return
            raise
    raise AssertionError("etcd never raised its NOSPACE alarm")


def test_etcds_nospace_alarm_is_a_refusal_said_as_such_not_unreachable(launcher, upstream,
                                                                       tmp_path):
    etcd = launcher.etcd(extra=("--quota-backend-bytes", str(4 * 1024 * 1024)))
    fill(etcd)
    conf_path = tmp_path / "cli.toml"
    conf_path.write_text(to_toml(etcd_conf(tmp_path, [etcd.url], workers=1)))
    run = cli(conf_path, "upstreams", "put", "-", stdin=json.dumps({"id": "up", **UP(upstream)}))
    assert run.returncode == 2, run
    assert "HTTP 429 etcdserver: mvcc: database space exceeded" in run.stderr, run.stderr
    assert "etcdctl alarm disarm" in run.stderr, run.stderr
    assert "no etcd endpoint answered" not in run.stderr, run.stderr
    # register says it too, and keeps trying
    proc = subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c",
                             str(conf_path), "--service", "orders", "--instance", "i1",
                             "--url", "http://127.0.0.1:8080", "--ttl", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    launcher.started.append(proc)
    said = line_of(proc.stderr)
    assert "database space exceeded" in said and "alarm disarm" in said, said
    assert "no etcd endpoint answered" not in said, said
    proc.terminate()
    assert proc.wait(10) == 0
