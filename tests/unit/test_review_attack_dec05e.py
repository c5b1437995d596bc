"""The review pass of 2026-12-05 (helper h5), in pure code: a route header condition tells
copies of a field from a list a client writes in one field (core/router.py, refuse_listed;
tests/integration/test_review_attack_dec05e.py has them through real processes)."""
import pytest

from gwserver.errors import BadRequest
from .helpers import router_for

CONDITIONAL = [
    {"id": "v2", "paths": ["/*rest"], "headers": {"Accept": "application/vnd.v2+json"}},
    {"id": "tagged", "paths": ["/t/*rest"], "headers": {"X-Tags": "a, b"}},
    {"id": "public", "paths": ["/*rest"]},
]


@pytest.fixture(scope="module")
def router():
    return router_for([dict(r) for r in CONDITIONAL])


@pytest.mark.parametrize("value", [b"application/vnd.v2+json, application/json",
                                   b"text/html,application/vnd.v2+json;q=0.9",
                                   b"application/json, application/vnd.v2+json"])
def test_a_client_list_that_came_once_routes_as_any_value(router, value):
    route, _ = router.match("GET", "gw", "/x", {b"accept": value}, None, None)
    assert route.id == "public"
    route, _ = router.match("GET", "gw", "/x", {b"accept": value}, None, frozenset())
    assert route.id == "public"


def test_a_client_list_that_came_twice_is_a_400(router):
    with pytest.raises(BadRequest) as info:
        router.match("GET", "gw", "/x", {b"accept": b"application/vnd.v2+json, text/html"},
                     None, frozenset([b"accept"]))
    assert info.value.message.startswith("the accept header is a list holding the value")


@pytest.mark.parametrize("value", [b"a, b, c", b"c, a, b", b"x, a, b, y"])
def test_copies_of_which_one_holds_a_value_with_a_comma_are_a_400(router, value):
    with pytest.raises(BadRequest):
        router.match("GET", "gw", "/t/x", {b"x-tags": value}, None, frozenset([b"x-tags"]))


@pytest.mark.parametrize("value, repeated", [
    (b"a, b", frozenset([b"x-tags"])),         # the copies joined are the value: it holds
    (b"a, b, c", None),                        # one field: not the value, the public route's
    (b"a, bc", frozenset([b"x-tags"])),
    (b"ca, b", frozenset([b"x-tags"])),
])
def test_a_comma_value_routes_as_before_unless_a_copy_holds_it(router, value, repeated):
    route, _ = router.match("GET", "gw", "/t/x", {b"x-tags": value}, None, repeated)
    assert route.id == ("tagged" if value == b"a, b" else "public")
