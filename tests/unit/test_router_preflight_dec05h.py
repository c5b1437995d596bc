"""A preflight's announced request may take more than one route (the attack pass of
2026-12-05, helper h4): the routes it may take, in match order, up to the first one the
preflight's own headers choose (tests/integration/test_authz_attack_dec05h.py, 2)."""
from .helpers import router_for

ROUTES = [
    {"id": "internal", "paths": ["/api/*rest"], "headers": {"X-Tenant": "internal"}},
    {"id": "v2", "paths": ["/api/orders/:id"], "headers": {"Accept-Version": "v2"},
     "methods": ["GET"]},
    {"id": "public", "paths": ["/api/*rest"]},
    {"id": "other-host", "paths": ["/api/*rest"], "hosts": ["b.example"],
     "headers": {"X-Tenant": "b"}},
]


def may_take(announced, method="DELETE", host="a.example", path="/api/orders/1", headers=None):
    router = router_for([dict(r) for r in ROUTES])
    return [r.id for r in router._may_take(path[1:].split("/"), method, host, headers or {},
                                           None, frozenset(announced))]


def test_the_routes_an_announced_header_may_lead_to_come_before_the_one_chosen_now():
    assert may_take({b"x-tenant"}) == ["internal", "public"]
    assert may_take({b"accept-version", b"x-tenant"}, "GET") == ["v2", "internal", "public"]
    assert may_take({b"accept-version"}, "DELETE") == ["public"]       # v2 takes GET alone
    assert may_take({b"content-type"}) == ["public"]                    # nothing to lead
    # the preflight's own header chooses: nothing after it is looked at
    assert may_take({b"x-tenant"}, headers={b"x-tenant": b"internal"}) == ["internal"]
    # a route for another host is one on that host alone (hosts rank it first there)
    assert may_take({b"x-tenant"}, host="b.example") == ["other-host", "internal", "public"]
