"""``fault``: inject delays and aborts on purpose, tagged so they are never mistaken for an
outage.

    plugins.fault = {delay = {seconds = 0.5, percentage = 10},
                     abort = {status = 503, percentage = 5},
                     headers = {"X-Chaos" = "on"}}

``delay`` holds a request for ``seconds`` before it goes on; ``abort`` answers ``status``
(with ``body``, or a JSON body saying the fault was injected) without calling the upstream.
Each applies to ``percentage`` of requests (0-100), drawn independently; with ``headers``,
only requests carrying all of those header values are touched (mark chaos traffic).

Every injected fault is tagged: ``X-Fault-Injected`` on the aborted answer and on the request
sent upstream after a delay, ``gwfault=`` in the ``tracestate`` that goes upstream, ``"fault"``
in the access-log line, and ``gwserver_faults_injected_total{route,kind}``.
"""
import random

import gevent

from ..core.context import Reply
from ..core.schema import (Field, Invalid, Schema, header_value, header_name, integer, map_of,
                           number, show, string)

NAME = "fault"
PRIORITY = 750          # after auth and rate limits; before split and the breaker


def percentage(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    raise Invalid(f"must be a percentage from 0 to 100, got {show(value)}")


DELAY = Schema(
    Field("seconds", number(0, exclusive=True), doc="how long to hold the request"),
    Field("percentage", percentage, 100.0, "share of requests delayed"),
)

ABORT = Schema(
    Field("status", integer(200, 599, "a status from 200 to 599"), doc="status to answer"),
    Field("body", string(what="a body", allow_empty=True), None,
          "body of the answer (default: a JSON fault_injected body)"),
    Field("percentage", percentage, 100.0, "share of requests aborted"),
)

SCHEMA = Schema(
    Field("delay", DELAY, None, "hold requests for a while"),
    Field("abort", ABORT, None, "answer instead of the upstream"),
    Field("headers", map_of(header_value, header_name), None,
          "only requests with all these header values"),
)


def prepare(conf):
    if conf["delay"] is None and conf["abort"] is None:
        raise ValueError("set delay, abort or both")
    return {**conf, "match": tuple((k.lower().encode("latin-1"), v.encode("latin-1"))
                                   for k, v in (conf["headers"] or {}).items())}


def access(conf, ctx, _random=random.random):
    hmap = ctx.header_map
    for name, value in conf["match"]:
        if hmap.get(name) != value:
            return None
    delay, abort = conf["delay"], conf["abort"]
    delayed = delay is not None and _random() * 100 < delay["percentage"]
    aborted = abort is not None and _random() * 100 < abort["percentage"]
    if not (delayed or aborted):
        return None
    if delayed:
        gevent.sleep(delay["seconds"])
        _count(ctx, "delay")
    if aborted:
        ctx.vars["fault"] = "delay+abort" if delayed else "abort"
        _count(ctx, "abort")
        headers = [("X-Fault-Injected", ctx.vars["fault"])]
        if abort["body"] is not None:
            return Reply(abort["status"], abort["body"].encode(), headers)
        return Reply.json(abort["status"], {"error": "fault_injected", "status": abort["status"],
                                            "message": "fault injected by the gateway"},
                          headers)
    ctx.vars["fault"] = "delay"
    ctx.set_header("X-Fault-Injected", "delay")
    return None


def _count(ctx, kind):
    if ctx.services.metrics is not None:
        ctx.services.metrics.count_fault(ctx.route.id, kind)
