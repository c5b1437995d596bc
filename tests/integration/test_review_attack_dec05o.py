"""Review of cf6a422 (the etcd sync's CallDeadline, AuthRejected, names_once, the GOAWAY race),
491922f (`get` masks secrets, `put` refuses the mask), 583377e and 89e96da, as an attacker
and as a legitimate operator (helper s6, 2026-12-05). Every test starts real processes (etcd,
the CLI) and talks to them over loopback; each failed on the code before its fix.

1. `routes validate` / `put` of a document nested a few hundred levels deep (a generated
   file gone wrong, or anyone who may feed the CLI a file) died with a RecursionError and
   a traceback: 491922f's mask check (``masks_in``) walked the document recursively, two
   frames a level, before anything else looked at it. Before it, the same file was one
   `error:` line (``x: unknown key``), exit 2. The walk is now a loop.
2. ``put`` refused "***" wherever it stood, not where ``get`` prints it in place of a
   secret: a rewrite that sets ``Server: ***`` (hiding the upstream's software), a fault's
   abort body "***", a header match on "***": all legitimate, all refused ("the mask `get`
   prints in place of a secret: give the secret itself"), for a value that is no secret.
   And the mask ``get`` prints inside a value was not refused at all: a redirect to
   ``https://sso.example.com/start?token=...`` is shown ``?token=***``, and that output put
   back stored the redirect with the token "***" (exit 0), the very copy-paste 491922f meant
   to stop. ``masks_in`` now asks ``redact`` itself whether each "***" stands where it masks
   a secret (a whole value under a secret's name, a URL's password or token parameter).
3. ``get`` of a value put by hand that is not JSON (``etcdctl put`` of a Python-style dict,
   ``{'plugins': {'jwt': {'secret': '...'}}}``) printed its start as stored, its jwt secret
   in clear, without ``--show-secrets``, in the error an operator pastes into the ticket
   about why the route is rejected; ``list`` showed it too. A value that is not JSON and
   names a secret (by the names redact masks) is now shown as its length and that note,
   unless ``--show-secrets``; one naming none is shown as before.
4. A member (or a proxy in front of it) that trickles a watch's messages was, about one
   watch in three, taken for a quiet one: "etcd watch silent; resuming it", on the same
   member, never the next (cf6a422's WatchLost and failover skipped). The CallDeadline's
   thread cuts the connection, then says ``expired``; the watch's read failed at the cut
   and asked ``expired`` at once, before the thread had said it, and fell to the "silent"
   branch. Through a trickling relay, 6 of 20 watches returned quietly. The watch now
   waits for the cut under way (disarm takes the lock the cut holds) before it asks.
"""
import json

from gwserver.sync.etcd import EtcdClient, WatchLost

from .test_review_attack_dec05n import Trickle
from .test_routes_cli import PREFIX, cli, conf_path, one_error  # noqa: F401 (a fixture)

UPSTREAM = {"targets": [{"url": "http://127.0.0.1:9"}]}


# -- 1. a deeply nested document killed `routes validate` and `put` -----------------------------

def test_a_deeply_nested_document_is_one_error_not_a_traceback(conf_path):
    deep = "[" * 700 + "]" * 700
    text = f'{{"id": "r", "paths": ["/r"], "upstream": {json.dumps(UPSTREAM)}, "x": {deep}}}'
    for action in ("validate", "put"):
        one_error(cli(conf_path, "routes", action, "-", stdin=text), "route r: x: unknown key")
    assert conf_path.etcd.client().range_prefix(PREFIX + "/")[1] == []


# -- 2. "***" refused where it is no mask, taken where it is one ----------------------------------

def test_a_value_that_is_three_stars_but_no_secret_is_taken(conf_path):
    route = {"id": "stars", "paths": ["/s"], "upstream": UPSTREAM,
             "headers": {"X-Debug": "***"},
             "plugins": {"rewrite": {"response_headers": {"set": {"Server": "***"}}},
                         "fault": {"abort": {"status": 503, "body": "***",
                                             "percentage": 0.0}},
                         # a secret with "***" in it is a secret, not the mask
                         "jwt": {"algorithms": ["HS256"],
                                 "secret": "k***" + "0123456789abcdef" * 3}}}
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=json.dumps(route))
        assert run.returncode == 0, run
    shown = cli(conf_path, "routes", "get", "stars", "--show-secrets")
    assert shown.returncode == 0 and json.loads(shown.stdout) == route, shown


def test_a_mask_inside_a_value_given_back_is_refused(conf_path):
    uri = "https://sso.example.com/start?token=tk-0a1b2c3d4e5f&next=/home"
    route = {"id": "sso", "paths": ["/login"], "upstream": UPSTREAM,
             "plugins": {"redirect": {"uri": uri, "status": 302}}}
    assert cli(conf_path, "routes", "put", "-", stdin=json.dumps(route)).returncode == 0
    shown = cli(conf_path, "routes", "get", "sso")
    assert shown.returncode == 0 and "tk-0a1b2c3d4e5f" not in shown.stdout, shown
    assert "?token=***&next=/home" in shown.stdout
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=shown.stdout)
        assert run.returncode == 2, run                     # 0 before: stored with "***"
        assert "routes/sso: plugins.redirect.uri holds ***, the mask `get` prints" in \
            run.stderr, run.stderr
    stored = cli(conf_path, "routes", "get", "sso", "--show-secrets")
    assert json.loads(stored.stdout)["plugins"]["redirect"]["uri"] == uri


# -- 3. `get` of a value that is not JSON printed its secret -------------------------------------

def test_a_stored_value_that_is_not_json_keeps_its_secret_unless_asked(conf_path):
    secret = "hs256-0123456789abcdef0123456789abcdef"
    raw = "{'paths': ['/j'], 'plugins': {'jwt': {'secret': '%s'}}}" % secret
    conf_path.etcd.client().put(f"{PREFIX}/routes/hand", raw.encode())
    run = cli(conf_path, "routes", "get", "hand")
    one_error(run, f"{PREFIX}/routes/hand: stored value is not valid JSON",
              f"{len(raw)} bytes", "--show-secrets")
    listed = cli(conf_path, "routes", "list")
    assert listed.returncode == 0 and "hand" in listed.stdout, listed
    for text in (run.stdout + run.stderr, listed.stdout + listed.stderr):
        assert secret not in text, text
    shown = cli(conf_path, "routes", "get", "hand", "--show-secrets")
    one_error(shown, f"{PREFIX}/routes/hand: stored value is not valid JSON", secret)


# -- 4. a trickled watch was often taken for a quiet one ------------------------------------------

def test_a_watch_whose_messages_trickle_is_lost_every_time(launcher):
    etcd = launcher.etcd()
    relay = Trickle(etcd.client_port, watch_only=True)     # the watch's body, a byte / 0.3 s
    try:
        client = EtcdClient([relay.url], timeout=1.0)
        revision = client.identity()[1]
        outcomes = []
        for _ in range(16):
            try:
                for _ in client.watch_prefix(PREFIX + "/", revision + 1, 0.5):
                    outcomes.append("a message")        # (never: none comes whole)
                outcomes.append("resumed as quiet")
            except WatchLost as exc:
                outcomes.append("lost" if "no whole message within 0.5s of its start" in
                                str(exc) else str(exc))
    finally:
        relay.close()
    assert outcomes == ["lost"] * 16, outcomes      # ~1 in 3 "resumed as quiet" before
