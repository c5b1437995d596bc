"""The ``upgraded`` hook: run when the upstream switched protocols, before the tunnel, so a
breaker judges a websocket by its handshake (the attack pass of 2026-12-05, helper h1;
tests/integration/test_tunnel_attack_dec05c.py runs a half-open breaker for real)."""
import types

import pytest

from gwserver.core.chain import Chain, check_plugin
from gwserver.core.schema import Schema
from gwserver.plugins import breaker


def test_a_plugin_with_upgraded_runs_it_and_one_that_raises_is_logged(caplog):
    seen = []
    good = types.SimpleNamespace(NAME="good", PRIORITY=2, SCHEMA=Schema(),
                                 finish=lambda conf, ctx, status: None,
                                 upgraded=lambda conf, ctx: seen.append((conf, ctx)))
    bad = types.SimpleNamespace(NAME="bad", PRIORITY=1, SCHEMA=Schema(),
                                access=lambda conf, ctx: None, upgraded=lambda conf, ctx: 1 / 0)
    plain = types.SimpleNamespace(NAME="plain", PRIORITY=3, SCHEMA=Schema(),
                                  access=lambda conf, ctx: None)
    for plugin in (good, bad, plain):
        check_plugin(plugin)
    chain = Chain([(good, {"g": 1}), (bad, {}), (plain, {})])
    assert [p.NAME for p, _ in chain.upgraded_steps] == ["good", "bad"]
    ctx = types.SimpleNamespace(chain=None, route=types.SimpleNamespace(id="ws"))
    chain.run_upgraded(ctx)
    assert seen == [({"g": 1}, ctx)]
    assert "plugin bad failed in upgraded" in caplog.text


def test_upgraded_must_take_conf_and_ctx():
    wrong = types.SimpleNamespace(NAME="wrong", PRIORITY=1, SCHEMA=Schema(),
                                  access=lambda conf, ctx: None,
                                  upgraded=lambda conf, ctx, status: None)
    with pytest.raises(TypeError, match="upgraded must take 2 arguments"):
        check_plugin(wrong)


def test_the_breaker_records_a_handshake_at_once_and_not_again_at_finish():
    recorded = []
    store = types.SimpleNamespace(
        breaker_record=lambda key, conf, epoch, ok, probe=False: recorded.append((key, epoch, ok)))
    ctx = types.SimpleNamespace(vars={"breaker": (store, "route:ws", 7)}, ended_by=None,
                                sent=True, upstream_seconds=0.01, upstream_erred=lambda: False,
                                upstream_failed=lambda status, statuses: status in statuses)
    ctx.var = ctx.vars.get
    conf = breaker.prepare(breaker.SCHEMA.validate({}))
    breaker.upgraded(conf, ctx)
    assert recorded == [("route:ws", 7, True)]
    breaker.finish(conf, ctx, 101)          # when the tunnel closes: nothing more
    assert recorded == [("route:ws", 7, True)]
