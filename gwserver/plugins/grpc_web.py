"""``grpc_web``: let browsers call gRPC services (Envoy's grpc_web filter, and its CORS).

    plugins.grpc_web = {allow_origins = ["https://app.example.com"]}

The route's upstream must speak HTTP/2 (``protocol = "h2"``). Requests with a gRPC-Web
Content-Type (``application/grpc-web``, ``+proto``, ``-text``) go upstream as native gRPC;
answers, server streaming included, come back as gRPC-Web with the trailers (``grpc-status``,
``grpc-message``) as the last frame. A CORS preflight from an allowed origin is answered here
(204), and answers to allowed origins expose the gRPC headers; other origins get no CORS
headers (the browser refuses the answer), and their preflights get 403.
"""
from ..core import grpcweb
from ..core.context import Reply
from ..core.schema import Field, Schema, header_name, integer, list_of, string

NAME = "grpc_web"
UPSTREAM_PROTOCOL = "h2"        # gRPC is HTTP/2
PRIORITY = 1100         # first: a preflight carries no token, so it is answered before auth

ALLOWED_HEADERS = "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization"
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"

SCHEMA = Schema(
    Field("allow_origins", list_of(string(r"\*|https?://[!-~]+", "an origin or *")), list,
          "origins allowed to call (CORS); empty: same-origin only"),
    Field("allow_headers", list_of(header_name), list, "extra request headers allowed"),
    Field("max_age", integer(0), 600, "seconds a browser may cache a preflight"),
)


def prepare(conf):
    headers = ALLOWED_HEADERS + "".join(f", {h.lower()}" for h in conf["allow_headers"])
    return {**conf, "origins": frozenset(conf["allow_origins"]), "headers_allowed": headers}


def _allowed(conf, origin):
    return origin is not None and ("*" in conf["origins"] or origin in conf["origins"])


def access(conf, ctx):
    origin = ctx.header("origin")
    if ctx.method == "OPTIONS" and ctx.header("access-control-request-method"):
        if not _allowed(conf, origin):
            return Reply.json(403, {"error": "cors_origin_not_allowed", "origin": origin})
        return Reply(204, b"", [("Access-Control-Allow-Origin", origin),
                                ("Access-Control-Allow-Methods", "POST, OPTIONS"),
                                ("Access-Control-Allow-Headers", conf["headers_allowed"]),
                                ("Access-Control-Max-Age", str(conf["max_age"])),
                                ("Vary", "Origin")])
    content_type = ctx.header("content-type") or ""
    mode = grpcweb.mode_of(content_type)
    if mode is not None:
        ctx.vars["grpc_web"] = (mode, content_type)
    if _allowed(conf, origin):
        ctx.vars["grpc_web_origin"] = origin
    return None


def response(conf, ctx, head):
    origin = ctx.var("grpc_web_origin")
    if origin is not None:
        head.set_header("Access-Control-Allow-Origin", origin)
        head.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
        head.set_header("Vary", "Origin")
