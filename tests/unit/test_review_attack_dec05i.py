"""The routes a CORS preflight's request may take, when a route matches on a header a page
sets without announcing it (the review of 7e474f2, helper h5;
tests/integration/test_review_attack_dec05i.py, 1 and 2)."""
from .helpers import router_for

CORS = {"allow_origins": ["https://partner.example"]}
ROUTES = [
    {"id": "internal", "paths": ["/api/*rest"],
     "headers": {"Accept": "application/vnd.internal+json"}},
    {"id": "star", "paths": ["/api/*rest"], "headers": {"Accept": "*/*"},
     "plugins": {"cors": CORS}},
    {"id": "public", "paths": ["/api/*rest"], "plugins": {"cors": CORS}},
    {"id": "plain", "paths": ["/plain"], "plugins": {"cors": CORS}},
]


def preflight(path, **headers):
    router = router_for([dict(r) for r in ROUTES])
    asked = {b"origin": b"https://partner.example", b"access-control-request-method": b"DELETE",
             **{k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}}
    return router.match("OPTIONS", "a.example", path, asked)[0]


def test_a_safelisted_header_leads_a_preflight_s_request_without_being_announced():
    # nothing announced; the preflight's own Accept: */* holds "star", which a page's Accept
    # can change: "internal" before it and "public" after it may take the request too
    found = preflight("/api/1", accept="*/*")
    assert [r.id for r in found.chain.routes] == ["internal", "star", "public"]
    assert preflight("/api/1").chain.routes[0].id == "internal"
    # a path no header steers keeps its route's own chain
    found = preflight("/plain")
    assert found.id == "plain" and not hasattr(found.chain, "routes")
