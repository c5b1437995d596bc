"""``routes|upstreams|consumers put`` refuses the mask `get` prints only where it prints it
(tests/integration/test_review_attack_dec05o.py, 1 and 2): each case failed before."""
from gwserver.routes_cli import masks_in


def refused(item):
    return [problem.split(": ")[1].split(" holds")[0] for problem in masks_in(item, "r")]


def test_the_mask_is_refused_where_get_prints_it_and_only_there():
    assert refused({"plugins": {
        "jwt": {"secret": "***"},
        "headers": {"request": {"set": {"Authorization": "***", "Server": "***"}}},
        "redirect": {"uri": "https://h/p?token=***&next=***"},
        "rewrite": {"response_body": "***", "request_headers": {"set": {"X-Api-Key": "***"}}},
    }, "upstream": {"health_check": {"headers": [["Cookie", "***"], ["X-Debug", "***"]]}},
        "credentials": {"basic_auth": {"password": "pa***word", "password_hash": "***"}}}) \
        == ["plugins.jwt.secret", "plugins.headers.request.set.Authorization",
            "plugins.redirect.uri", "plugins.rewrite.request_headers.set.X-Api-Key",
            "upstream.health_check.headers[0][1]", "credentials.basic_auth.password_hash"]


def test_a_document_nested_past_the_recursion_limit_is_walked():
    deep = ["***"]
    for _ in range(5000):
        deep = [deep]
    assert refused({"x": deep}) == []
    assert refused({"secret": deep}) != []          # (redact reads a list under its name)
