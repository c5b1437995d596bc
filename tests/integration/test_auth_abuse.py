"""key_auth and basic_auth against clients that guess, through real gateways (issue 14):
wrong passwords past a budget are refused without bcrypt, per client address and per user
name, across the workers of a host; unknown API keys are remembered until the consumer table
changes and budgeted per address; clients whose credentials are good keep working."""
import base64
import http.client
import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from gwserver.plugins.basic_auth import hash_password
from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_etcd import etcd_conf
from .test_ratelimit import connections_to_workers

PASSWORD = "correct horse battery staple"
KEY = "ak_live_9c2e7f1a4b6d8e03"
WINDOW = 60.0           # long enough that nothing slides out during a test: exact counts


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def gw(module_launcher):
    up = module_launcher.upstream()
    budget = {"max_failures": 3, "max_failures_per_user": 5, "failure_window": WINDOW}
    return module_launcher.gateway(gateway_conf([
        route("basic", ["/basic/*rest"], up.url, plugins={"basic_auth": budget}),
        route("nocache", ["/nocache/*rest"], up.url,
              plugins={"basic_auth": {**budget, "cache_seconds": 0}}),
        route("key", ["/key/*rest"], up.url, plugins={"key_auth": {
            "max_failures": 20, "failure_window": WINDOW, "negative_cache_size": 50}}),
        route("free", ["/free"], up.url),
    ], workers=2, server={"trusted_proxies": ["127.0.0.1/32"]}, consumers={
        # cost 12: a check is ~0.3 s of a worker's CPU here, so one that ran is measurable
        "alice": {"credentials": {"basic_auth": {"username": "alice",
                                                 "password_hash": hash_password(PASSWORD, 12)}}},
        "bob": {"credentials": {"basic_auth": {"username": "bob",
                                               "password_hash": hash_password(PASSWORD, 4)}},
                "groups": []},
        "carol": {"credentials": {"basic_auth": {"username": "carol",
                                                 "password_hash": hash_password(PASSWORD, 4)},
                                  "key_auth": {"key_hash": hash_key(KEY)}}},
        # the budgets are per host for the module: each test guesses at a name of its own
        **{name: {"credentials": {"basic_auth": {"username": name, "password_hash":
                                                 hash_password(PASSWORD, 4)}}}
           for name in ("dave", "erin")},
    }))


def ask(gw, path, headers, conn=None):
    """One request (on ``conn`` if given, else a new connection) -> (status, headers, body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        if own:
            conn.close()


def from_ip(ip, **headers):
    return {"X-Forwarded-For": ip, **headers}       # the gateway trusts 127.0.0.1 to say


def cpu_seconds(gw):
    """User + system CPU the gateway's workers used so far."""
    total = 0
    for pid in gw.worker_pids():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def assert_refused(status, headers, body):
    assert status == 429, body
    assert 1 <= int(headers["Retry-After"]) <= 2 * WINDOW + 1
    assert json.loads(body)["error"] == "too_many_failures"


# -- basic_auth ------------------------------------------------------------------------------

def test_wrong_passwords_past_the_address_budget_get_429_and_cost_no_bcrypt(gw):
    wrong = from_ip("10.0.0.1", Authorization=basic("alice", "guess"))
    first, second = connections_to_workers(gw, 2)      # guesses alternate between workers
    assert [ask(gw, "/basic/x", wrong, conn)[0] for conn in (first, second, first)] == \
        [401] * 3
    assert [ask(gw, "/basic/x", wrong, conn)[0] for conn in (second, first)] == [429] * 2
    first.close()
    second.close()
    used = cpu_seconds(gw)
    started = time.monotonic()
    for _ in range(20):
        assert_refused(*ask(gw, "/basic/x", wrong))
    # 20 cost-12 checks would be ~6 s of CPU and wall time; refusals are a look-up each
    assert cpu_seconds(gw) - used < 1.5
    assert time.monotonic() - started < 3
    # the right password from that address is refused too (no check runs at all) ...
    assert_refused(*ask(gw, "/basic/x", from_ip("10.0.0.1",
                                                Authorization=basic("alice", PASSWORD))))
    # ... while other addresses are checked as before
    assert ask(gw, "/basic/x", from_ip("10.0.0.2", Authorization=basic("alice", PASSWORD)))[0] \
        == 200


@pytest.mark.parametrize("user", ["bob", "nobody-at-all"])     # known and unknown names
def test_guesses_from_many_addresses_are_bounded_per_user_name(gw, user):
    net = "10.1.1" if user == "bob" else "10.1.2"
    wrong = [ask(gw, "/basic/x", from_ip(f"{net}.{i}", Authorization=basic(user, "guess")))
             for i in range(1, 9)]
    assert [status for status, _, _ in wrong] == [401] * 5 + [429] * 3
    assert_refused(*wrong[-1])
    # another name from a fresh address is still checked
    assert ask(gw, "/basic/x", from_ip(f"{net}.100", Authorization=basic("carol",
                                                                         PASSWORD)))[0] == 200


def test_good_checks_do_not_spend_the_budget(gw):
    good = from_ip("10.2.0.1", Authorization=basic("dave", PASSWORD))
    # no cache on this route: every request runs bcrypt, and each gives its unit back
    assert [ask(gw, "/nocache/x", good)[0] for _ in range(10)] == [200] * 10
    wrong = from_ip("10.2.0.1", Authorization=basic("dave", "guess"))
    assert [ask(gw, "/nocache/x", wrong)[0] for _ in range(4)] == [401] * 3 + [429]


def test_a_client_whose_good_check_is_cached_keeps_working_while_its_address_is_refused(gw):
    good = from_ip("10.3.0.1", Authorization=basic("erin", PASSWORD))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)  # one worker's
    assert ask(gw, "/basic/x", good, conn)[0] == 200          # checked once, remembered
    wrong = from_ip("10.3.0.1", Authorization=basic("erin", "guess"))
    statuses = [ask(gw, "/basic/x", wrong)[0] for _ in range(5)]
    assert statuses == [401] * 3 + [429] * 2
    assert [ask(gw, "/basic/x", good, conn)[0] for _ in range(3)] == [200] * 3
    conn.close()


# -- key_auth --------------------------------------------------------------------------------

def test_one_unknown_key_repeated_is_remembered_and_random_keys_are_budgeted(gw):
    again = from_ip("10.4.0.1", **{"X-API-Key": "ak_revoked_long_ago"})
    # 40 > max_failures: only the first try per worker is looked up, the rest are remembered
    assert [ask(gw, "/key/x", again)[0] for _ in range(40)] == [401] * 40
    codes = [ask(gw, "/key/x", from_ip("10.4.0.1", **{"X-API-Key": secrets.token_hex(16)}))
             for _ in range(30)]
    statuses = [status for status, _, _ in codes]
    looked_up = statuses.count(401)
    assert 18 <= looked_up <= 19 and statuses == [401] * looked_up + [429] * (30 - looked_up)
    assert_refused(*codes[-1])
    # the same random keys from another address are looked up as before (per-address budget)
    assert ask(gw, "/key/x", from_ip("10.4.0.2", **{"X-API-Key": KEY}))[0] == 200


def test_a_key_found_good_keeps_working_from_an_address_out_of_budget(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    good = from_ip("10.5.0.1", **{"X-API-Key": KEY})
    assert ask(gw, "/key/x", good, conn)[0] == 200
    for _ in range(25):
        ask(gw, "/key/x", from_ip("10.5.0.1", **{"X-API-Key": secrets.token_hex(16)}))
    assert ask(gw, "/key/x", from_ip("10.5.0.1", **{"X-API-Key": "ak_x"}))[0] == 429
    assert [ask(gw, "/key/x", good, conn)[0] for _ in range(3)] == [200] * 3
    conn.close()


def cli(conf_path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", args[0], "-c", str(conf_path),
                           *args[1:]], capture_output=True, text=True, input=stdin, timeout=60)


def test_a_key_remembered_as_unknown_works_as_soon_as_etcd_adds_it(launcher, upstream,
                                                                   tmp_path):
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url], [route("key", ["/key/*rest"], upstream.url, plugins={
        "key_auth": {"negative_cache_seconds": 3600}})], workers=1)
    gw = launcher.gateway(conf)
    conf_path = tmp_path / "cli.toml"
    conf_path.write_text(to_toml({k: v for k, v in conf.items() if k != "routes"}))
    key = {"X-API-Key": "ak_new_partner_3f9d"}
    # one worker (which of two answers is the kernel's choice): it has looked the key up
    # and remembers it as unknown, for an hour unless ...
    assert [ask(gw, "/key/x", key)[0] for _ in range(20)] == [401] * 20
    put = cli(conf_path, "consumers", "put", "-", stdin=json.dumps({
        "id": "dana", "credentials": {"key_auth": {"key": key["X-API-Key"]}}}))
    assert put.returncode == 0, put.stderr
    # ... the consumer table changes
    wait_until(lambda: all(ask(gw, "/key/x", key)[0] == 200 for _ in range(6)), timeout=10)
    assert cli(conf_path, "consumers", "delete", "dana").returncode == 0
    wait_until(lambda: all(ask(gw, "/key/x", key)[0] == 401 for _ in range(6)), timeout=10)


def test_an_untrusted_peer_cannot_spread_its_guesses_over_forged_addresses(launcher,
                                                                           upstream):
    """No trusted_proxies: X-Forwarded-For, X-Real-IP and Forwarded are the client's own
    words, so every guess counts against the peer's address."""
    gw = launcher.gateway(gateway_conf([
        route("basic", ["/basic/*rest"], upstream.url, plugins={"basic_auth": {
            "max_failures": 3, "max_failures_per_user": 0, "failure_window": WINDOW}}),
        route("key", ["/key/*rest"], upstream.url, plugins={"key_auth": {
            "max_failures": 3, "failure_window": WINDOW}})],
        consumers={"frank": {"credentials": {"basic_auth": {
            "username": "frank", "password_hash": hash_password(PASSWORD, 4)}}}}))
    forged = [{"X-Forwarded-For": f"192.0.2.{i}", "X-Real-IP": f"198.51.100.{i}",
               "Forwarded": f"for=203.0.113.{i}"} for i in range(6)]
    assert [ask(gw, "/basic/x", {**h, "Authorization": basic("frank", f"guess{i}")})[0]
            for i, h in enumerate(forged)] == [401] * 3 + [429] * 3
    assert [ask(gw, "/key/x", {**h, "X-API-Key": secrets.token_hex(16)})[0]
            for h in forged] == [401] * 3 + [429] * 3
