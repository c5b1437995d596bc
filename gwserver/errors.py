"""The gateway's error tree. Each error that reaches a client knows its HTTP status.

    GatewayError
    ├── ConfigError                  bad conf file or route (never reaches a client)
    ├── StoreError                   rate-limit store unavailable (handled by the plugin)
    └── HTTPError                    rendered as a JSON reply with ``status``
        ├── BadRequest                400  malformed or ambiguous request, never forwarded
        ├── RouteNotFound             404
        ├── MethodNotAllowed          405  carries the ``Allow`` list
        ├── RequestTimeout            408  client too slow sending its request
        ├── PayloadTooLarge           413
        ├── HeadersTooLarge           431
        ├── UpstreamError             502  refused, reset or unparsable upstream
        │   └── UpstreamConnectError  502  could not connect (safe to retry anywhere)
        ├── UpstreamTLSFilesError     502  the gateway's own tls files, no target's fault
        ├── InternalError             500  a bug (a plugin raised, say); logged with traceback
        ├── Unimplemented             501  a transfer coding the gateway does not do
        ├── ServiceUnavailable        503  no target
        │   ├── UpstreamBusy          503  pool exhausted, no free HTTP/2 stream
        │   └── OutOfFiles            503  the worker's file limit, no target's fault
        ├── UpstreamTimeout           504
        │   └── UpstreamConnectTimeout 504  connect timed out (safe to retry anywhere)
        └── LoopDetected              508  the request came back through this gateway (Via)

The worker renders ``exc.status`` and ``exc.message`` (``reason``, or ``public`` where the reason
names the inside: the log gets it) in one place; nothing upstream of it builds
error pages by hand.
"""
import re

import greenlet

# The kill that ends a greenlet (gevent's GreenletExit is greenlet's): the worker's drain ran
# out, an HTTP/2 stream's client left (StreamKilled). No error of the code it lands in: named
# here so the pure core (core.chain) tells it from a plugin's failure without gevent.
GreenletExit = greenlet.GreenletExit


class GatewayError(Exception):
    """Base of every error gwserver raises on purpose."""


class ConfigError(GatewayError):
    """A conf file, route or plugin config failed validation; ``problems`` lists each one."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    @classmethod
    def of(cls, exc, where=""):
        """``exc`` as a ConfigError: itself, or whatever a check that did not foresee a value
        raised, named by its type. A bad value is refused; it never crashes the master that
        reloads a conf file, nor the sync process that checks an etcd item."""
        if isinstance(exc, cls):
            return exc
        return cls(f"{where}could not be checked: {type(exc).__name__}: {exc}")


class StoreError(GatewayError):
    """The rate-limit store could not decide (unreachable, slow, failing); never a client's
    error: plugins turn it into their on_store_error behaviour."""


class StoreTimeout(StoreError):
    """The store did not decide within its timeout (the round trip may still end later)."""


class HTTPError(GatewayError):
    """An error that ends a request with ``status``; ``reason`` goes into the JSON body."""

    status = 500
    error = "internal_error"
    public = None       # what the client is told instead of ``reason``, when that is internal

    def __init__(self, reason="", headers=()):
        super().__init__(reason or self.error)
        self.reason = reason or self.error.replace("_", " ")
        self.headers = list(headers)

    @property
    def message(self):
        """The client's words: ``reason``, unless it names the inside (upstream addresses,
        library errors), which only the gateway's log gets, with the request id."""
        return self.public or self.reason


class BadRequest(HTTPError):
    """The request is malformed or ambiguous and is never forwarded."""
    status, error = 400, "bad_request"


class Unauthorized(HTTPError):
    """Credentials that cannot stand together (two that name different consumers)."""
    status, error = 401, "unauthorized"


class RouteNotFound(HTTPError):
    """No route matches the request's path, host and headers."""
    status, error = 404, "route_not_found"


class MethodNotAllowed(HTTPError):
    """A route matches the path but not the method; ``Allow`` lists the methods that would."""
    status, error = 405, "method_not_allowed"

    def __init__(self, allowed):
        allow = ", ".join(sorted(allowed))
        super().__init__("allowed: " + allow, headers=[("Allow", allow)])


class RequestTimeout(HTTPError):
    """The client did not send a complete request head in time."""
    status, error = 408, "request_timeout"


class PayloadTooLarge(HTTPError):
    """The request body is larger than the route allows."""
    status, error = 413, "payload_too_large"


class HeadersTooLarge(HTTPError):
    """The request line or head is over the configured limits."""
    status, error = 431, "request_header_fields_too_large"


class UpstreamError(HTTPError):
    """The upstream refused, reset or sent something that is not HTTP."""
    status, error = 502, "bad_gateway"
    public = "the upstream failed; the gateway's operators can find why under this request id"
    # Set on one that was the client's doing (a paused upload the upstream gave up on, an
    # answer shed for a client slower than the upstream): no passive check, breaker or
    # canary gate counts it (proxy.client_side).
    client_side = False


class UpstreamConnectError(UpstreamError):
    """No connection could be made; nothing was sent, so any request may be retried."""


class UpstreamTLSFilesError(HTTPError):
    """An upstream's tls files (ca_file, cert_file, key_file: the gateway's own, replaced by
    bad ones since the check) cannot be loaded for a connection. No UpstreamError: no
    target is blamed (skipped, ejected, tripped) and none is tried again, as every try
    loads the same files. Booked as a connect failure, one request ejected a healthy target
    (passive checks), which stayed out for eject_for after the file was put right."""
    status, error = 502, "bad_gateway"
    public = UpstreamError.public


class InternalError(HTTPError):
    """Something raised that is not an HTTPError: a bug, logged with its traceback."""
    status, error = 500, "internal_error"


class Unimplemented(HTTPError):
    """The request uses something the gateway does not implement (a transfer coding)."""
    status, error = 501, "not_implemented"


class ProtocolMismatch(Unimplemented):
    """The request cannot go to its upstream in the protocol the upstream speaks: a native
    gRPC call (its status rides on trailers) to an HTTP/1.1 upstream, an Upgrade to an
    HTTP/2 one. Forwarded anyway, the upstream got what it could not serve and the client
    an answer to puzzle over; to a gRPC client this is 12 UNIMPLEMENTED."""


class ServiceUnavailable(HTTPError):
    """No upstream capacity: no targets, or the pool is full and blocking timed out."""
    status, error = 503, "service_unavailable"


class WorkerExit(SystemExit):
    """The worker's own exit, raised by a signal's handler in whatever greenlet the signal
    found (the master's SIGABRT for a worker silent past server.timeout: a plugin stuck in a
    loop). Not a plugin's sys.exit(), which is a 500 naming it (core.chain.PluginExit):
    caught as one, the stuck worker answered 500, blamed the plugin for an exit it never
    called, and drained on instead of exiting."""


class WorkerStopped(ServiceUnavailable):
    """The worker cut the request as it stopped: its drain ran past server.graceful_timeout
    (a download, a websocket, an upstream slower than that), or it was told to stop at once
    (SIGQUIT: max_draining_generations)."""

    def __init__(self, because):
        super().__init__(f"cut: {because}")


class UpstreamBusy(ServiceUnavailable):
    """No connection (or HTTP/2 stream) to the upstream is free within the pool's wait."""
    public = "no connection to the upstream is free; try again shortly"


class OutOfFiles(ServiceUnavailable):
    """No file descriptor was left for an upstream connection (EMFILE, ENFILE): the worker's
    limit, so no target is blamed (skipped, ejected, tripped) and none other is tried."""
    public = "the gateway has no room for another connection; try again shortly"

    @classmethod
    def connecting_to(cls, url):
        return cls(f"no file descriptor left for a connection to {url}: the worker is at its "
                   f"open-file limit (LimitNOFILE; each proxied client holds two)")


class UpstreamTimeout(HTTPError):
    """The upstream did not answer within the route's read timeout."""
    status, error = 504, "gateway_timeout"
    public = "the upstream did not answer in time"
    client_side = False         # as UpstreamError's


class UpstreamConnectTimeout(UpstreamTimeout, UpstreamConnectError):
    """Connecting timed out; nothing was sent, so any request may be retried."""
    status, error = 504, "gateway_timeout"


class LoopDetected(HTTPError):
    """The request already passed through this gateway (by its Via name) MAX_OWN_HOPS times:
    an upstream target that leads back to the gateway. Never forwarded again."""
    status, error = 508, "loop_detected"
    public = "the request came back to the gateway it went through: an upstream leads back " \
             "to the gateway"


def describe(exc):
    """An exception in words an operator reads in a log line ("connection refused", "timed
    out"), not a library's class name (ConnectionError, ReadTimeout)."""
    seen = set()
    while exc is not None and id(exc) not in seen:      # the root cause speaks plainest
        seen.add(id(exc))
        for kind, words in _PLAIN:
            if isinstance(exc, kind):
                return words
        inner = exc.__cause__ or exc.__context__ or \
            (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
        if inner is None:
            break
        exc = inner
    text = str(exc).strip() if exc is not None else ""
    if text.startswith(NO_MASTER):
        return no_master_words(text)
    return text[:200] if text else "failed"


NO_MASTER = "No master found for "      # redis-py's MasterNotFoundError


def no_master_words(text):
    """redis-py's MasterNotFoundError in words: it holds the repr of each sentinel's client
    (some 1,500 bytes per sentinel, pool options and all), so a line with three sentinels was
    4 KB of it, and cut at 200 characters it named none. -> "no master for 'mymaster':
    sentinel 10.0.0.1:26379: connection refused; sentinel ...", each reason cut at 80."""
    service, _, errors = text[len(NO_MASTER):].partition(" : ")
    if not errors:
        return f"no sentinel names a healthy master for {service[:80]}"
    said = []
    for part in re.split(r"(?:^|, )(?=<redis\.client\.)", errors):
        where = re.search(r"host=([^,]*),port=(\d+)", part)
        if where is None:
            continue
        reason = part.rpartition(")> - ")[2]
        # "network:ConnectionError: Error 111 connecting to 10.0.0.1:26379. Connection refused."
        cause = re.search(r"connecting to \S+\. (.+)$", reason)
        reason = (cause.group(1) if cause else re.sub(r"^[\w.]+:\w+: ", "", reason)).rstrip(".")
        said.append(f"sentinel {where.group(1)}:{where.group(2)}: "
                    f"{reason[:1].lower()}{reason[1:80]}")
    return f"no master for {service[:80]}: " + ("; ".join(said) if said else errors[:200])


_PLAIN = ((ConnectionRefusedError, "connection refused"),
          (ConnectionResetError, "connection reset"),
          (BrokenPipeError, "connection closed"),
          (TimeoutError, "timed out"),
          (EOFError, "connection closed"))
