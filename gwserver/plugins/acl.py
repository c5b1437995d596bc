"""``acl``: allow or deny identified consumers by id or group, per route (Kong's acl,
APISIX's consumer-restriction).

    plugins.key_auth = {}
    plugins.acl = {allow_groups = ["partners"], deny_consumers = ["suspended-app"]}

Runs after the auth plugins (key_auth, basic_auth, jwt with ``consumer_claim``). A request
with no identified consumer gets 401; a denied one 403. Deny lists win over allow lists; with
any allow list set, a consumer must be in one of them.
"""
from ..core.consumers import CONSUMER_ID, GROUP
from ..core.context import Reply
from ..core.schema import Field, Schema, list_of, string

NAME = "acl"
PRIORITY = 850          # after every auth plugin (key_auth 950 .. jwt 900), before limits
# Who may call is the route's to say: a consumer's own acl would replace the route's for its
# requests, and one carried over from another route lifted a deny_consumers naming it.
ROUTE_ONLY = True

_ID = string(CONSUMER_ID, "a consumer id")
SCHEMA = Schema(
    Field("allow_consumers", list_of(_ID), list, "consumer ids allowed"),
    Field("allow_groups", list_of(GROUP), list, "groups whose consumers are allowed"),
    Field("deny_consumers", list_of(_ID), list, "consumer ids refused (wins over allow)"),
    Field("deny_groups", list_of(GROUP), list, "groups whose consumers are refused"),
)


VERDICTS = 4096         # consumers whose verdict a route remembers (dropped whole when full)


def prepare(conf):
    if not any(conf.values()):
        raise ValueError("set at least one of allow_consumers, allow_groups, deny_consumers, "
                         "deny_groups")
    return {**{k: frozenset(v) for k, v in conf.items()},
            "allow_any": not (conf["allow_consumers"] or conf["allow_groups"]),
            # Consumer -> verdict. A changed consumer is a new Consumer object (compiled
            # anew), so a verdict is never used for another version of it.
            "verdicts": {}}


def allowed(conf, consumer):
    if consumer.id in conf["deny_consumers"] or \
            not consumer.groups.isdisjoint(conf["deny_groups"]):
        return False
    return conf["allow_any"] or consumer.id in conf["allow_consumers"] or \
        not consumer.groups.isdisjoint(conf["allow_groups"])


def access(conf, ctx):
    consumer = ctx.consumer
    if consumer is None:
        return Reply.json(401, {"error": "unauthorized",
                                "message": "this route needs an identified consumer"})
    verdicts = conf["verdicts"]
    verdict = verdicts.get(consumer)
    if verdict is None:
        if len(verdicts) >= VERDICTS:
            verdicts.clear()
        verdict = verdicts[consumer] = allowed(conf, consumer)
    if not verdict:
        return Reply.json(403, {"error": "forbidden",
                                "message": f"consumer {consumer.id} may not use this route"})
    return None
