"""A split key or a consistent-hash key on X-Forwarded-For (found 2026-12-07, an open item).

Limits keyed on ``header:X-Forwarded-For`` count the client the gateway finds in it (17361bd),
but ``split`` and a ``consistent_hash`` upstream read the list as sent: behind a trusted
proxy, whose list's left part is the client's own words, a client that prepended a fresh
address to each request picked its group (the canary or not) and its target, whatever
address it came from. Both take the client the gateway finds now, as the docs say of
``key = "ip"``. (Real gateway, real upstreams, on 127.0.0.1.)"""
import json
import random

from ..conftest import gateway_conf

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


def served_by(gw, prepended):
    resp, body = gw.request("GET", "/shop/echo",
                            headers={"X-Forwarded-For": f"{prepended}, 198.51.100.7"})
    assert resp.status == 200, body
    return json.loads(body)["server"]


def forged(seed):
    draw = random.Random(seed)
    return [f"10.{draw.randrange(256)}.{draw.randrange(256)}.{draw.randrange(1, 255)}"
            for _ in range(40)]


def test_a_client_cannot_pick_its_split_group_by_prepending_addresses(launcher):
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    split = {"upstreams": [{"upstream": "v1", "weight": 50},
                           {"upstream": "v2", "weight": 50, "group": "canary"}],
             "key": "header:X-Forwarded-For"}
    gw = launcher.gateway(gateway_conf(
        [{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop", "upstream": "v1",
          "plugins": {"split": split}}], server=TRUSTED,
        upstreams={"v1": {"targets": [{"url": v1.url}]},
                   "v2": {"targets": [{"url": v2.url}]}}))
    # before: both groups, half each (each prepended address a fresh key)
    assert len({served_by(gw, address) for address in forged(1)}) == 1


def test_a_client_cannot_pick_its_hash_target_by_prepending_addresses(launcher):
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(gateway_conf(
        [{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop", "upstream": "both"}],
        server=TRUSTED,
        upstreams={"both": {"balance": "consistent_hash", "hash_key": "header:X-Forwarded-For",
                            "targets": [{"url": v1.url}, {"url": v2.url}]}}))
    # before: both targets (each prepended address a fresh point on the ring)
    assert len({served_by(gw, address) for address in forged(2)}) == 1
    # and other clients still spread over both
    seen = set()
    for address in forged(3):
        resp, body = gw.request("GET", "/shop/echo", headers={"X-Forwarded-For": address})
        seen.add(json.loads(body)["server"])
    assert seen == {"v1", "v2"}
