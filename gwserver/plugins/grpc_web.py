"""``grpc_web``: let browsers call gRPC services (Envoy's grpc_web filter, and its CORS).

    plugins.grpc_web = {allow_origins = ["https://app.example.com"]}

The route's upstream must speak HTTP/2 (``protocol = "h2"``). Requests with a gRPC-Web
Content-Type (``application/grpc-web``, ``+proto``, ``-text``) go upstream as native gRPC;
answers, server streaming included, come back as gRPC-Web with the trailers (``grpc-status``,
``grpc-message``) as the last frame. A CORS preflight from an allowed origin is answered here
(204), and answers to allowed origins expose the gRPC headers (and the custom metadata
``expose_headers`` names); other origins get no CORS headers (the browser refuses the
answer), and their preflights get 403. The gateway's own answers to gRPC-Web calls (a 401,
a 502) are gRPC statuses (client.http1.grpc_web_reply), with these CORS headers (``reply``).
"""
from ..core import grpcweb
from ..core.context import Reply
from ..core.schema import Field, Schema, header_name, integer, list_of, string
from ..errors import ConfigError
from . import cors

NAME = "grpc_web"
UPSTREAM_PROTOCOL = "h2"        # gRPC is HTTP/2
PRIORITY = 1100         # first: a preflight carries no token, so it is answered before auth
ANSWERS_PREFLIGHT = True    # as cors does: the router hands us the preflights of our methods
RESPONSE_PRIORITY = cors.RESPONSE_PRIORITY     # its response phase is its cors' (Vary: Origin)

ALLOWED_HEADERS = "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization"
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, grpc-encoding"

SCHEMA = Schema(
    Field("allow_origins", list_of(string(cors.ORIGIN, "an origin (scheme://host[:port]) or *")),
          list,
          "origins allowed to call (CORS); empty: same-origin only"),
    Field("allow_headers", list_of(header_name), list, "extra request headers allowed"),
    Field("expose_headers", list_of(header_name), list,
          "extra answer headers scripts may read: the service's custom initial metadata "
          "(trailing metadata travels in the trailer frame, readable without this)"),
    Field("max_age", integer(0), 600, "seconds a browser may cache a preflight"),
    Field("max_body_size", integer(1), 4 << 20,
          "bytes of a gRPC-Web request body, which is read whole to be translated (gRPC's "
          "own default message limit is 4 MiB); over it: 413 (grpc-status 8 to the client). "
          "The route's max_body_size applies too when it is smaller"),
)


def prepare(conf):
    """The CORS part is the cors plugin's, with gRPC-Web's methods and headers."""
    headers = ALLOWED_HEADERS.split(", ") + [h.lower() for h in conf["allow_headers"]]
    cors_conf = None
    if conf["allow_origins"]:
        try:
            cors_conf = cors.prepare(cors.SCHEMA.validate({
                "allow_origins": conf["allow_origins"], "allow_methods": ["POST"],
                "allow_headers": headers,
                "expose_headers": EXPOSED_HEADERS.split(", ") + conf["expose_headers"],
                "max_age": conf["max_age"]}))
        except ConfigError as exc:
            raise ValueError("; ".join(p.partition(": ")[2] for p in exc.problems)) from None
    return {**conf, "cors": cors_conf}


def access(conf, ctx):
    if cors.is_preflight(ctx):
        if conf["cors"] is None:
            return Reply.json(403, {"error": "cors_origin_not_allowed",
                                    "origin": ctx.header("origin")})
        return cors.preflight(conf["cors"], ctx, ctx.header("origin"))
    content_type = ctx.header("content-type") or ""
    mode = grpcweb.mode_of(content_type)
    if mode is not None:
        ctx.vars["grpc_web"] = (mode, content_type, conf["max_body_size"])
    if conf["cors"] is not None:
        return cors.access(conf["cors"], ctx)
    return None


def response(conf, ctx, head):
    if conf["cors"] is not None:
        cors.response(conf["cors"], ctx, head)


def reply(conf, ctx, head):
    """The gateway's own answers (a 401 from an auth plugin, a 429, a 502) carry the CORS
    headers too: without them a browser's gRPC-Web client could not read their status."""
    if conf["cors"] is not None:
        cors.reply(conf["cors"], ctx, head)
