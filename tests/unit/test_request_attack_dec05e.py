"""The pure parts of the request-edge attack pass of 2026-12-05 (helper h4; the integration
tests and the defects are in tests/integration/test_request_attack_dec05e.py): body pieces
joined as they come, route header conditions on Host refused, and a condition's header that
comes as a list refused."""
import pytest

from gwserver.core.context import SMALL_PIECE, RequestContext
from gwserver.core.routes import ROUTE
from gwserver.core.schema import Invalid
from gwserver.errors import BadRequest
from .helpers import router_for


# -- body pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [
    [2] * 32000,                        # 2-byte chunks
    [1, 600] * 200,                     # short and long by turns
    [SMALL_PIECE - 1] * 300,
    [3, 5, 7, 11, 13] * 3000,
])
def test_short_body_pieces_are_joined_and_the_body_is_unchanged(sizes):
    req = RequestContext("127.0.0.1", "http")
    sent = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    for piece in sent:
        req.add_body(piece)
    assert b"".join(req.body) == b"".join(sent)
    assert req.body_size == sum(sizes)
    # at most two pieces per SMALL_PIECE bytes, and one more for the start
    assert len(req.body) <= 2 * (req.body_size // SMALL_PIECE) + 2, len(req.body)


def test_long_body_pieces_are_kept_as_they_came():
    req = RequestContext("127.0.0.1", "http")
    pieces = [b"a" * 65536, b"b" * 4096, b"c" * SMALL_PIECE]
    for piece in pieces:
        req.add_body(piece)
    assert req.body == pieces
    assert req.take_body() == pieces and req.body == [] and req.body_size == 70144


# -- route header conditions ----------------------------------------------------------------

def route_spec(**extra):
    return {"id": "r", "paths": ["/x"], "upstream": {"targets": [{"url": "http://127.0.0.1:1"}]},
            **extra}


@pytest.mark.parametrize("name", ["Host", "host", "HOST"])
def test_a_header_condition_on_host_is_refused_naming_hosts(name):
    with pytest.raises(Invalid) as info:
        ROUTE(route_spec(headers={name: "admin.test"}))
    (where, reason), = info.value.problems
    assert where == f"headers.{name}" and "hosts" in reason


def test_header_conditions_on_other_names_stay_valid():
    assert ROUTE(route_spec(headers={"X-Host": "a", "Upgrade": "websocket"}))["headers"]


CONDITIONAL = [
    {"id": "internal", "paths": ["/*rest"], "headers": {"X-Env": "internal"}},
    {"id": "getonly", "paths": ["/g"], "methods": ["GET"], "headers": {"X-Env": "g"}},
    {"id": "public", "paths": ["/*rest"]},
]


@pytest.fixture(scope="module")
def router():
    return router_for([dict(r) for r in CONDITIONAL])


@pytest.mark.parametrize("value", [b"internal, internal", b"internal, other", b"other, internal",
                                   b"internal,other", b"other,\tinternal"])
def test_a_condition_failing_on_a_list_holding_its_value_is_a_400(router, value):
    with pytest.raises(BadRequest) as info:
        router.match("GET", "gw", "/x", {b"x-env": value})
    assert info.value.message.startswith("the x-env header is a list holding the value")
    assert "internal" not in info.value.message     # a condition may match a secret


@pytest.mark.parametrize("method, path, value, expected", [
    ("GET", "/x", b"internal", "internal"),
    ("GET", "/x", b"other", "public"),
    ("GET", "/x", b"a, b", "public"),               # a list without the value: no question
    ("GET", "/x", b"internal-ish, x", "public"),
    ("POST", "/g", b"g, g", "public"),              # the route would not take a POST anyway
])
def test_a_condition_that_holds_or_clearly_fails_routes_as_before(router, method, path, value,
                                                                  expected):
    route, _ = router.match(method, "gw", path, {b"x-env": value})
    assert route.id == expected
