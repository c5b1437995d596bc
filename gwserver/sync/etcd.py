"""A small etcd v3 client over the JSON gateway (``/v3/...``), with requests.

Used by the config-sync process and the CLI, never by workers. Why not a library: the grpc
``etcd3`` package needs an old protobuf and hangs under gevent; ``etcd3gw`` drops the range
header revision, its ``watch_prefix_once`` matches keys outside the prefix, and its watch goes
silently dead after a compaction or an etcd restart (all seen on this machine). What we need is
five calls: range (with the header revision), put, delete, watch (from a revision, reporting
compaction), and authenticate.

Endpoints are tried in order starting from the last one that answered; ``EtcdUnavailable`` means
none did. Keys and values are bytes on the wire (base64 in JSON).
"""
import base64
import functools
import json
import logging
import socket
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import describe

log = logging.getLogger("gwserver.etcd")

# The longest watch message taken: one revision's events are at most etcd's
# --max-request-bytes (1.5 MiB by default) base64-encoded, and a catch-up message batches
# revisions. A longer line is a broken or hostile endpoint (a stream that never ends its
# line held it all in memory); the watch is dropped and the table reloaded by value.
MAX_WATCH_MESSAGE = 64 * 1024 * 1024
# etcd's watchBatchMaxRevs: the most revisions one message of a watch catching up holds (the
# rest follow, the header's revision is etcd's now whatever the message holds: watch_prefix)
WATCH_BATCH_REVISIONS = 1000
WATCH_READ = 65536      # bytes read at a time: a chunk etcd declares huge is read in pieces
# An answer's whole read is bounded by ``timeout`` (requests' read timeout bounds each recv
# alone: a member that sends a byte a second held one call for minutes), plus a second for
# each ANSWER_RATE bytes that came, so a large range read over a slow link is not cut.
ANSWER_RATE = 256 * 1024
# The longest answer of a call read whole. The largest etcd gives is a range of the whole
# prefix: 60,000 routes are 20 to 50 MiB of its JSON. A longer one is a broken or hostile
# endpoint (a body that never ends bought itself hours at ANSWER_RATE, and the sync process
# held it all until the OOM killer came): that endpoint failed, and the next is asked.
MAX_ANSWER = 256 * 1024 * 1024


class EtcdError(Exception):
    """etcd answered with an error."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered."""


class WatchLost(EtcdUnavailable):
    """The watch stream broke (etcd went away, or the connection to it did)."""


class AuthFailed(EtcdError):
    """An endpoint did not give us a token (a member cut off from its quorum answers
    ``authenticate``, a raft request, with 5xx; a load balancer with its own page)."""


class AuthRejected(EtcdError):
    """etcd itself refused our credentials (a wrong password, an unknown user; auth not
    enabled): no endpoint failing, nothing to wait out. Reported as "no etcd endpoint
    answered", an operator read "etcd unreachable" and looked for a network problem."""


class PasswordUnreadable(EtcdError):
    """[etcd] password_file cannot be read as a call authenticates (being rotated: empty, or
    gone a moment): that call fails, and is retried as any failed call to etcd."""


class AnswerTooSlow(requests.exceptions.Timeout):
    """An endpoint did not give its whole answer within the call's deadline (CallDeadline):
    it trickles, or hangs mid-answer. That endpoint failing; the next is asked."""


class AnswerTooLarge(requests.exceptions.RequestException):
    """An endpoint's answer went past MAX_ANSWER (declared so, or as it came): that endpoint
    failing, never the sync process's memory."""


class CallDeadline:
    """The deadline of the call under way (one at a time: a client is used by one thread),
    kept by a thread of its own, which shuts the call's connection down when it passes: the
    read under way ends with an error at once, as the workers' ticker ends theirs
    (net/deadlines.py). The connections a call takes from the pool are held by it
    (_HeldPool)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.due = None                 # time.monotonic() past which the call is cut
        self.held = []                  # the connections it uses
        self.expired = False
        self.thread = None

    def arm(self, seconds, held=()):
        """Cut the call in ``seconds``: its connections ``held``, and those it takes."""
        with self.cond:
            self.due, self.expired = time.monotonic() + seconds, False
            self.held = [conn for conn in held if conn is not None]
            if self.thread is None:
                self.thread = threading.Thread(target=self._keep, name="etcd-deadline",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()

    def extend(self, seconds):
        with self.cond:
            if self.due is not None:
                self.due += seconds

    def disarm(self):
        with self.cond:
            self.due, self.held = None, []

    def hold(self, conn):
        with self.cond:
            if self.due is not None:
                self.held.append(conn)

    def _keep(self):
        with self.cond:
            while True:
                left = None if self.due is None else self.due - time.monotonic()
                if left is None or left > 0:
                    self.cond.wait(left)
                    continue
                for conn in self.held:
                    sock = getattr(conn, "sock", None)
                    try:
                        if sock is not None:
                            sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.due, self.held, self.expired = None, [], True


_calling = threading.local()            # .deadline: the CallDeadline of this thread's call


class _Held:
    """A pool whose connections are held by the call under way (CallDeadline)."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        deadline = getattr(_calling, "deadline", None)
        if deadline is not None:
            deadline.hold(conn)
        return conn


class _HeldPool(_Held, HTTPConnectionPool):
    pass


class _HeldHTTPSPool(_Held, HTTPSConnectionPool):
    pass


class _HeldAdapter(HTTPAdapter):
    """requests' adapter, its pools' connections held by the call that takes them."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HeldPool, "https": _HeldHTTPSPool}


def read_whole(resp, deadline, limit=MAX_ANSWER):
    """Read ``resp``'s body now, the deadline extended by a second per ANSWER_RATE bytes
    that came (a large answer over a slow link is not cut; a trickle gains nothing), at most
    ``limit`` bytes of it (AnswerTooLarge: its connection closed, never pooled)."""
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        resp.close()
        raise AnswerTooLarge(f"an answer went past {limit} bytes (it declared {declared}; a "
                             f"broken or hostile endpoint: etcd's are far smaller)")
    body = bytearray()
    for chunk in resp.iter_content(WATCH_READ):
        body += chunk
        if len(body) > limit:
            resp.close()
            raise AnswerTooLarge(f"an answer went past {limit} bytes without its end (a "
                                 f"broken or hostile endpoint: etcd's are far smaller)")
        deadline.extend(len(chunk) / ANSWER_RATE)
    resp._content = bytes(body)         # what resp.content, .text and .json() read
    resp.close()                        # (read whole: its connection back to the pool)


class EtcdRefused(EtcdError):
    """etcd answered a call with an error of its own (auth on and no user given, a user
    without read access to the prefix): it is reachable, and waiting will not help. Said as
    "etcd unreachable", the operator looked for a network problem."""


# What to do about etcd's refusals an operator meets (matched in its error's text); {access}:
# what the refused call needs
REFUSAL_REMEDIES = (
    ("user name is empty", "etcd has authentication enabled: set [etcd] username and "
                           "password"),
    ("permission denied", "the etcd user lacks access to the prefix: grant its role {access} "
                          "on it (etcdctl role grant-permission ROLE --prefix=true {access} "
                          "PREFIX/)"),
    ("database space exceeded", "etcd's database reached its quota (the NOSPACE alarm: "
                                "writes refused): compact and defragment it, then "
                                "etcdctl alarm disarm"),
)

# The calls that write (a lease's revocation deletes its keys): a refused `routes put` or
# `register` was told to grant read, which its user had
WRITE_CALLS = ("/v3/kv/put", "/v3/kv/txn", "/v3/kv/deleterange", "/v3/lease/revoke")


def refusal_remedy(text, path=""):
    """'; <what to do>' for an etcd refusal (of the call to ``path``) an operator can fix,
    else ''."""
    access = "readwrite" if path in WRITE_CALLS else "read"
    return next((f"; {remedy.format(access=access)}" for said, remedy in REFUSAL_REMEDIES
                 if said in text), "")


# etcd's words for a member whose apply loop is behind (ErrTooManyRequests)
BEHIND = "too many requests"


def _member_behind(resp):
    """Is a 429 one member's "too many requests"? etcd's gateway answers 429 for its
    ResourceExhausted, "database space exceeded" too: the cluster's NOSPACE alarm, which
    every member answers alike, said as "no etcd endpoint answered" (a network problem)
    when it was passed over."""
    return BEHIND in resp.text


class Compacted(EtcdError):
    """The revision to watch from was compacted away; a full reload is needed."""

    def __init__(self, compact_revision=None):
        kept = "" if compact_revision is None else f" (oldest kept: {compact_revision})"
        super().__init__(f"revision compacted{kept}")
        self.compact_revision = compact_revision


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _unb64(text):
    return base64.b64decode(text) if text else b""


def _key(text):
    """A key as text. etcd keys are bytes: one that is not UTF-8 (etcdctl takes any) keeps
    its bad bytes as \\xNN, so it is rejected by name like any bad id, never a crash of the
    sync process at each full load."""
    return _unb64(text).decode(errors="backslashreplace")


def json_of(resp):
    """An answer's JSON, or None when it is none. Nested past Python's recursion limit
    (``[`` 100,000 times: a broken proxy, a hostile host), json raises RecursionError, no
    ValueError: it left the sync process, which died of it at each start on that endpoint,
    and the members after it were never asked."""
    try:
        return resp.json()
    except (ValueError, RecursionError):
        return None


def error_text(error):
    """An error etcd's JSON gateway sent (``{"grpc_code", "http_code", "message",
    "http_status"}``) as a log line says it: its message and code, not a Python dict."""
    if isinstance(error, dict) and error.get("message"):
        code = error.get("grpc_code", error.get("code", "?"))     # (unary answers: "code")
        return f"{error['message']} (gRPC code {code})"
    return str(error)


def prefix_end(prefix):
    """etcd's range_end for "every key starting with prefix"."""
    data = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    for i in range(len(data) - 1, -1, -1):
        if data[i] < 0xFF:
            data[i] += 1
            return bytes(data[:i + 1])
    return b"\0"


def bounded_lines(chunks, limit):
    """The LF-ended lines of a stream of byte chunks (without the LF; a last unended one at
    the end); WatchLost when one grows past ``limit`` bytes before its end."""
    pending = bytearray()
    for chunk in chunks:
        scan, start = len(pending), 0       # the bytes before ``scan`` hold no LF
        pending += chunk
        while (end := pending.find(b"\n", scan)) >= 0:
            yield bytes(pending[start:end])
            start = scan = end + 1
        del pending[:start]
        if len(pending) > limit:
            raise WatchLost(f"a watch message went past {limit} bytes without its end")
    if pending:
        yield bytes(pending)


def answer_shaped(method):
    """An answer of etcd's without the fields the method reads (or of other types) is that
    call failing, an EtcdError the sync process retries with backoff, not a KeyError out of
    its loop."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise EtcdError(f"etcd's answer to {method.__name__} is malformed: "
                            f"{type(exc).__name__}: {exc}") from None
    return call


class EtcdClient:
    def __init__(self, endpoints, timeout=2.0, username=None, password=None, ca_file=None,
                 cert_file=None, key_file=None, password_file=None):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.username, self.password = username, password
        # read at each authentication (a helper does not read it as it starts: settings.
        # READ_SECRET_FILES), even when the conf's parse read it too (``password``): a
        # `gwserver register` that outlived a rotation (etcd and the file) authenticated
        # with the old one for good, and its instance left the service as its lease ran out
        self.password_file = password_file
        self.session = requests.Session()
        self.session.trust_env = False          # never route etcd through an HTTP proxy
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _HeldAdapter())
        self.deadline = CallDeadline()
        if ca_file:
            self.session.verify = ca_file
        if cert_file:
            self.session.cert = (cert_file, key_file) if key_file else cert_file
        self._current = 0
        self._token = None
        self._partial = 0               # bytes of a watch message not whole yet
        self.cluster_id = None          # from the last response header (a decimal string)

    # -- transport -------------------------------------------------------------------------------

    def _post(self, path, body, stream=False, timeout=None):
        """The answer of the first endpoint that gives one, starting from the one that answered
        last: its JSON object, or with ``stream`` (a watch) the response itself."""
        errors, rejected = [], None
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                resp = self._send(endpoint, path, body, stream, timeout)
            except AnswerTooSlow as exc:
                errors.append(f"{endpoint}: {exc}")
                continue
            except AnswerTooLarge as exc:
                # Said even when the next member answers: an endpoint that floods is a
                # broken proxy or a hostile host in the list, for the operator to remove.
                log.warning("etcd endpoint %s: %s; asking the next one", endpoint, exc)
                errors.append(f"{endpoint}: {exc}")
                continue
            except (requests.RequestException, OSError) as exc:
                # (OSError: requests' own for a ca_file gone under the running process, "Could
                # not find a suitable TLS CA certificate bundle", no RequestException: it left
                # the sync process with a traceback, dying again at each restart's first call)
                errors.append(f"{endpoint}: {describe(exc)}")
                continue
            except AuthRejected as exc:
                # The next member is asked all the same (one may lag a password change),
                # but if none answers, the refusal is the problem named.
                rejected = rejected or exc
                errors.append(f"{endpoint}: credentials refused")
                continue
            except AuthFailed as exc:
                # That endpoint failing, like one that answers the call itself with 5xx: the
                # next is asked. Raised out of the loop, it was asked first again and again,
                # and a healthy member after it never was.
                errors.append(f"{endpoint}: {exc}")
                continue
            # 429 "too many requests" (a member whose apply loop is behind): that member
            # failing, as a 5xx is. Raised as a refusal, the next member was never asked
            # while the first listed one lagged. (Not every 429: _member_behind.)
            if resp.status_code >= 500 or resp.status_code == 401 or \
                    resp.status_code == 429 and _member_behind(resp):
                errors.append(f"{endpoint}: HTTP {resp.status_code} "
                              f"{self._masked(resp.text)[:200]}")
                resp.close()
                if resp.status_code == 401 and self.username:
                    self._token = None          # expired token: authenticate again next call
                continue
            if stream and resp.status_code == 200:
                self._current = index
                return resp
            data = json_of(resp)
            if not isinstance(data, dict) or resp.status_code == 200 and not \
                    isinstance(data.get("header", data.get("result")), dict):
                # No etcd answer, whatever its status (a load balancer's page, a web server on
                # a misrouted port: 200 or 404 alike; etcd heads every answer with a header,
                # or a stream's, lease keepalive's, with a result holding one):
                # that endpoint failing, and the next is asked. Taken as etcd's, it ended the
                # sync process at every start (200) or was asked first again and again (404),
                # and the next endpoint never was.
                errors.append(f"{endpoint}: not an etcd answer: HTTP {resp.status_code} "
                              f"{self._masked(resp.text)[:80]!r}")
                resp.close()
                continue
            self._current = index
            if resp.status_code != 200:
                text = self._masked(error_text(data) if data.get("message") else
                                    resp.text)[:200]
                raise EtcdRefused(f"{endpoint}{path}: HTTP {resp.status_code} {text}"
                                  f"{refusal_remedy(text, path)}")
            return data
        if rejected is not None:
            raise AuthRejected(f"{rejected} ({'; '.join(errors)})")
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    def _send(self, endpoint, path, body, stream, timeout):
        """One POST to ``endpoint``; with auth, sent again once with a new token when etcd
        says ours is no longer valid (401): a JWT past its ttl, a simple token idle past
        ``--auth-token-ttl`` (a watch that stays quiet does not use it). Answered as a
        failing endpoint, each expiry was an outage: an error in the log, ``NOT CONNECTED``,
        and a full reload."""
        fresh = self._token is None
        while True:
            resp = self._exchange(endpoint + path, body, self._auth_header(endpoint), stream,
                                  timeout)
            if resp.status_code != 401 or not self.username or fresh:
                return resp
            resp.close()
            self._token, fresh = None, True

    def _exchange(self, url, body, headers=None, stream=False, timeout=None):
        """One POST, its answer read whole within ``self.timeout`` (CallDeadline; with
        ``stream``, its head: the caller keeps the deadline going), or AnswerTooSlow."""
        deadline = self.deadline
        deadline.arm(self.timeout)
        _calling.deadline = deadline
        try:
            resp = self.session.post(url, json=body, stream=True, headers=headers,
                                     timeout=(self.timeout, timeout or self.timeout))
            if not stream or resp.status_code != 200:     # (a watch refused: its error)
                read_whole(resp, deadline)
                deadline.disarm()
            return resp
        except BaseException as exc:
            deadline.disarm()
            # (ValueError, OSError: a TLS socket shut by the deadline's thread mid-read)
            if isinstance(exc, (requests.RequestException, ValueError, OSError)) and \
                    deadline.expired:
                raise AnswerTooSlow(f"no whole answer within {self.timeout:g}s (it trickles, "
                                    f"or stalls mid-answer)") from None
            raise

    def _auth_header(self, endpoint):
        if not self.username:
            return None
        if self._token is None:
            self._token = self._authenticate(endpoint)
        return {"Authorization": self._token}

    def _authenticate(self, endpoint):
        """A token from ``endpoint``, or AuthFailed saying why: etcd's reason, if it gave
        one (a wrong password reads as one); never the body of an answer that is not etcd's.
        What we sent is the password: a WAF's page or an echo service that quotes it put it
        in the log, status.json, /admin/config and ``routes status``."""
        if self.password_file:
            from ..settings import Invalid, read_secret_file
            try:
                self.password = read_secret_file(self.password_file)
            except Invalid as exc:
                raise PasswordUnreadable(f"etcd.password_file: {exc}") from None
        resp = self._exchange(endpoint + "/v3/auth/authenticate",
                              {"name": self.username, "password": self.password})
        data = json_of(resp)
        token = data.get("token") if isinstance(data, dict) else None
        if resp.status_code == 200 and isinstance(token, str) and token:
            return token
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            reason = self._masked(error_text(data))
            if 400 <= resp.status_code < 500:
                # etcd's own no (400: a wrong password or user, auth not enabled): the
                # user named, so the operator sees which credentials; never the password
                user = self._masked(json.dumps(self.username))
                raise AuthRejected(f"etcd authentication failed for user {user}: HTTP "
                                   f"{resp.status_code} {reason}")
        else:
            kind = resp.headers.get("Content-Type") or "no Content-Type"
            reason = f"not an etcd answer ({self._masked(kind)[:80]!r})"
        raise AuthFailed(f"etcd authentication failed: HTTP {resp.status_code} {reason}")

    def _masked(self, text):
        """An endpoint's answer, quoted in an error (the log, status.json, /admin/config),
        without our secrets: one that is not etcd (a proxy's page, an echo service) may quote
        the request, and with it the token or the password, raw or JSON-escaped."""
        for secret in (self.password, self._token):
            if isinstance(secret, str) and secret:
                for form in {secret, json.dumps(secret)[1:-1]}:
                    text = text.replace(form, "***")
        return text

    def _call(self, path, body):
        data = self._post(path, body)
        header = data.get("header")
        if isinstance(header, dict):
            self.cluster_id = header.get("cluster_id", self.cluster_id)
        return data

    # -- KV ----------------------------------------------------------------------------------------

    @answer_shaped
    def range_prefix(self, prefix, created=False):
        """Return (revision, [(key, value, mod_revision)]) for every key under ``prefix``;
        with ``created``, each item's create_revision after its mod_revision."""
        data = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end":
                                           _b64(prefix_end(prefix))})
        revision = int(data["header"]["revision"])
        items = [(_key(kv["key"]), _unb64(kv.get("value")), int(kv["mod_revision"]),
                  *((int(kv["create_revision"]),) if created else ()))
                 for kv in data.get("kvs", [])]
        return revision, items

    def revision(self):
        """The store's current revision (a range that returns nothing)."""
        return self.identity()[1]

    @answer_shaped
    def identity(self, key="\0"):
        """(cluster_id, revision): which etcd history, and where it is now. etcd puts both in
        every response header; revisions alone restart in a new cluster or a restored one.
        Read as a count of ``key`` (nothing fetched): the sync passes its prefix, since a
        user granted the prefix alone, as the refusal's remedy says, is refused "\0"."""
        data = self._call("/v3/kv/range", {"key": _b64(key), "count_only": True})
        return data["header"].get("cluster_id"), int(data["header"]["revision"])

    def compacted(self, prefix, revision):
        """True if ``revision`` can no longer be read (etcd compacted it away)."""
        try:
            self._call("/v3/kv/range", {"key": _b64(prefix), "range_end":
                                        _b64(prefix_end(prefix)), "count_only": True,
                                        "revision": str(revision)})
        except EtcdUnavailable:
            raise
        except EtcdError as exc:
            return "compacted" in str(exc)
        return False

    @answer_shaped
    def changes_since(self, prefix, revision, current):
        """How many keys under ``prefix`` etcd changed after ``revision``, up to ``current``:
        put (a mod_revision past it) or deleted (fewer keys at ``current`` than at
        ``revision`` with the new ones counted). Two reads of keys and counts, no values.
        Compacted if either was compacted away (etcd may compact past ``current`` between
        the two reads: a refusal of ours to say, the sync said "etcd refused" of a healthy
        cluster)."""
        span = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        then = self._read_kept("/v3/kv/range", {**span, "count_only": True,
                                                "revision": str(revision)})
        # (etcd's count is of the whole range, before min_mod_revision picks the keys)
        now = self._read_kept("/v3/kv/range", {**span, "keys_only": True,
                                                "revision": str(current),
                                                "min_mod_revision": str(revision + 1)})
        put = now.get("kvs", [])
        created = sum(1 for kv in put if int(kv.get("create_revision", 0)) > revision)
        deleted = int(then.get("count", 0)) + created - int(now.get("count", 0))
        return len(put) + max(deleted, 0)

    def _read_kept(self, path, body):
        """A read at a past revision: Compacted if etcd no longer keeps it."""
        try:
            return self._call(path, body)
        except EtcdRefused as exc:
            if "compacted" in str(exc):
                raise Compacted() from None
            raise

    @answer_shaped
    def mod_revision_at(self, key, revision):
        """The mod_revision of ``key``'s value at ``revision``, None if it had none then
        (Compacted if etcd no longer keeps that revision)."""
        data = self._read_kept("/v3/kv/range", {"key": _b64(key), "keys_only": True,
                                                "revision": str(revision)})
        kvs = data.get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else None

    @answer_shaped
    def value_at(self, key, revision):
        """``key``'s (value, mod_revision) at ``revision``, None if it had none then
        (Compacted if etcd no longer keeps that revision)."""
        data = self._read_kept("/v3/kv/range", {"key": _b64(key), "revision": str(revision)})
        kvs = data.get("kvs", [])
        return (_unb64(kvs[0].get("value")), int(kvs[0]["mod_revision"])) if kvs else None

    @answer_shaped
    def get(self, key):
        data = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs", [])
        return _unb64(kvs[0].get("value")) if kvs else None

    @answer_shaped
    def put(self, key, value, lease=None):
        """Store ``value`` (attached to ``lease`` if given); return the revision of the write."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        data = self._call("/v3/kv/put", body)
        return int(data["header"]["revision"])

    @answer_shaped
    def txn_put(self, items):
        """Put every (key, value) of ``items`` in one transaction (all or none); return the
        revision of the write."""
        body = {"success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}
                            for key, value in items]}
        data = self._call("/v3/kv/txn", body)
        return int(data["header"]["revision"])

    @answer_shaped
    def lease_of(self, key):
        """The lease ``key`` is attached to: 0 for none, or no such key."""
        kvs = self._call("/v3/kv/range", {"key": _b64(key), "keys_only": True}).get("kvs", [])
        return int(kvs[0].get("lease", 0)) if kvs else 0

    @answer_shaped
    def value_and_lease(self, key):
        """(what ``key`` holds, the lease it is attached to: 0 for none), or (None, 0)."""
        kvs = self._call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return (_unb64(kvs[0].get("value")), int(kvs[0].get("lease", 0))) if kvs else (None, 0)

    @answer_shaped
    def claim(self, key, value, lease, same_value=True):
        """Put ``value`` under ``key`` with ``lease`` if the key is absent, or holds ``value``
        already (a registration restarted before its lease ran out; not if ``same_value``
        is false: a live one holds it): None. Else what the key holds (another
        registration's), untouched."""
        put = [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}]
        held = b""
        compares = ({"target": "CREATE", "create_revision": "0"},
                    {"target": "VALUE", "value": _b64(value)})
        for compare in compares[:1 + same_value]:
            data = self._call("/v3/kv/txn", {
                "compare": [{"key": _b64(key), "result": "EQUAL", **compare}],
                "success": put, "failure": [{"request_range": {"key": _b64(key)}}]})
            if data.get("succeeded"):
                return None
            kvs = data["responses"][0]["response_range"].get("kvs", [])
            held = _unb64(kvs[0].get("value")) if kvs else b""
            if kvs and held != value:
                return held
        return held         # (changed between the two: the next turn asks again)

    # -- leases (service registration) -------------------------------------------------------------

    @answer_shaped
    def lease_grant(self, ttl):
        """A new lease of ``ttl`` seconds; returns its id."""
        return int(self._call("/v3/lease/grant", {"TTL": str(int(ttl))})["ID"])

    @answer_shaped
    def lease_keepalive(self, lease):
        """Renew ``lease``; returns the TTL granted, 0 if the lease is gone."""
        data = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease):
        self._call("/v3/lease/revoke", {"ID": str(lease)})

    @answer_shaped
    def delete(self, key):
        data = self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(data.get("deleted", 0))

    def compact(self, revision):
        self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    # -- watch -------------------------------------------------------------------------------------

    def watch_prefix(self, prefix, start_revision, idle_timeout=15.0):
        """Yield (revision, [(kind, key, value, mod_revision)]) batches from ``start_revision``.

        Raises Compacted if that revision is gone, EtcdUnavailable if no endpoint takes the
        watch, WatchLost if the stream breaks or etcd ends it, and returns when it is silent
        for ``idle_timeout`` seconds: the caller resumes from its last revision + 1. The
        silence limit is what turns a partition into a reconnect (etcd's progress
        notifications default to 10 minutes). A lost stream is not resumed blindly: the etcd
        that comes back may be another history at the same revision (ConfigSync.why_reload).
        """
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision),
                                   "progress_notify": True}}
        resp = self._post("/v3/watch", body, stream=True, timeout=idle_timeout)
        last_message = time.monotonic()
        # A message must come whole within idle_timeout of the last one (or of the caller's
        # taking it): a member that trickles (a byte a second, a line never ended) held
        # the watch, silent, for good.
        stream, began = [resp.raw.connection], False
        self.deadline.arm(idle_timeout, stream)
        self._partial = 0               # bytes of a message not whole yet (_counted)
        try:
            for line in bounded_lines(self._counted(resp.iter_content(WATCH_READ)),
                                      MAX_WATCH_MESSAGE):
                if not line:
                    continue
                last_message, self._partial, began = time.monotonic(), 0, True
                self.deadline.disarm()          # (while the caller applies the message)
                message = json.loads(line)
                if "error" in message:
                    raise EtcdError(f"watch at {self.endpoints[self._current]} failed: "
                                    f"{error_text(message['error'])}")
                result = message.get("result", {})
                if result.get("compact_revision") and result.get("canceled"):
                    raise Compacted(int(result["compact_revision"]))
                if result.get("canceled"):
                    reason = str(result.get("cancel_reason", ""))
                    if "auth token" in reason:
                        self._token = None      # expired since the last call: a new one next
                    raise WatchLost(f"etcd cancelled the watch: {reason}")
                header = result.get("header", {})
                self.cluster_id = header.get("cluster_id", self.cluster_id)
                revision = int(header.get("revision", 0))
                events = [("delete" if event.get("type") == "DELETE" else "put",
                           _key(event["kv"]["key"]), _unb64(event["kv"].get("value")),
                           int(event["kv"].get("mod_revision", revision)))
                          for event in result.get("events", [])]
                if result.get("created") and not events:
                    # Its header is etcd's revision now, but what came after start_revision
                    # is still to come (the catch-up): taken as seen, a watch that hung
                    # before its catch-up was resumed past it, the changes lost for good.
                    revision = start_revision - 1
                elif len({event[3] for event in events}) >= WATCH_BATCH_REVISIONS:
                    # A watch catching up gets its events WATCH_BATCH_REVISIONS revisions a
                    # message, each headed with etcd's revision *now*: taken as seen, a
                    # watch held after one such message (a proxy) was resumed past the
                    # rest, lost for good, and the catch-up check (watched_all) passed.
                    revision = max(event[3] for event in events)
                yield revision, events
                last_message = time.monotonic()
                self.deadline.arm(idle_timeout, stream)
        except (requests.RequestException, ValueError, KeyError, TypeError,
                AttributeError, RecursionError) as exc:     # (a message not shaped as etcd's)
            # The cut's read error can come before its thread has said it expired (it says
            # so under the lock it cuts under): asked at once, a watch whose message never
            # came whole was often taken for a quiet one, resumed on the same member.
            self.deadline.disarm()
            if self.deadline.expired:
                return self._cut_watch(idle_timeout, began)
            if time.monotonic() - last_message >= idle_timeout * 0.9:
                log.info("etcd watch silent for %.0fs; resuming it", idle_timeout)
                return
            raise WatchLost(f"watch stream broke: {describe(exc)}") from None
        finally:
            self.deadline.disarm()
            resp.close()
        if self.deadline.expired:       # (cut at a chunk's end: read as the stream's end)
            return self._cut_watch(idle_timeout, began)
        raise WatchLost("etcd closed the watch stream")

    def _counted(self, chunks):
        """A watch's chunks, the deadline extended for each as read_whole does."""
        for chunk in chunks:
            self._partial += len(chunk)
            self.deadline.extend(len(chunk) / ANSWER_RATE)
            yield chunk

    @property
    def endpoint(self):
        """The endpoint calls and watches go to now."""
        return self.endpoints[self._current]

    def move_on(self):
        """Leave the current endpoint (one that failed the sync) for the next; -> the one
        left."""
        left = self.endpoint
        self._current = (self._current + 1) % len(self.endpoints)
        return left

    def _cut_watch(self, idle_timeout, began):
        """The watch's deadline passed: silence after its first message (resumed), or a
        message begun and not ended within it, or not even the first (etcd sends it at
        once): a member that trickles or hangs. The next one is asked then, and a full load
        follows, since the stream broke. (urllib3 reads a chunk whole before it gives any
        of it: a message trickled in one chunk shows only as no message.)"""
        if began and not self._partial:
            log.info("etcd watch silent for %.0fs; resuming it", idle_timeout)
            return
        endpoint = self.move_on()
        raise WatchLost(f"watch at {endpoint}: no whole message within {idle_timeout}s"
                        f"{'' if began else ' of its start'} (it trickles, or hangs)")
