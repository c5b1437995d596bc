"""Docs against code, second pass of Dec 09 (u): the passages changed since 526d9c8.

1. docs/operations.md, "Host state directory": "per-host rate limits and breakers
   (`states/`, one small file per breaker and adaptive limit, ...)". The per-host rate
   limits are not in `states/`: they are the fixed table `limits` (65,536 slots, 2.5 MiB,
   its hash key in `limits.key`), and limit_conn's leases are under `conns/`. An operator
   sizing, backing up or cleaning `states/` by the doc looked for the rate limits there.
   Held here to a real gateway's state_dir.
"""
import re

from ..conftest import ROOT, gateway_conf, route, wait_until


def host_state_paragraph():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Host state directory", 1)[1]
    return " ".join(section.split("\n\n", 2)[1].split())


def test_operations_md_says_where_the_per_host_rate_limits_are_kept(launcher, upstream,
                                                                    tmp_path):
    state = tmp_path / "state"
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "route"}}),
        route("brk", ["/brk"], upstream.url, plugins={"breaker": {"min_requests": 3}})],
        server={"state_dir": str(state)}))
    assert [gw.request("GET", "/lim")[0].status for _ in range(2)] == [200, 429]
    # the per-host limit decided (429) and left nothing in states/: it is in `limits`
    assert list((state / "states").iterdir()) == []
    assert (state / "limits").stat().st_size == 65536 * 40
    assert (state / "limits.key").is_file()
    assert gw.request("GET", "/brk")[0].status == 200
    assert wait_until(lambda: len(list((state / "states").iterdir())) == 1, timeout=5)

    said = host_state_paragraph()
    # before: "per-host rate limits and breakers (`states/`, one small file per breaker ..."
    assert not re.search(r"rate limits and breakers \(`states/`", said), said
    assert re.search(r"rate limits \(`limits`", said), said
    assert re.search(r"`states/`: breakers and adaptive limits", said), said
    assert "`conns/`" in said, said
