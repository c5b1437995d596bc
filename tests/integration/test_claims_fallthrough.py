"""A `claims` route whose token the jwt config rejects falls through to the next route, and
the log says which route and why (a token with an aud the config does not name looked fine to
whoever sent it)."""
import json
import time

import jwt as pyjwt

from ..conftest import gateway_conf, route, wait_until

SECRET = "k" * 32


def token(**claims):
    return pyjwt.encode({"sub": "a", "exp": int(time.time()) + 300, **claims}, SECRET,
                        algorithm="HS256")


def test_claims_route_falls_through_and_says_why(launcher, upstream):
    gold = launcher.upstream("gold")
    auth = {"algorithms": ["HS256"], "secret": SECRET}          # no audience configured
    gw = launcher.gateway(gateway_conf([
        route("gold", ["/api/*rest"], gold.url, strip_prefix="/api", claims={"tier": "gold"},
              plugins={"jwt": auth}),
        route("default", ["/api/*rest"], upstream.url, strip_prefix="/api")]))

    def served_by(bearer):
        resp, body = gw.request("GET", "/api/echo", headers={"Authorization": f"Bearer {bearer}"})
        assert resp.status == 200, body
        return json.loads(body)["server"]
    assert served_by(token(tier="gold")) == "gold"
    assert "not matched" not in gw.log()
    assert served_by(token(tier="gold", aud="orders")) == upstream.name
    line = wait_until(lambda: next((ln for ln in gw.log().splitlines()
                                    if "route gold not matched" in ln), None), timeout=5)
    assert "names an audience (aud) and the jwt config names none (set audience)" in line
    assert "INFO" in line or '"info"' in line.lower(), line
