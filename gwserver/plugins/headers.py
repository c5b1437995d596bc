"""``headers``: set or remove request headers (before proxying) and response headers, but
not those the gateway writes itself (Host, Content-Length, hop-by-hop, X-Forwarded-*, Via,
X-Request-ID, X-Consumer-*): a config that names one is refused.

    plugins.headers = {request = {set = {"X-Env" = "prod"}, remove = ["Cookie"]},
                       response = {set = {"Cache-Control" = "no-store"}, remove = ["Server"]}}
"""
from ..core.headers import NOT_FORWARDED, RESPONSE_RESERVED, check_editable
from ..core.schema import Field, Schema, header_name, header_value, list_of, map_of

NAME = "headers"
PRIORITY = 1000     # early: later plugins see the rewritten request

_EDITS = Schema(
    Field("set", map_of(header_value, header_name), dict, "header name -> value to set"),
    Field("remove", list_of(header_name), list, "header names to drop"),
)
SCHEMA = Schema(
    Field("request", _EDITS, dict, "edits to the request before it goes upstream"),
    Field("response", _EDITS, dict, "edits to the response before the client sees it"),
)


def prepare(conf):
    def edits(part, reserved, where):
        part = {"set": {}, "remove": [], **part}
        # Host, framing, hop-by-hop, the forwarded headers and the consumer's identity are
        # the gateway's: a second Content-Length or Host upstream is a desync.
        check_editable(list(part["set"]) + list(part["remove"]), reserved, where)
        return ([(k.encode("latin-1"), v.encode("latin-1")) for k, v in part["set"].items()],
                [k.encode("latin-1") for k in part["remove"]])
    return {"request": edits(conf["request"], NOT_FORWARDED, "request"),
            "response": edits(conf["response"], RESPONSE_RESERVED, "response")}


def phases(conf):
    """Only the sides that have edits."""
    return {phase for phase, side in (("access", "request"), ("response", "response"))
            if conf[side] != ([], [])}


def _apply(target, edits):
    to_set, to_remove = edits
    for name in to_remove:
        target.remove_header(name)
    for name, value in to_set:
        target.set_header(name, value)


def access(conf, ctx):
    _apply(ctx, conf["request"])


def response(conf, ctx, head):
    _apply(head, conf["response"])
