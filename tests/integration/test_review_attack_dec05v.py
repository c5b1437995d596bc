"""A review, as an attacker and as a broken etcd, of bd3aadf (the redis query masks read
parameter by parameter, register's check each turn of whose lease holds its key, etcd's
NOSPACE 429): the attack pass of 2026-12-05, helper s13. Each test failed on bd3aadf.

1. A redis URL whose options are joined by ";" or "?" where redis-py reads only "&"
   (``redis://127.0.0.1:6379/0?client_name=gw;password=S3cr3t``, a separator older
   readers took): redis-py reads one option, client_name ``gw;password=S3cr3t``, and
   ``check`` passes it; the mask read the password as client_name's value, and
   ``check --dump`` showed it whole (``?client_name=gw;password=S3cr3t``). An ordinary
   option's value now ends at a ";name=" or "?name=" too, and a secret's name after it
   is masked (``?client_name=gw;password=***``); the rest shows as written.
2. A key put over by hand without a lease (``etcdctl put KEY VALUE``: a mirror, a restore,
   an operator's fix) under a running ``gwserver register``: register said "taken over by
   another registration of this URL ... Waiting for the key to go", dropped its lease and
   waited for ever (nothing deletes a key without a lease), and when it was stopped the
   instance stayed registered (the hand-put key stayed). A key put again with register's
   own value is taken back under its lease at once; one with another value is said as
   what it is (no lease, its URL, `etcdctl del`) and waited for.
"""
import signal
import subprocess

from .test_etcd import PREFIX
from .test_open_items_dec05h import check_dump
from .test_review_attack_dec05r import line_of, register, register_conf

SECRET = "S3cr3tPw"


# -- 1. a secret after a ";" or "?" in an ordinary option's value ----------------------------

def test_a_password_after_a_semicolon_in_an_options_value_is_masked_in_the_dump(tmp_path):
    for url, shown in (
            (f"redis://127.0.0.1:6379/0?client_name=gw;password={SECRET}",
             "redis://127.0.0.1:6379/0?client_name=gw;password=***"),
            (f"unix:///run/redis.sock?db=0&client_name=gw?token={SECRET}&socket_timeout=5",
             "unix:///run/redis.sock?db=0&client_name=gw?token=***&socket_timeout=5")):
        code, out = check_dump(tmp_path, url)
        assert code == 0 and f'url = "{shown}"' in out, out
        assert SECRET not in out, out
    # ordinary options, ";" and "?" in their values and all, show as written
    url = "rediss://127.0.0.1:6379/0?db=1&client_name=a;b?c&ssl_cert_reqs=none"
    code, out = check_dump(tmp_path, url)
    assert code == 0 and f'url = "{url}"' in out, out


# -- 2. a key put over by hand, without a lease ---------------------------------------------

def etcdctl(etcd, *args):
    return subprocess.run(["etcdctl", "--endpoints", etcd.url, *args],
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True,
                          capture_output=True, timeout=30, text=True)


def test_a_key_put_again_by_hand_without_a_lease_is_taken_back_or_said_as_such(launcher,
                                                                              tmp_path):
    etcd, client, conf_path = register_conf(launcher, tmp_path)
    key = f"{PREFIX}/services/orders/i1"
    proc = register(conf_path, "http://127.0.0.1:8080", "--instance", "i1")
    launcher.started.append(proc)
    assert line_of(proc.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    value = client.get(key)
    etcdctl(etcd, "put", key, value.decode())           # the same value, no lease
    said = line_of(proc.stdout)
    assert said.startswith(f"{key} was put again without a lease"), said
    # 30 s: in a loaded CI run, registering again (a lease, a put) once took over 10 s
    said = line_of(proc.stdout, 30)
    assert said.startswith(f"registered {key} -> http://127.0.0.1:8080"), \
        (said, line_of(proc.stderr, 0.5))
    assert client.lease_of(key) != 0, "the key was left without a lease"
    # another value put by hand: said as such, not as another registration of this URL
    etcdctl(etcd, "put", key, '{"url": "http://10.0.0.9:9090", "weight": 1}')
    said = line_of(proc.stderr)
    assert "without a lease" in said and "http://10.0.0.9:9090" in said, said
    assert "of this URL" not in said, said
    etcdctl(etcd, "del", key)
    assert line_of(proc.stdout).startswith(f"registered {key} -> http://127.0.0.1:8080")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert client.get(key) is None, "the instance stayed registered after register stopped"
