"""Consumers' pure parts, from the attack pass of 2026-12-05 (helper h7; the integration
tests are tests/integration/test_consumers_attack_dec05e.py): a consumer refused for a
credential another held is tried again, in either order of the changes; a consumer's own
stateful plugins keep their state apart from the route's."""
import json

from gwserver.core.consumers import compile_consumer
from gwserver.core.table import LiveTable
from gwserver.plugins import load_registry
from gwserver.plugins.key_auth import hash_key
from gwserver.settings import SERVER, UPSTREAM_DEFAULTS

HASH = hash_key("ak_the_one_key_000000000000001")


def table():
    return LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry())


def raw(key_hash):
    return json.dumps({"credentials": {"key_auth": {"key_hash": key_hash}}}).encode()


def test_a_rename_serves_the_new_id_when_its_put_comes_before_the_old_ids_delete():
    """As a worker applies a delta (puts before deletes), or an operator makes the change."""
    t = table()
    assert t.put_consumer("billing", raw(HASH), 1)
    assert t.put_consumer("billing-v2", raw(HASH), 2) is False
    t.delete_consumer("billing")
    assert t.consumers.find("key_auth", HASH).id == "billing-v2"
    assert "consumers/billing-v2" not in t.rejected
    assert set(t.consumer_specs) == {"billing-v2"}


def test_a_key_freed_by_another_consumers_change_reaches_the_one_waiting_for_it():
    t = table()
    old = hash_key("ak_ops_old_000000000000000001")
    assert t.put_consumer("ops", raw(old), 1) and t.put_consumer("stale", raw(HASH), 2)
    assert t.put_consumer("ops", raw(HASH), 3) is False       # the previous one serves
    assert t.consumers.find("key_auth", old).id == "ops"
    assert t.put_consumer("stale", raw(hash_key("ak_stale_new_0000000000000001")), 4)
    assert t.consumers.find("key_auth", HASH).id == "ops"
    assert t.consumers.find("key_auth", old) is None          # revoked at last


def test_a_consumers_own_limits_and_breaker_are_keyed_as_its_own():
    registry = load_registry()
    per_ip = {"rate": 2, "key": "ip"}
    consumer = compile_consumer("trial", {"plugins": {
        "rate_limit": per_ip, "limit_conn": {"limit": 1, "key": "route"},
        "breaker": {}}}, registry)
    confs = {plugin.NAME: conf for plugin, conf in consumer.chain.steps}
    assert confs["rate_limit"]["own"] == "consumer=trial=" == confs["limit_conn"]["own"]
    assert confs["breaker"]["own"] == ":consumer=trial"
    by_consumer = compile_consumer("trial", {"plugins": {
        "rate_limit": {"rate": 2, "key": "consumer"}}}, registry)
    # keyed on the consumer, the bucket was its own already: the key stays as it was
    assert by_consumer.chain.steps[0][1]["own"] == ""
