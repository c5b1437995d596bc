"""Targets as the health checker, the proxy and service discovery read them (the attack pass
of 2026-12-05, helper h3; tests/integration/test_health_attack_dec05e.py has them through
real processes). Each test failed on 5f14d21."""
import json

import pytest

from gwserver.core.routes import TARGET, make_target
from gwserver.core.schema import ConfigError, Invalid
from gwserver.core.table import LiveTable
from gwserver.plugins import load_registry
from gwserver.settings import SERVER, UPSTREAM_DEFAULTS


def target(url):
    return make_target(TARGET.validate({"url": url}, "t"))


@pytest.mark.parametrize("url, authority", [
    ("http://[::1]:8080", "[::1]:8080"), ("http://[::1]", "[::1]"),
    ("https://[2001:db8::7]:443", "[2001:db8::7]")])
def test_an_ipv6_target_is_named_in_brackets(url, authority):
    assert target(url).authority == authority


@pytest.mark.parametrize("url", ["http://10.0.0.7:0", "http://[::1]:0", "https://h:00"])
def test_a_target_at_port_0_is_refused(url):
    with pytest.raises((Invalid, ConfigError), match="port 0"):
        target(url)


def test_instances_that_spell_one_server_otherwise_are_one_target():
    t = LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry())
    assert t.put_upstream("orders", json.dumps({"service": "orders"}), 1)
    t.apply_instances([("orders", "a-1", json.dumps({"url": "http://10.0.0.7:8080"}), 2),
                       ("orders", "a-2", json.dumps({"url": "http://10.0.0.7:8080/"}), 3),
                       ("orders", "a-3", json.dumps({"url": "HTTP://10.0.0.7:08080"}), 4),
                       ("orders", "b-1", json.dumps({"url": "http://10.0.0.8:8080"}), 5)])
    assert "upstreams/orders" not in t.rejected, t.rejected
    assert [x.key for x in t.upstreams["orders"].targets] == [
        ("http", "10.0.0.7", 8080), ("http", "10.0.0.8", 8080)]
    t.apply_instances([("orders", "a-1", None, 6)])
    assert len(t.upstreams["orders"].targets) == 2


def test_an_instance_that_comes_keeps_the_other_targets_as_they_were_parsed():
    """Parsed again at every change, the 10,000 targets of a large service stalled every
    worker at each instance that came or went."""
    t = LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry())
    assert t.put_upstream("orders", json.dumps({"service": "orders"}), 1)
    t.apply_instances([("orders", f"i{i}", json.dumps({"url": f"http://10.0.0.{i}:80"}), 2)
                       for i in range(1, 50)])
    before = t.upstreams["orders"].targets
    t.apply_instances([("orders", "new", json.dumps({"url": "http://10.0.1.1:80"}), 3)])
    after = t.upstreams["orders"].targets
    assert len(after) == 50 and all(any(x is y for y in after) for x in before)


@pytest.mark.parametrize("url", ["http://::1:8080", "http://2001:db8::7", "https://fe80::1:443"])
def test_an_ipv6_address_without_brackets_is_refused_for_what_it_is(url):
    with pytest.raises((Invalid, ConfigError), match="IPv6 address without brackets"):
        target(url)
