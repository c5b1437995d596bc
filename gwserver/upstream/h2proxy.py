"""The proxy step for upstreams with ``protocol = "h2"``: HTTP/1.1 in, HTTP/2 out, and gRPC-Web
translated to gRPC and back (core.grpcweb) when the grpc_web plugin marked the request.

Request bodies stream upstream as the client sends them, in a greenlet of their own beside
the one relaying the answer (bidirectional gRPC needs both at once), each piece sent as the
upstream's windows allow and the client's window opened only when it is sent on: memory stays
bounded whatever the body's size. gRPC-Web calls (one message from a browser, maybe base64)
are read whole, within the route's body limit. Answers stream back as they arrive; the
upstream's trailers reach a client that asked for them (``TE: trailers``: native gRPC) as
HTTP/1.1 chunked trailers, which the HTTP/2 client side turns back into a trailers frame.
``grpc-timeout`` bounds the whole call (gRPC status 4 when it runs out).
"""
import time

import gevent

from ..core import grpcweb
from ..core.context import ResponseHead
from ..core.h2request import (grpc_code, grpc_message, grpc_timeout, grpc_timeout_value,
                               is_grpc)
from ..core.headers import BODY_DIGESTS, NO_BODY_STATUSES, WRITTEN_UPSTREAM, via_chain
from ..core.routes import no_target_reason, try_policy
from ..core.tracing import REPLACED_HEADERS, response_line
from ..errors import (BadRequest, PayloadTooLarge, ServiceUnavailable, UpstreamBusy,
                      UpstreamConnectError, UpstreamError, UpstreamTimeout,
                      UpstreamTLSFilesError)
from .h2client import H2Pools, StreamBroken, StreamNotOpened
from .proxy import (CLIENT_PAUSE, asks_to_wait, client_protocol, client_side,
                    filtered, forwarded_values, hold_head, past_retry_timeout, proxied_head,
                    slow_reader, trace_headers, upstream_host, upstream_path)


DEADLINE_GRACE = 0.1      # seconds past grpc-timeout before the gateway answers 4 itself
RELAY_BATCH = 65536        # most answer bytes held to join with what follows (one read's worth)


# Body bytes a streamed request's sender keeps until the answer's head: a stream the upstream
# refused (REFUSED_STREAM, or past a GOAWAY's last_stream_id) is sent again with them. An
# upstream that refuses at once has taken at most its initial window (64 KiB by default); a
# client-streaming gRPC call may wait for its head to the end, so this is held per call.
REPLAY_LIMIT = 64 << 10
# A try's failures that sent nothing an upstream processed: no try in the access log's
# ``attempts`` (a refused stream's second try is not a retry either)
NOT_SENT = (StreamNotOpened, UpstreamBusy, UpstreamConnectError, UpstreamTLSFilesError)
# A gRPC answer's own trailers (a trailers-only answer has them in its head)
GRPC_STATUS_FIELDS = frozenset([b"grpc-status", b"grpc-message", b"grpc-status-details-bin"])


def time_left(headers, deadline, now):
    """``headers`` with a call's ``grpc-timeout`` the time left until ``deadline``, in
    milliseconds, for a try after the first (without the gateway's grace)."""
    left = grpc_timeout_value(deadline - DEADLINE_GRACE - now)
    return [(k, left if k == b"grpc-timeout" else v) for k, v in headers]


def excuse_deadline(req, exc):
    """Mark ``exc`` the client's doing (client_side) if it is the call's own deadline running
    out (``grpc-timeout``): the client's patience, no failure of the upstream's for a
    breaker or an adaptive limit (a client's 1 ms deadlines opened a healthy upstream's
    breaker for everyone), answered DEADLINE_EXCEEDED (grpc_deadline_hit)."""
    if getattr(exc, "deadline_hit", False):
        req.vars["grpc_deadline_hit"] = True
        client_side(exc)


def upstream_time(stream, client, opened_waited):
    """Seconds the upstream has had the request: from its stream's head, less the client's
    waits since (``client.body_waited`` was ``opened_waited`` then: a slow upload's)."""
    return time.monotonic() - stream.stream.opened - (client.body_waited - opened_waited)


class Exchange:
    """One try's open parts: the stream, the sender greenlet of a streamed body, and the
    answer's head once read."""
    __slots__ = ("stream", "sender", "status", "fields")

    def __init__(self, stream, sender, status=None, fields=None):
        self.stream, self.sender, self.status, self.fields = stream, sender, status, fields

    def close(self):
        if self.sender is not None:
            # Waited for: a sender parked in the client's socket must be gone before the
            # connection reads or lingers on that socket again.
            self.sender.kill(block=True)
            self.sender = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class TakenBody:
    """What a streamed body's sender has taken from the client so far, after ``first`` (what
    came with the head): ``pieces``, None once over REPLAY_LIMIT or answered; and whether that
    was all of it (``ended``)."""
    __slots__ = ("pieces", "size", "ended")

    def __init__(self, first):
        self.pieces, self.size, self.ended = [first], len(first), False

    def keep(self, piece, ended):
        self.size += len(piece)
        self.ended = ended
        if self.pieces is not None:
            self.pieces.append(piece)
            if self.size > REPLAY_LIMIT:
                self.pieces = None


class H2Forwarder:
    def __init__(self, proxy):
        self.proxy = proxy
        conf = proxy.runtime.conf
        self.pools = H2Pools(on_open=self.opened, max_empty_frames=conf.upstream_defaults[
            "h2_max_empty_frames_per_second"], max_head=proxy.max_head)
        # An answer's fields the gateway writes itself (as proxy.special_lines)
        self.trace_header = proxy.trace_header
        self.dropped = frozenset([b"via", b"x-request-id"] + (
            [self.trace_header] if self.trace_header is not None else []))

    def opened(self, url):
        metrics = self.proxy.runtime.metrics     # as Proxy.checkout counts HTTP/1.1's
        if metrics is not None:
            metrics.connections_opened.labels(url).inc()

    def read_body(self, client, req, route, grpc):
        """The whole body (a gRPC-Web call's, to translate it, or a held one), within the
        route's limit and a gRPC-Web call's own (the grpc_web plugin's max_body_size)."""
        limit = grpcweb.body_limit(route.max_body_size, grpc)
        if limit and req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
        chunks = []
        while True:
            chunks += req.take_body()
            if limit and req.body_size > limit:
                raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
            if req.complete:
                return b"".join(chunks)
            client.read_body()

    def request_headers(self, req, target, upstream, grpc):
        authority = upstream_host(req, target, upstream)
        headers = [(b":method", req.method.encode()), (b":scheme", target.scheme.encode()),
                   (b":path", upstream_path(req).encode("latin-1")), (b":authority", authority)]
        # (what the client's Connection header named left req.headers as it was read:
        # never what a plugin added afterwards)
        for name, value in req.headers:
            lower = name.lower()
            if lower in WRITTEN_UPSTREAM:
                continue
            if grpc and lower in (b"content-type", b"x-grpc-web", b"accept"):
                continue
            headers.append((lower, value))
        if grpc:
            headers += [(b"content-type",
                         grpcweb.upstream_content_type(grpc[1]).encode()), (b"te", b"trailers")]
        elif is_grpc(req.header_map.get(b"content-type")):
            headers.append((b"te", b"trailers"))        # gRPC servers insist on it
        if req.content_length is not None and not grpc:
            # as an HTTP/1.1 upstream is told (a gRPC-Web body is translated: its own length)
            headers.append((b"content-length", b"%d" % req.content_length))
        xff, proto, fhost = forwarded_values(req, authority)
        headers += [(b"x-forwarded-for", xff), (b"x-forwarded-proto", proto),
                    (b"x-forwarded-host", fhost),
                    (b"x-request-id", req.request_id.encode("latin-1")),
                    (b"via", via_chain(req.header_map.get(b"via"),
                                       self.proxy.runtime.via[client_protocol(req)]))]
        if req.trace is not None:
            headers = [(k, v) for k, v in headers if k not in REPLACED_HEADERS] + [
                (k.lower(), v) for k, v in trace_headers(req, self.proxy.runtime.emit_b3)]
        return headers

    def forward(self, client, req, keep_alive, upstream):
        """Proxy ``req`` to an HTTP/2 upstream; return (status, body bytes sent, client
        keep-alive). Tries follow the route's retry policy as on HTTP/1.1 upstreams
        (Proxy.forward): a failed connect for any method; a reset, a timeout or an answer's
        status only with the body held whole and a method the policy names; never once a
        byte reached the client. A stream the upstream did not process is another matter
        (``attempt``)."""
        route = req.route
        if not upstream.targets:
            raise ServiceUnavailable(no_target_reason(upstream))
        grpc = req.var("grpc_web")
        streamed = not req.complete and not grpc
        body = b"".join(req.take_body()) if streamed else \
            self.read_body(client, req, route, grpc)
        if grpc and grpc[0] == "text":
            try:
                body = grpcweb.decode_text_body(body)
            except ValueError:
                raise BadRequest("the grpc-web-text body is not base64") from None
        proxy = self.proxy
        now = started = time.monotonic()
        budget = proxy.budget(upstream)
        budget.request()
        policy, connect_timeout = try_policy(route, upstream)
        replayable = not streamed and req.method in policy.methods
        call_timeout = grpc_timeout(req.header_map.get(b"grpc-timeout"))
        # A little grace: an upstream that keeps the deadline itself answers with its own
        # status (and trailers) first; the gateway's bound is for those that do not.
        deadline = started + call_timeout + DEADLINE_GRACE if call_timeout is not None \
            else None
        outstanding = proxy.outstanding     # least_outstanding weighs HTTP/2 exchanges too
        tried, attempts_left = [], policy.attempts
        waited = ()         # targets whose answer asked for a wait (Proxy.wait_elsewhere)
        while True:
            if tried:
                now = time.monotonic()      # a try, a timeout or a backoff took time
                client.raise_if_gone()      # (a backoff's wait is watched by nothing)
            target = proxy.choose(upstream, tried, req, now, waited)
            outstanding[target.url] = outstanding.get(target.url, 0) + 1
            exchange = None
            try:
                try:
                    connection = self.pools.get(target, connect_timeout, upstream.tls,
                                                route.read_timeout, deadline)
                    if target.url in proxy.refused:
                        del proxy.refused[target.url]   # a probe got through: it is back
                    exchange = self.attempt(client, req, connection, target, upstream, grpc,
                                            body, streamed, deadline,
                                            policy.per_try_timeout,
                                            retried=bool(tried),
                                            retry_timeout=(policy.timeout, started))
                except UpstreamConnectError as exc:
                    # no connection: the target's, or a new one for a refused stream's second
                    # try (a connect timeout too)
                    if proxy.connect_failed(route, upstream, target, tried, attempts_left,
                                            budget, policy, exc, now, started, client):
                        attempts_left -= 1
                        continue
                    raise
                except (UpstreamTimeout, StreamBroken) as exc:
                    excuse_deadline(req, exc)
                    if exc.client_side:
                        raise
                    proxy.book_failure(upstream, target)
                    event = "timeout" if isinstance(exc, UpstreamTimeout) else "reset"
                    if replayable and proxy.may_retry(route, upstream, target, tried,
                                                      attempts_left, budget,
                                                      event in policy.events, exc.reason,
                                                      now, policy.backoff, started=started,
                                                      client=client):
                        attempts_left -= 1
                        continue
                    raise
                except StreamNotOpened as exc:
                    # Refused twice: nothing was processed, so another target may take it,
                    # whatever the method, as after a failed connect; a streamed body with
                    # what the sender took from the client so far, if it was kept.
                    proxy.book_failure(upstream, target)
                    so_far = getattr(exc, "body_so_far", False)
                    if so_far is None:
                        raise       # past REPLAY_LIMIT: no target could have it whole now
                    if so_far:
                        body, streamed = so_far[0], not so_far[1]
                    if proxy.may_retry(route, upstream, target, tried, attempts_left, budget,
                                       "connect" in policy.events or
                                       "reset" in policy.events, exc.reason, now,
                                       started=started, client=client):
                        attempts_left -= 1
                        continue
                    raise
                except UpstreamError as exc:
                    if not exc.client_side:
                        proxy.book_failure(upstream, target)
                    raise
                status = exchange.status
                retry = status in policy.statuses and replayable
                if retry and asks_to_wait(exchange.fields):
                    retry, waited = proxy.wait_elsewhere(upstream, target, tried, now, waited)
                if retry:
                    pause = proxy.retry_pause(route, upstream, target, tried, attempts_left,
                                              budget, True, f"{target.url} answered {status}",
                                              now, policy.backoff, started=started)
                    if pause is not None:
                        # Nothing of this answer has reached the client: drop it and try
                        # again, its stream closed first (a wait must hold none of the
                        # upstream's).
                        exchange.close()
                        exchange = None
                        proxy.book_outcome(upstream, target, status)
                        attempts_left -= 1
                        proxy.retry_after(client, upstream, budget, pause, now)
                        continue
                try:
                    answer = self.relay(client, req, exchange.stream, status, exchange.fields,
                                        grpc, keep_alive, target)
                except (UpstreamError, UpstreamTimeout) as exc:
                    excuse_deadline(req, exc)
                    if not exc.client_side:     # (h2client._shed's is too)
                        proxy.book_failure(upstream, target)
                    raise
            finally:
                outstanding[target.url] -= 1
                if exchange is not None:
                    exchange.close()
            proxy.book_outcome(upstream, target, status)
            return answer

    def attempt(self, client, req, connection, target, upstream, grpc, body, streamed,
                deadline, per_try_timeout, retried=False, retry_timeout=(None, 0.0)):
        """One try: open a stream, send the request (the body held, or the client's as it
        arrives, through a sender greenlet) and read the answer's head: the whole head within
        ``per_try_timeout`` if the policy sets one, else each wait within the route's read
        timeout. A stream the upstream did not process (RFC 9113 8.7) goes to a new
        connection once, whatever the method, with the body so far: that is no retry of
        a failure and takes nothing from the budget. On failure nothing of the try is left
        open. A retry of a call with a ``grpc-timeout`` tells the upstream the time left.
        ``retry_timeout``: the policy's (timeout, when the first try started)."""
        route = req.route
        started = time.monotonic()
        headers = self.request_headers(req, target, upstream, grpc)
        if retried and deadline is not None:
            headers = time_left(headers, deadline, started)
        taken = TakenBody(body) if streamed else None
        more, reopened, stream, sender = streamed, False, None, None
        req.sent = True
        waited = client.body_waited     # the client's time in this try (proxy.CLIENT_PAUSE)
        try:
            while True:
                try:
                    # A held body's wait for the upstream's windows is the try's too: an
                    # upstream that opened none held it the read timeout, past per_try_timeout.
                    stream = connection.request(
                        headers, body, per_try_timeout if per_try_timeout and not more
                        else route.read_timeout, more, deadline, self.proxy.pool_timeout)
                    opened_waited = client.body_waited  # (no sender yet: none after the head)
                    if more:
                        sender = gevent.spawn(self.send_body, client, req, route,
                                              connection, stream, taken)
                    # A streamed body is never retried, and the upstream may answer only
                    # once it has all of it: per_try_timeout does not bound an upload.
                    per_try = bool(per_try_timeout) and not more
                    stream.timeout = per_try_timeout if per_try else route.read_timeout
                    status, fields = self.await_head(client, stream, per_try)
                    stream.timeout = route.read_timeout
                    break
                except StreamNotOpened as exc:
                    # Not processed (never sent, or refused): a new connection takes it,
                    # once, with the body so far (what the sender took is kept for this,
                    # up to REPLAY_LIMIT).
                    # Refused once the policy's timeout had passed: not sent again (as a
                    # reused HTTP/1.1 connection found dead is not), or an upstream that sat
                    # on it that long before refusing got it twice, the client's wait with it.
                    # (A slow upload's wait for its client is the client's, not counted.)
                    if reopened or stream is not None and (
                            taken is not None and taken.size > REPLAY_LIMIT or
                            past_retry_timeout(retry_timeout[0], retry_timeout[1] +
                                               client.body_waited - waited)):
                        if taken is not None:   # what another target would need (forward)
                            exc.body_so_far = None if taken.pieces is None else \
                                (b"".join(taken.pieces), taken.ended)
                        raise
                    reopened = True
                    Exchange(stream, sender).close()
                    stream = sender = None
                    if taken is not None:
                        body, more = b"".join(taken.pieces), not taken.ended
                    if deadline is not None:
                        # (the upstream may have sat on the first for a while: it re-sent
                        # the client's whole grpc-timeout)
                        headers = time_left(headers, deadline, time.monotonic())
                    connection = self.pools.get(target, try_policy(route, upstream)[1],
                                                upstream.tls, route.read_timeout, deadline)
        except BaseException as exc:
            # (close() ends the sender: a wait for the client it was in is now counted)
            Exchange(stream, sender).close()
            if not isinstance(exc, NOT_SENT) and not getattr(exc, "unsent", False):
                req.attempts += 1   # it reached the upstream: a try, answered or not
            if stream is not None and (client.hung_up or getattr(exc, "deadline_hit", False)):
                # The client left, or the call's grpc-timeout (its patience) ran out: how long
                # the upstream had it (as proxy.attempt keeps it), from its stream's head. A
                # wait for a free stream before (the upstream's SETTINGS_MAX_CONCURRENT_STREAMS,
                # a new connection's SETTINGS) is the gateway's queue, as a full pool's is:
                # counted, a client that left a request queued so failed a healthy canary.
                req.vars["abandoned_wait"] = upstream_time(stream, client, opened_waited)
            if isinstance(exc, Exception):
                # Its hang-up ended the wait (await_head): no failure of the upstream's to
                # count, retry or break on.
                client.raise_if_hung_up()
            if isinstance(exc, UpstreamError) and \
                    client.body_waited - waited >= CLIENT_PAUSE:
                client_side(exc)    # an upstream that gave up on a paused upload
            raise
        if taken is not None:
            taken.pieces = None     # answered: nothing more is kept
        # The upstream's time, from its stream's head, not the client's (a slow upload is no
        # latency of the upstream's) nor the gateway's queue for a free stream: counted, as a
        # full pool's wait over HTTP/1.1 never was, a canary's latency gate failed a healthy
        # upstream for the requests queued behind its SETTINGS_MAX_CONCURRENT_STREAMS.
        req.upstream_seconds = upstream_time(stream, client, opened_waited)
        req.attempts += 1
        return Exchange(stream, sender, status, fields)

    @staticmethod
    def await_head(client, stream, whole):
        """``stream.head(whole)``, while the worker's tick watches an HTTP/1.1 client for
        its hang-up (a long poll's client that left held the stream, the upstream's work
        and its limit_conn slot until the head came or the read timeout passed; its
        HTTP/1.1 upstreams' waits are watched by Proxy.attempt). A dict entry per call:
        HTTP/2 upstreams' requests only."""
        watched = client.watch_hangup(stream)
        try:
            return stream.head(whole=whole)
        finally:
            if watched:
                client.unwatch_hangup()

    def send_body(self, client, req, route, connection, stream, taken):
        """The sender greenlet: the client's body, piece by piece, as it arrives, kept in
        ``taken`` too until the answer's head. A failure (the client stalls, resets, goes
        over the limit) reaches whoever reads the answer."""
        limit = route.max_body_size
        try:
            client.send_continue(req)
            while True:
                complete = req.complete         # before the pieces: see stream_request_body
                chunks = req.take_body()
                if limit and req.body_size > limit:
                    raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
                if chunks or complete:
                    piece = b"".join(chunks)
                    taken.keep(piece, complete)
                    connection.send_body(stream.stream_id, stream.stream, piece,
                                         route.read_timeout, end=complete)
                if complete:
                    return
                stream.stream.awaiting_client = True
                try:
                    client.read_body()
                finally:
                    stream.stream.awaiting_client = False
        except gevent.GreenletExit:
            raise
        except Exception as exc:        # noqa: BLE001 -- handed on, not swallowed
            stream.fail(exc)

    def relay(self, client, req, stream, status, headers, grpc, keep_alive, target):
        # An answer before the whole body (an early 403): the rest of it is still coming
        # from the client, so the connection cannot carry another request.
        keep_alive = keep_alive and self.proxy.runtime.alive and req.complete
        trailers_only = []
        page = None
        if grpc:
            if not grpcweb.is_grpc_answer(headers):
                # No gRPC answer (a proxy's HTML 502 page): relayed as messages, the client
                # read the page's bytes as frames and found no grpc-status. As Envoy's
                # grpc_web filter: no messages, the status the HTTP one maps to (as for the
                # gateway's own answers to gRPC calls) and the page's start as grpc-message
                # (the HTTP status stays).
                page = bytearray()
            # (latin-1: a field value may hold any byte, and only "+proto" is looked for)
            upstream_type = dict(headers).get(b"content-type", b"application/grpc") \
                .decode("latin-1")
            # The call's status goes in the trailer frame; the rest of the head (its
            # grpc-encoding above all, without which a compressed message cannot be read)
            # stays HTTP headers, as the gRPC-Web protocol has them.
            trailers_only = [(k, v) for k, v in headers if k in GRPC_STATUS_FIELDS]
            headers = [(k, v) for k, v in headers
                       if k not in (b"content-type", b"content-length") and
                       k not in GRPC_STATUS_FIELDS and
                       not (page is not None and k == b"content-encoding")]   # the page's
            headers.append((b"content-type",
                            grpcweb.client_content_type(grpc[0], grpc[1], upstream_type).encode()))
        upstream_via = b", ".join(v for k, v in headers if k == b"via") or None
        dropped = self.dropped
        headers = [(k, v) for k, v in headers if k not in dropped]
        chain = req.route.chain
        filters = None
        if chain.response_steps_of(req):
            head = ResponseHead(status, headers)
            chain.run_response(req, head)
            # what the client gets: rewrite may map the status (never to or from one that
            # frames differently), gzip and rewrite may filter the body
            if head.status != status:
                req.vars["upstream_status"] = status        # for the access log
            headers, status, filters = head.headers, head.status, head.body_filters
            trace_header = self.trace_header
            if req.trace is not None and trace_header is not None:
                # a plugin's copy beside the gateway's own (as proxy.response_head)
                headers = [(k, v) for k, v in headers if k.lower() != trace_header]
        no_body = req.method == "HEAD" or status in NO_BODY_STATUSES
        if status == 204:       # RFC 9110 8.6: never on a 204 (HTTP/2 clients refuse it)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        # The upstream's Content-Length (h2 holds its DATA to it) frames the answer as it
        # does an HTTP/1.1 upstream's, and a HEAD, 204 or 304 keeps it as it came; chunked
        # only when a body filter changes the body or trailers may follow.
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        length = None
        # A native gRPC call over HTTP/2 gets its trailers (its grpc-status) even without
        # "TE: trailers": the upstream was sent one for it, and HTTP/2 always carries them.
        grpc_type = is_grpc(req.header_map.get(b"content-type"))
        wants_trailers = b"trailers" in req.header_map.get(b"te", b"").lower() or \
            client.speaks_h2 and grpc_type
        if lengths and not no_body:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            if not filters and not wants_trailers and \
                    lengths.count(lengths[0]) == len(lengths) and lengths[0].isdigit():
                length = lengths[0]
                headers.append((b"content-length", length))
        elif len(lengths) > 1:
            # h2 lets a repeated one through when the values are equal numbers ("5", "05"):
            # to HTTP/1.1 parsers (the HTTP/2 client side's framer too) two are an error.
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", b"%d" % int(lengths[0])))
        chunked = req.version == "1.1" and length is None and not no_body
        if not chunked and length is None and not no_body:
            keep_alive = False      # HTTP/1.0: the end of the body is the end of the stream
        block = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers) + \
            response_line(req.trace, self.proxy.runtime.trace_response_header)
        # What is ready goes out in one write: the head, the messages and the trailers the
        # upstream sent together (a unary call's whole answer) are one send to the client.
        # Nothing waits for more than is already here.
        out = [proxied_head(status, None, block,
                            b"Transfer-Encoding: chunked\r\n" if chunked else b"",
                            req.request_id, via_chain(upstream_via,
                                                      self.proxy.runtime.via["2"]),
                            b"keep-alive" if keep_alive else b"close")]

        if no_body:
            client.write_head(status, out[0])
            return status, 0, keep_alive
        encoder = grpcweb.TextEncoder() if grpc and grpc[0] == "text" else None
        # Where a gRPC answer's messages stand, for a status after them (below): a gRPC-Web
        # call's rides in its body, to an HTTP/1.0 client too (ended by the close)
        native = chunked and wants_trailers and grpc_type
        edges = grpcweb.MessageEdges() if page is None and (grpc or native) else None
        body = []       # the client's body bytes since the last send
        sent = 0
        stalled = 0.0   # the longest a write waited for the client to read (slow_reader)

        def flush(last=False, end=b""):
            """Send what is here in one write: the head if still held, then the body since
            the last send as one piece (a body filter, gzip, sees it whole and passes it on
            at once), then ``end``."""
            nonlocal sent, stalled
            data = b"".join(body)
            body.clear()
            if filters:
                data = filtered(filters, [data], last)
            size = len(data)
            if data:
                out.extend((b"%x\r\n" % size, data, b"\r\n") if chunked else (data,))
            if end:
                out.append(end)
            if out:
                data = b"".join(out)
                out.clear()
                writing = time.monotonic()
                if client.head_status:
                    client.write(data)
                else:
                    client.write_head(status, data)
                stalled = max(stalled, time.monotonic() - writing)
                sent += size

        def finish(frame_fields, trailers=()):
            """The answer's last write: a gRPC-Web call's trailer frame of ``frame_fields``
            (in its body), then, chunked, the last chunk and ``trailers``."""
            if grpc:
                frame = grpcweb.trailer_frame(frame_fields)
                body.append(frame if encoder is None else encoder.feed(frame) + encoder.finish())
            flush(last=True, end=b"0\r\n%s\r\n" % b"".join(b"%s: %s\r\n" % pair
                                                          for pair in trailers)
                  if chunked else b"")
        held = 0
        hold_until = None
        watched = False
        try:
            if not stream.ready():
                flush()
                # The answer waits on its upstream (an event stream's, a gRPC server
                # stream's may write rarely): the client's hang-up must not wait for the
                # next message to be seen.
                watched = client.watch_hangup(stream)
                if client.holds_head:
                    hold_until = hold_head(client, stream.ready_within, hold_until)
            for chunk in stream.chunks():
                if page is not None:
                    page += chunk[:grpcweb.PAGE_BYTES - len(page)]
                    if len(page) >= grpcweb.PAGE_BYTES:
                        # All of the page the client gets: read to its end, the client got
                        # nothing until then (an event stream or a download's, for as long as
                        # it lasted). The stream is reset as the exchange closes.
                        break
                    continue
                body.append(chunk if encoder is None else encoder.feed(chunk))
                if edges is not None:
                    edges.feed(chunk)
                held += len(chunk)
                if not stream.ready() or held >= RELAY_BATCH:
                    held = 0            # bounded: what is acknowledged upstream is sent on
                    flush()
                    if not watched:
                        watched = client.watch_hangup(stream)
                    if client.holds_head:
                        hold_until = hold_head(client, stream.ready_within, hold_until)
            frame_fields = None
            if grpc:
                trailers = stream.trailers or trailers_only
                if page is not None and dict(trailers).get(b"grpc-status", b"0") == b"0":
                    # A page's own grpc-status (in its trailers) is the one gRPC clients
                    # must use; without one the HTTP status is mapped, and so it is for an
                    # OK: no message came, the page's bytes are none.
                    trailers = grpcweb.page_trailers(grpc_code(status), page)
                frame_fields = grpcweb.web_trailers(trailers, grpc_code(status))
            trailers = stream.trailers if chunked and not grpc and wants_trailers else ()
            if filters and trailers:
                # a digest trailer is of the upstream's bytes, not of the filtered ones
                trailers = [(k, v) for k, v in trailers if k.lower() not in BODY_DIGESTS]
            finish(frame_fields, trailers)
        except Exception as exc:
            if client.hung_up:
                client.body_sent = sent
                client.raise_if_hung_up()
            if isinstance(exc, UpstreamError):
                # The stream's window opens as its answer is relayed: a client that stalled
                # shut it, and an upstream that gave up on the stream gave up on the client.
                slow_reader(exc, stalled)
            if not client.head_status:
                raise       # nothing went out yet: the client still gets a whole error answer
            if edges is not None and edges.at_edge and (grpc or sent or body) and \
                    isinstance(exc, (UpstreamError, UpstreamTimeout)):
                # A gRPC answer whose upstream fails between two messages (a server stream
                # past the call's deadline or the route's read timeout, a reset) ends with the
                # status the gateway's own answer would have had, in a gRPC-Web call's trailer
                # frame or in trailers (cut, a gRPC-Web client read no status and a native one
                # INTERNAL). A native call's head alone gets its status from answer(). Still
                # raised: the log, metrics and breakers see the upstream's failure.
                code = grpc_code(exc.status, exc, getattr(exc, "deadline_hit", False))
                fields = [(b"grpc-status", b"%d" % code),
                          (b"grpc-message", grpc_message(exc.message))]
                try:
                    finish(fields, () if grpc else fields)
                except Exception:       # noqa: BLE001 -- the first error is the one to tell
                    pass
                client.body_sent = sent
                raise
            if body:        # the upstream's bytes from before its failure still go out
                try:
                    flush()
                except Exception:       # noqa: BLE001 -- the first error is the one to tell
                    pass
            client.body_sent = sent     # the head is out: the answer can only be cut
            raise
        finally:
            if watched:
                client.unwatch_hangup()
        if length is not None and sent != int(length):
            # h2 holds DATA to content-length; should that ever miss, the client's framing
            # must not: the connection is cut, not reused
            client.body_sent = sent
            raise UpstreamError(f"{target.url} sent {sent} body bytes, its content-length "
                                f"said {int(length)}")
        return status, sent, keep_alive
