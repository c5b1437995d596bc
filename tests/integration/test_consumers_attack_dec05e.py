"""Consumers, auth plugins and the chain's order, attacked through real gateways and
upstreams (the attack pass of 2026-12-05, helper h7, on 1b8dbb1). Each test failed on that
commit.

1. A consumer's own ``rate_limit`` keyed on anything but ``consumer`` (``ip``, ``route``, a
   header) counted in the route's bucket: the state key was the route's and the kind's, not
   the consumer's. A trial consumer limited to 2 requests per IP drained the route's
   bucket for that address to its own capacity, so a paying consumer behind the same
   address got 429s it never earned; and the trial consumer's "own" limit counted the
   paying one's requests.
2. A consumer's own ``split`` (a partner sent to the canary) was compiled but never linked to
   the upstreams it names: every request of that consumer was a 500 (KeyError in split's
   access phase) and a traceback in the log. It is refused now, naming the consumer and
   the plugin, as ``acl`` is.
3. split: a group only a rule on ``X-Consumer-ID`` (or ``X-Consumer-Groups``) leads to, a
   partner-only canary with no weight, was anyone's for the asking with ``X-AB-Group``: only
   claim rules gated the header, and the consumer's headers are as much the gateway's word
   as a verified claim (a client's copies never get in).
4. basic_auth: an unknown user was checked against a fixed bcrypt hash of cost 12, whatever
   the consumers' hashes cost. With hashes made elsewhere at another cost (htpasswd's and
   PHP's 10, or 4 here), a wrong password for a real user took a few milliseconds and one
   for a made-up user 250: which user names are consumers' was a stopwatch away, for all
   "an unknown user costs the same bcrypt check as a wrong password".
5. A consumer's own ``breaker`` kept its state under the route's key (or the upstream's):
   its thresholds judged everyone's breaker. A consumer given a touchy one (one failure in
   a minute opens it) made one request the upstream answered 500, and the route answered
   every other consumer 503 ``circuit_open`` for a minute.
6. The consumer headers of the gateways gwserver's consumers follow (Kong's and APISIX's:
   ``X-Consumer-Username``, ``X-Consumer-Custom-ID``, ``X-Credential-Identifier``,
   ``X-Anonymous-Consumer``, Kong's ``X-Authenticated-Userid``...) went from any client to
   the upstream, over HTTP/1.1 and HTTP/2, beside the X-Consumer-ID key_auth wrote: an
   upstream moved from behind Kong takes them on trust, and ``X-Consumer-Username: admin``
   was anyone's admin. They are dropped as read, like the oauth2-proxy ones (kept only
   from ``identity_proxies``).
7. etcd: a consumer refused because another one held its credential (the same key_hash,
   basic_auth user name or jwt key) was never tried again once that one let go of it.
   Renaming a consumer (put the new id with the old one's key, delete the old id) locked
   the partner out for good: its key was a 401 for everyone. Rotating a key onto a
   consumer while a stale one still held it kept the consumer's previous version serving:
   the key the put revoked went on working until the consumer was put again.
8. A consumer's ``plugins.rate_limit = false`` ("billing has no limit"), as a route switches
   a global plugin off, was taken without a word and did nothing: billing stayed under the
   route's limit. It is refused, naming the consumer and the plugin.
"""
import base64
import json
import subprocess
import time

import pytest

from gwserver.plugins.basic_auth import hash_password
from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_auth_edges import get
from .test_etcd import etcd_conf, put
from .test_open_items_dec05e import run_check

TRIAL_KEY, PAID_KEY = "ak_trial_0000000000000000001", "ak_paid_00000000000000000002"


# -- 1. a consumer's own limit counts in the route's bucket -----------------------------------

@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_a_consumers_own_limit_is_its_own_bucket_whatever_it_is_keyed_on(launcher, upstream,
                                                                         algorithm):
    per_ip = {"algorithm": algorithm, "rate": 100, "per": 3600, "burst": 100, "key": "ip"}
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/api/*rest"], upstream.url,
               plugins={"key_auth": {}, "rate_limit": per_ip})],
        consumers={
            "trial": {"credentials": {"key_auth": {"key_hash": hash_key(TRIAL_KEY)}},
                      "plugins": {"rate_limit": {**per_ip, "rate": 2, "burst": 2}}},
            "paid": {"credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}}}}))
    paid, trial = {"X-API-Key": PAID_KEY}, {"X-API-Key": TRIAL_KEY}
    # the paying consumer first: its requests are none of trial's limit
    assert [get(gw.port, "/api/echo", paid)[0] for _ in range(3)] == [200] * 3
    assert [get(gw.port, "/api/echo", trial)[0] for _ in range(3)] == [200, 200, 429]
    # trial spent its own limit, not the route's per-address one paid counts in
    assert [get(gw.port, "/api/echo", paid)[0] for _ in range(5)] == [200] * 5


# -- 2. a consumer's own split was never linked: a 500 on every one of its requests -----------

def checked(tmp_path, conf):
    """`gwserver check` of ``conf`` -> (exit code, what it said)."""
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    return run_check(path, timeout=60)


def test_a_consumers_split_is_refused_with_the_reason_not_a_500_per_request(tmp_path, launcher,
                                                                            upstream):
    """A consumer's split ("partner gets the canary") names upstreams, which only a route's
    plugins have resolved: compiled unlinked, each of the consumer's requests raised a
    KeyError in split's access phase (a 500 and a traceback per request)."""
    consumers = {"partner": {
        "credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}},
        "plugins": {"split": {"upstreams": [{"upstream": "canary", "weight": 1}]}}}}
    conf = gateway_conf([route("api", ["/api/*rest"], upstream.url,
                               plugins={"key_auth": {}})],
                        upstreams={"canary": {"targets": [{"url": upstream.url}]}},
                        consumers=consumers)
    code, said = checked(tmp_path, conf)
    assert code == 2 and "consumer partner: plugins.split" in said, said


# -- 3. X-AB-Group reaches a group that only the consumer's identity leads to ----------------

def test_a_group_only_a_consumers_identity_leads_to_is_not_anyones_by_x_ab_group(launcher):
    main, canary = launcher.upstream("main"), launcher.upstream("canary")
    split = {"upstreams": [{"upstream": "main", "weight": 1},
                           {"upstream": "canary", "weight": 0}],
             "rules": [{"header": {"X-Consumer-ID": "partner"}, "upstream": "canary"}]}
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/api/*rest"], main.url, plugins={"key_auth": {}, "split": split})],
        upstreams={"main": {"targets": [{"url": main.url}]},
                   "canary": {"targets": [{"url": canary.url}]}},
        consumers={
            "partner": {"credentials": {"key_auth": {"key_hash": hash_key(TRIAL_KEY)}}},
            "other": {"credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}}}}))

    def served_by(headers):
        status, body = get(gw.port, "/api/echo", headers)
        assert status == 200, body
        return json.loads(body)["server"]
    assert served_by({"X-API-Key": TRIAL_KEY}) == "canary"
    assert served_by({"X-API-Key": PAID_KEY}) == "main"
    assert served_by({"X-API-Key": PAID_KEY, "X-AB-Group": "canary"}) == "main"
    # the partner's own requests, told their group by a service down the chain, stay there
    assert served_by({"X-API-Key": TRIAL_KEY, "X-AB-Group": "canary"}) == "canary"
    assert served_by({"X-API-Key": TRIAL_KEY, "X-AB-Group": "main"}) == "main"


# -- 4. an unknown user name is told from a known one by the time its check takes -------------

def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_an_unknown_user_takes_as_long_as_a_wrong_password_at_the_consumers_cost(launcher,
                                                                                  upstream):
    gw = launcher.gateway(gateway_conf(
        [route("basic", ["/b/*rest"], upstream.url, plugins={"basic_auth": {
            "max_failures": 0, "max_failures_per_user": 0}})],
        consumers={"alice": {"credentials": {"basic_auth": {
            "username": "alice", "password_hash": hash_password("right-password", 4)}}}}))
    assert get(gw.port, "/b/echo", basic("alice", "right-password"))[0] == 200

    def took(user):
        start = time.monotonic()
        for i in range(3):
            assert get(gw.port, "/b/echo", basic(user, f"wrong-{i}"))[0] == 401
        return time.monotonic() - start
    took("alice"), took("nobody")       # warm: connections, imports
    known, unknown = took("alice"), took("nobody")
    # cost 4 is ~1 ms a check; the fixed cost-12 hash was ~250 ms
    assert unknown < known + 0.15, (known, unknown)


# -- 5. a consumer's breaker opens the route's for everyone ------------------------------------

def test_a_consumers_own_breaker_opens_for_its_requests_only(launcher, upstream):
    touchy = {"min_requests": 1, "error_rate": 0.5, "window": 60, "open_for": 60,
              "max_open_for": 60}
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/api/*rest"], upstream.url, strip_prefix="/api",
               plugins={"key_auth": {}, "breaker": {"min_requests": 20}})],
        consumers={
            "touchy": {"credentials": {"key_auth": {"key_hash": hash_key(TRIAL_KEY)}},
                       "plugins": {"breaker": touchy}},
            "paid": {"credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}}}}))
    assert get(gw.port, "/api/status/500", {"X-API-Key": TRIAL_KEY})[0] == 500
    status, body = get(gw.port, "/api/echo", {"X-API-Key": TRIAL_KEY})
    assert status == 503 and b"circuit_open" in body          # its own breaker: open
    assert [get(gw.port, "/api/echo", {"X-API-Key": PAID_KEY})[0]
            for _ in range(3)] == [200] * 3


# -- 6. Kong's and APISIX's consumer headers, forged by the client -----------------------------

FORGED = {"X-Consumer-Username": "admin", "X-Consumer-Custom-ID": "admin-1",
          "X-Credential-Identifier": "admin-key", "X-Credential-Username": "admin",
          "X-Anonymous-Consumer": "false", "X-Authenticated-Userid": "admin",
          "X-Authenticated-Scope": "admin", "X-Authenticated-Groups": "admins"}


def curl_h2(url, headers):
    args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                          *args, url], capture_output=True, timeout=20)
    return json.loads(out.stdout)


def test_other_gateways_consumer_headers_from_a_client_never_reach_the_upstream(launcher,
                                                                              upstream):
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/api/*rest"], upstream.url, plugins={"key_auth": {}})],
        consumers={"paid": {"credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}}}},
        http2={"h2c": True}))
    headers = {"X-API-Key": PAID_KEY, **FORGED}
    status, body = get(gw.port, "/api/echo", headers)
    assert status == 200
    for echo in (json.loads(body), curl_h2(f"http://127.0.0.1:{gw.port}/api/echo", headers)):
        seen = {name.lower(): value for name, value in echo["headers"]}
        assert seen["x-consumer-id"] == "paid"
        assert not {name.lower() for name in FORGED} & set(seen), seen


# -- 7. a consumer refused for a credential another held is never tried again ----------------

def test_a_consumer_refused_for_a_credential_another_held_is_served_once_it_is_free(
        launcher, upstream, tmp_path):
    etcd = launcher.etcd()
    client = etcd.client()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], [route(
        "api", ["/api/*rest"], upstream.url, plugins={"key_auth": {}})]))

    def who(key):
        """The consumer the upstream was told of, or the gateway's refusal's status."""
        status, body = get(gw.port, "/api/echo", {"X-API-Key": key})
        if status != 200:
            return status
        return {k.lower(): v for k, v in json.loads(body)["headers"]}["x-consumer-id"]
    old_key, new_key = "ak_ops_old_0000000000000001", "ak_ops_new_0000000000000002"
    billing_hash, new_hash = hash_key(PAID_KEY), hash_key(new_key)
    put(client, "consumers", "billing", {"credentials": {"key_auth": {"key_hash": billing_hash}}})
    put(client, "consumers", "ops", {"credentials": {"key_auth": {"key_hash": hash_key(old_key)}}})
    put(client, "consumers", "stale", {"credentials": {"key_auth": {"key_hash": new_hash}}})
    wait_until(lambda: who(PAID_KEY) == "billing" and who(old_key) == "ops", timeout=10)
    # a rename: the new id takes the key, then the old id goes
    put(client, "consumers", "billing-v2",
        {"credentials": {"key_auth": {"key_hash": billing_hash}}})
    # a rotation: ops gets the new key while a stale consumer still holds it, then it goes
    put(client, "consumers", "ops", {"credentials": {"key_auth": {"key_hash": new_hash}}})
    time.sleep(0.5)
    client.delete("/gw/consumers/billing")
    client.delete("/gw/consumers/stale")
    wait_until(lambda: who(PAID_KEY) == "billing-v2", timeout=10)
    wait_until(lambda: who(new_key) == "ops" and who(old_key) == 401, timeout=10)


# -- 8. a consumer's `plugin = false` is taken and does nothing --------------------------------

def test_a_consumer_switching_a_routes_plugin_off_is_refused_not_ignored(tmp_path, launcher,
                                                                         upstream):
    consumers = {"billing": {"credentials": {"key_auth": {"key_hash": hash_key(PAID_KEY)}},
                             "plugins": {"rate_limit": False}}}
    limited = {"rate": 1, "per": 3600, "key": "consumer"}
    conf = gateway_conf([route("api", ["/api/*rest"], upstream.url,
                               plugins={"key_auth": {}, "rate_limit": limited})],
                        consumers=consumers)
    code, said = checked(tmp_path, conf)
    assert code == 2, said
    assert "consumer billing: plugins.rate_limit: a consumer cannot switch off" in said
