"""Review of two fixes (Dec 11, r1: 17361bd on who the client is, a23c9ce on what an operator
meets), for regressions and for paths the fixes did not cover. Each test failed before its
fix:

1. A limit keyed on ``header:X-Forwarded-For`` counts the client the gateway finds in it
   now, but each IPv6 address alone: ``key = "ip"`` counts such a client by its /64
   (``ipv6_prefix``), and a client that holds one had 2^64 fresh buckets, directly (where
   the dropped header used to put it in the one shared bucket) or behind a trusted proxy.
2. The same limit keyed on ``header:Forwarded`` (with ``real_ip_header = "Forwarded"``)
   still counted the list as sent: behind the trusted proxy each element a client prepended
   was a fresh bucket, and from anyone else the dropped header put every client in one.
3. ``trusted_proxies`` holding ``0.0.0.0/0`` beside ``proxy_protocol`` warned of the PROXY
   listeners alone: a plain listener beside them, where any client names its own address in
   X-Forwarded-For, went unmentioned (the new warning was the ``elif`` of the old one).
4. ``gwserver rollouts`` with a Redis state key of another type (another writer's hash)
   said "the rollout state in Redis is out of reach" and exited 2: the store answered, and
   docs/rollouts.md has such a state listed as DAMAGED and refused, exit 1.
5. ``gwserver rollouts`` with its Redis Cluster out of reach ended in a traceback and exit 1
   (redis-py's RedisClusterException is no RedisError): the fix covered plain Redis alone.

Every test runs real processes on 127.0.0.1: a gateway and an upstream, or redis-server and
the command-line tool; a client and a trusted proxy are told apart by their source address.
"""
import socket
import subprocess
import sys

from ..conftest import ROOT, check_conf, free_port, gateway_conf, route, to_toml
from .test_attack_dec11b import STRANGER, TRUSTED, exchange


def limited_gateway(launcher, upstream, key, **server):
    return launcher.gateway(gateway_conf(
        [route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": key}})],
        server={"trusted_proxies": [f"{TRUSTED}/32"], **server}))


def ask(gw, header=b"", source=TRUSTED):
    return exchange(gw.port, b"GET /lim HTTP/1.1\r\nHost: gw\r\n%s\r\n" % header, source)[0]


def test_a_limit_on_x_forwarded_for_counts_an_ipv6_client_by_its_network(launcher, upstream):
    gw = limited_gateway(launcher, upstream, "header:X-Forwarded-For")
    assert ask(gw, b"X-Forwarded-For: 2001:db8:1:2::1\r\n") == 200
    # another address of the same /64, as key = "ip" counts it
    assert ask(gw, b"X-Forwarded-For: 2001:db8:1:2::2\r\n") == 429          # was 200
    assert ask(gw, b"X-Forwarded-For: 2001:db8:1:3::1\r\n") == 200          # another /64


def test_a_limit_on_forwarded_counts_the_client_the_gateway_names_there(launcher, upstream):
    gw = limited_gateway(launcher, upstream, "header:Forwarded", real_ip_header="Forwarded")
    assert ask(gw, b"Forwarded: for=203.0.113.9\r\n") == 200
    # the client prepends an element of its own: the same client to the walk
    assert ask(gw, b"Forwarded: for=10.1.1.1, for=203.0.113.9\r\n") == 429  # was 200
    assert ask(gw, b"Forwarded: for=203.0.113.10\r\n") == 200               # another client
    # anyone else: its Forwarded is dropped, it is counted by its own address
    assert ask(gw, b"Forwarded: for=10.4.4.4\r\n", STRANGER) == 200
    assert ask(gw, source="127.0.0.3") == 200                               # was 429


def test_a_plain_listener_beside_proxy_protocol_ones_is_warned_of_too(launcher, upstream,
                                                                       tmp_path):
    proxied = f"127.0.0.1:{free_port()}"
    conf = gateway_conf([route("echo", ["/echo"], upstream.url)],
                        server={"trusted_proxies": ["0.0.0.0/0"], "proxy_protocol": [proxied]})
    gw = launcher.gateway(conf, extra_binds=[proxied])
    # what the warning is about: on the plain listener any client names its own address
    assert exchange(gw.port, b"GET /echo HTTP/1.1\r\nHost: gw\r\n"
                             b"X-Forwarded-For: 10.6.6.6\r\n\r\n", STRANGER)[0] == 200
    plain = "any client may name its own address in X-Forwarded-For"
    assert plain in gw.log(), gw.log()[-1500:]                  # the master said nothing
    conf["server"]["bind"] = [f"127.0.0.1:{free_port()}", proxied]
    code, output = check_conf(tmp_path, conf)
    assert code == 0 and plain in output and "proxy_protocol listener" in output, output
    # every listener a PROXY one: no client names itself in X-Forwarded-For there
    conf["server"]["bind"] = [proxied]
    code, output = check_conf(tmp_path, conf)
    assert code == 0 and plain not in output and "proxy_protocol listener" in output, output


def rollouts_cli(conf_path, *args):
    done = subprocess.run([sys.executable, "-m", "gwserver", "rollouts", *args,
                           "-c", str(conf_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=30)
    return done.returncode, done.stdout + done.stderr


def test_rollouts_cli_takes_a_redis_value_of_another_type_for_a_damaged_state(launcher,
                                                                               tmp_path):
    redis = launcher.redis()
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(b"HSET gw:ro:state:shop field value\r\n")     # another writer's hash
        assert sock.recv(100).startswith(b":")
    conf = gateway_conf([], server={"bind": ["127.0.0.1:1"], "state_dir": str(tmp_path)},
                        redis={"url": redis.url})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    for args in (["list"], ["status", "shop"], ["abort", "shop"]):
        code, out = rollouts_cli(path, *args)
        assert code == 1 and "damaged" in out and "out of reach" not in out, (args, out)
        assert "Traceback" not in out, (args, out)
    assert "DAMAGED" in rollouts_cli(path, "list")[1]


def test_rollouts_cli_says_why_when_its_redis_cluster_is_out_of_reach(tmp_path):
    conf = gateway_conf([], server={"bind": ["127.0.0.1:1"], "state_dir": str(tmp_path)},
                        redis={"url": f"redis+cluster://127.0.0.1:{free_port()}"})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    for args in (["list"], ["status", "shop"], ["abort", "shop"]):
        code, out = rollouts_cli(path, *args)
        # was a traceback (RedisClusterUnreachableError is no RedisError) and exit 1
        assert code == 2 and "Traceback" not in out and out.startswith(
            "error: the rollout state in Redis is out of reach"), (args, out)
