"""The one registry of settings. Each is declared once: section, name, check, default, doc.

``load_conf(path)`` reads a TOML file, validates every key (unknown keys are errors), compiles the
static routes and returns a ``Conf``; on any problem it raises ConfigError listing all of them, so a
bad file never starts a half-configured server. ``reference_toml()`` renders the documented
reference that conf/gwserver.toml carries.
"""
import errno
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field as dataclass_field
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import unquote_plus

from .core.accesslog import field_name
from .core.chain import build_chain
from .core.consumers import CONSUMER_ID, compile_consumers
from .core.realip import UNIX_PEERS, network_of
from .core.routes import (MAX_POOL_SIZE, ROUTE, UPSTREAM, compile_route, link_chain,
                          make_upstream, path_problems_beside, undefined_upstream,
                          unreachable_paths, upstream_id_string)
from .core.router import Router
from .core.schema import (Field, Invalid, Schema, absolute_path, absolute_path_or_empty,
                          boolean, file_path, integer, join, list_of, map_of, never_quoted,
                          number, one_of, show, string)
from .errors import ConfigError
from .files import (FileRefused, checks_files, client_files_problems, open_regular,
                    read_bounded, read_regular)
from .net.addresses import bound_address, listener_addresses
from .redact import mask_userinfo, redis_py_reading, redis_url_parts


def is_port_number(text):
    """ASCII digits, few enough for int(): str.isdigit() takes "²" (which int() refuses) and
    int() refuses over 4,300 digits; either was a ValueError, "a value could not be checked"."""
    return text.isascii() and text.isdigit() and len(text) <= 10


def bind_address(value):
    if not isinstance(value, str):
        raise Invalid(f"must be a \"host:port\" string, got {show(value)}")
    if value.startswith("unix:"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not is_port_number(port) or not host:
        raise Invalid(f"must be \"host:port\" (IPv6 as \"[::1]:port\"), got {show(value)}")
    # gunicorn's "tcp://host:port" is host:port (it served; refused as an IPv6 spelling,
    # a conf that ran no longer started)
    host = host.removeprefix("tcp://")
    if ":" in host or "[" in host or "]" in host:
        # An IPv6 address without its brackets ("::1:8080") or with one of them passed, and
        # gunicorn's parse failed at the start (a traceback: "'' is not a valid port
        # number") or the reload ("unexpected error: RuntimeError ...").
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            ipaddress.IPv6Address(inner or "")
        except ValueError:
            raise Invalid(f"an IPv6 address is written in brackets, then its port "
                          f"(\"[::1]:8080\"), got {show(value)}") from None
        if "%" in inner:
            # ipaddress takes a scope id ("fe80::1%eth0"), gunicorn's listener does not:
            # `check` said ok and `run` could not listen ("Address family for hostname not
            # supported"), or a reload failed
            raise Invalid(f"an IPv6 scope id (\"%{inner.partition('%')[2]}\") cannot be "
                          f"listened on: bind a global or unique-local address, or \"[::]:"
                          f"{port}\" (every address) with an ip_restriction, got "
                          f"{show(value)}")
    if not 0 < int(port) < 65536:
        # "127.0.0.1:0" is host:port to whoever wrote it: say what is wrong (port 0 would
        # be a new port at each start, which no client or balancer could be pointed at)
        raise Invalid(f"port {int(port)} is not one to listen on: give a port from 1 to "
                      f"65535, got {show(value)}")
    return value


MAX_WORKERS = 1024     # a typo's fork storm is refused, not started


def worker_count(value):
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"must be a positive integer or \"auto\", got {show(value)}")
    if value > MAX_WORKERS:
        raise Invalid(f"must be at most {MAX_WORKERS} (one per core is the rule), "
                      f"got {show(value)}")
    return value


def resolve_workers(value):
    """The number of workers ``server.workers`` asks for: "auto" is one per usable core."""
    if value != "auto":
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_state_dir():
    """Where host state lives when ``server.state_dir`` is empty: the runtime directory, as
    nginx keeps its pid and locks under /run; a per-user one for an unprivileged demo run."""
    runtime = systemd_runtime_dir()
    if runtime:
        return os.path.join(runtime, "state")
    base = "/run/gwserver"
    if os.access(base if os.path.isdir(base) else "/run", os.W_OK):
        return os.path.join(base, "state")
    user = os.environ.get("XDG_RUNTIME_DIR")
    user = os.path.join(user, "gwserver") if user else shared_tmp_base()
    return os.path.join(user, "state")


def shared_tmp_base():
    """The last resort of default_state_dir: under /tmp, where another local user could
    make the directory first (state_dir_problem)."""
    return f"/tmp/gwserver-{os.getuid()}"


def state_dir_problem(path):
    """Why the state directory ``path`` is not to be trusted, or None. Only the default's
    last resort under /tmp is judged (files.foreign_dir): a state_dir the conf names is the
    operator's choice, as nginx's paths are, and one in a directory a service account owns
    is a common, deliberate layout."""
    if not path.startswith(shared_tmp_base() + os.sep):
        return None
    from .files import foreign_dir
    return foreign_dir(path)


def tmpfs_dir(runtime_first=False):
    """A directory in memory for files written often and kept by no one: the workers'
    heartbeat files and the metrics files. /dev/shm when there is one (gunicorn's docs advise
    it: the heartbeat's fchmod can block a worker on a disk-backed /tmp, which Debian's /tmp
    and systemd's PrivateTmp= are), or systemd's runtime directory (tmpfs under /run, removed
    when the unit stops: ``runtime_first`` for what a killed master would leave behind);
    else None: tempfile's own default."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) \
        else None
    runtime = systemd_runtime_dir()
    return (runtime or shm) if runtime_first else (shm or runtime)


def worker_tmp_problems(directory):
    """The master creates each worker's heartbeat file there before it forks: a directory it
    cannot create files in (not the service user's, /proc) raised in the master's main loop
    on a reload, and the master exited. Tried by creating one, as the master would."""
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=directory, prefix="gwserver-check-"):
            return []
    except OSError as exc:
        return [f"server.worker_tmp_dir: cannot create the workers' heartbeat files in "
                f"{directory}: {exc.strerror}"]


def systemd_runtime_dir():
    """The unit's first RuntimeDirectory= (systemd sets $RUNTIME_DIRECTORY), or None."""
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None


def cidr(value):
    if not isinstance(value, str):
        raise Invalid(f"must be an address or CIDR string like \"10.0.0.0/8\", got {show(value)}")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(f"must be an IPv4 or IPv6 address or CIDR, got {show(value)}") from None
    return value


def cidrs_of(peers):
    """The CIDRs of a trusted_proxies or identity_proxies list, "unix:" left out."""
    return [c for c in peers if c != UNIX_PEERS]


def anyone_in(peers):
    """The CIDRs of ``peers`` that take every address (network_of: "::ffff:0:0/96" is
    0.0.0.0/0, every IPv4 client, as peers are matched)."""
    return [c for c in cidrs_of(peers) if network_of(c).prefixlen == 0]


def proxy_peer(value):
    """A CIDR, or "unix:": the peers of the unix: listeners (a proxy on this host)."""
    if value == UNIX_PEERS:
        return value
    try:
        return cidr(value)
    except Invalid:
        raise Invalid(f"must be an IPv4 or IPv6 address or CIDR, or \"unix:\" (the peers of "
                      f"unix: listeners), got {show(value)}") from None


# gunicorn reads 0 as "no limit" for limit_request_line and limit_request_field_size; the
# gateway's own parser (client/http1.py, client/h2server.py) always bounds a request head.
NO_LIMIT = {0: "gunicorn's 0, no limit, is not taken: the gateway always bounds a request "
               "head"}
# what a C int holds: listen(2)'s backlog, gevent's Pool size
C_INT_MAX = 2 ** 31 - 1


SERVER = Schema(
    Field("bind", list_of(bind_address, min_items=1), lambda: ["127.0.0.1:8080"],
          "addresses to listen on, as \"host:port\" (\"[::]:8080\" for IPv6: IPv6-only "
          "beside an IPv4 address on its port, as nginx's listen [::]:80, else dual-stack)"),
    Field("workers", worker_count, "auto",
          "worker processes: a positive integer, or \"auto\" for one per core (nginx's "
          "worker_processes auto)"),
    # past a C int, gevent's Pool refused it: every worker died as it booted, one a second
    Field("worker_connections", integer(1, C_INT_MAX), 1000,
          "most concurrent client connections per worker"),
    Field("graceful_timeout", number(0, exclusive=True), 30.0,
          "seconds in-flight requests get to finish on reload or stop"),
    Field("max_draining_generations", integer(1), 4,
          "generations of old workers that may drain at once; a reload beyond that stops "
          "the oldest draining generation at once, cutting its connections (HAProxy's "
          "mworker-max-reloads): a reload loop cannot pile up processes"),
    Field("keepalive", number(0), 5.0,
          "seconds an idle client keep-alive connection is kept (HTTP/2: with no stream "
          "open; its PINGs do not extend it); 0 disables keep-alive"),
    Field("timeout", integer(1), 30,
          "seconds a silent worker is given before the master restarts it"),
    Field("helper_timeout", number(1.0), 30.0,
          "seconds a helper (config-sync, health, ocsp, rollouts) may stay silent past the "
          "sign of life it promised before the master kills and restarts it"),
    # listen(2) takes a C int: past it, the start ended in a traceback, a reload half applied
    Field("backlog", integer(1, C_INT_MAX), 2048,
          "listen queue length (the kernel caps it at net.core.somaxconn)"),
    Field("max_requests", integer(0), 0, "restart a worker after this many requests; 0 = never"),
    Field("header_timeout", number(0, exclusive=True), 10.0,
          "seconds a client has to send a complete request head (slowloris guard)"),
    Field("limit_request_line", integer(64, refuse=NO_LIMIT), 8190,
          "longest request line in bytes, 64 or more (gunicorn's 0, no limit, is refused)"),
    Field("limit_request_fields", integer(1), 100, "most header fields in a request"),
    Field("limit_request_field_size", integer(64, refuse=NO_LIMIT), 8190,
          "longest header field in bytes, 64 or more (gunicorn's 0, no limit, is refused)"),
    Field("max_body_size", integer(0), 0,
          "request body limit in bytes for routes that set none; 0 = no limit"),
    Field("request_buffer_size", integer(0, 1 << 30), 65536,
          "bodies up to this many bytes are read whole before the upstream is contacted "
          "(a slow client holds no upstream connection); larger ones stream. Held in memory "
          "per request, so at most 1 GiB (check warns above 64 MiB)"),
    Field("client_body_timeout", number(0, exclusive=True), 10.0,
          "seconds allowed between two reads of a request body (nginx: client_body_timeout)"),
    Field("min_body_rate", integer(0), 1024,
          "bytes a second: when worker_connections is reached and no idle connection is left "
          "to close, the connection sending request body slowest, below this rate over the "
          "time the gateway waited for it (after 5 s; HTTP/2: only when each open stream "
          "waits for its body and none has begun its answer, their bytes together), is "
          "closed for the next client (HTTP/1.1: with a 408); 0 = never. An HTTP/1.1 request "
          "head still coming after 1 s is held to this rate first (0: the slowest head)"),
    Field("send_timeout", number(0, exclusive=True), 60.0,
          "seconds a write to a client may wait for it to read before the connection is "
          "closed (nginx: send_timeout); an HTTP/2 stream waiting for the client's window "
          "has http2.send_timeout"),
    Field("escaped_slashes", one_of("reject", "decode", "keep"), "reject",
          "%2F, %5C and \\ in a path: answer 400, decode to /, or forward encoded "
          "(keep only for upstreams that never decode them)"),
    Field("path_parameters", one_of("reject", "keep"), "reject",
          "; parameters in a path (/admin;x/y, which Tomcat/Jetty/Spring read as /admin/y): "
          "answer 400, or forward (only for upstreams that do not strip them)"),
    Field("merge_slashes", boolean, True,
          "route and forward //a//b as /a/b (off only if no upstream merges slashes itself)"),
    Field("headers_with_underscores", one_of("drop", "reject", "allow"), "drop",
          "request headers named with _ (X_User_Id): drop them, answer 400, or forward "
          "(never X_Forwarded_User and the other spellings of headers the gateway rules on)"),
    Field("trusted_proxies", list_of(proxy_peer), list,
          "peers (CIDRs; \"unix:\" for the peers of unix: listeners) whose real_ip_header "
          "names the client; empty: the peer is the client"),
    Field("identity_proxies", list_of(proxy_peer), list,
          "peers (CIDRs, or \"unix:\") that say who the user is: an authenticating proxy "
          "in front (oauth2-proxy), whose X-Forwarded-User, X-Auth-Request-*, "
          "X-Forwarded-Client-Cert, Remote-User and the like are kept; from anyone else, "
          "trusted_proxies included, they are dropped"),
    Field("real_ip_header", one_of("X-Forwarded-For", "Forwarded"), "X-Forwarded-For",
          "where a trusted proxy puts the client address (walked from the right)"),
    Field("proxy_protocol", list_of(bind_address), list,
          "listeners (of bind or tls.bind) whose connections start with a PROXY protocol "
          "header (v1 or v2) from a TCP load balancer: its address is the client's. Only "
          "peers in trusted_proxies may connect there"),
    Field("via", string(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", "a token (RFC 9110: letters, digits, "
                                                          "!#$%&'*+-.^_`|~)"), "gwserver",
          "the name the gateway gives itself in the Via header of what it relays (RFC 9110 "
          "7.6.3 allows a pseudonym: hide the product, or name the host)"),
    Field("proc_name", string(r"[A-Za-z0-9_.-]+", "a short name"), "gwserver",
          "prefix of process titles"),
    Field("state_dir", absolute_path_or_empty, "",
          "host state of workers and helpers (health, ejections, per-host limits, OCSP); "
          "one instance each. Empty: /run/gwserver/state, else a per-user runtime dir"),
    Field("worker_tmp_dir", absolute_path_or_empty,
          "", "directory of the workers' heartbeat files (gunicorn's worker_tmp_dir; keep it "
          "on tmpfs: on a disk-backed one the heartbeat can block a worker). Empty: /dev/shm, "
          "else systemd's runtime directory"),
    doc="The listener and the worker processes (gunicorn's names and meanings).",
)

UPSTREAM_DEFAULTS = Schema(
    Field("pool_size", integer(1, MAX_POOL_SIZE), 64,
          "keep-alive connections kept per target per worker"),
    Field("block_when_full", boolean, False,
          "when every pooled connection is busy: another target, then wait for one (true); "
          "or open an extra one"),
    Field("pool_timeout", number(0, exclusive=True), 5.0,
          "seconds to wait for a free connection when block_when_full is true"),
    Field("connect_timeout", number(0, exclusive=True), 5.0,
          "seconds to open an upstream connection: its name's lookup, the TCP "
          "connect and a TLS handshake together"),
    Field("keepalive_timeout", number(0, exclusive=True), 60.0,
          "seconds a pooled upstream connection may stay idle before it is closed (nginx's "
          "upstream keepalive_timeout): a firewall or NAT that forgets an idle flow drops "
          "what is sent on it without a word"),
    Field("read_timeout", number(0, exclusive=True), 60.0,
          "seconds to wait for each read from an upstream, and for each head of an answer "
          "whole (the first 16 interim 1xx heads each their own); a websocket tunnel idle this "
          "long both ways is closed"),
    Field("max_response_head", integer(1024), 65536,
          "largest upstream response head in bytes (1xx heads included); larger: 502"),
    Field("h2_max_empty_frames_per_second", integer(1), 10000,
          "HTTP/2 upstreams, per connection and worker: frames with nothing to relay per "
          "second (WINDOW_UPDATE, PING, SETTINGS, empty DATA...; two more per DATA frame "
          "sent) before the connection is closed as a flood; DATA frames under 1 KiB that "
          "do not end their stream past this many a second are paced (not read until the "
          "second is over): raise it for gRPC servers streaming more small messages"),
    Field("retries", integer(0, 5, "an integer from 0 to 5"), 1,
          "retries after the first try, on another target when one is left (the default "
          "of a retry policy's attempts): a failed connect is retried for any method "
          "(nothing was sent), the rest as the policy's on and methods say (docs/health.md)"),
    Field("retry_budget_percent", number(0), 20.0,
          "retries per upstream may be at most this % of its requests in the last 10 s ..."),
    Field("retry_budget_min_per_second", number(0), 3.0,
          "... plus this many per second, so a quiet upstream can still retry"),
    Field("health_probes_per_second", integer(1), 1000,
          "host-wide: the most active health probes a second the health checker sends, over "
          "all targets; when the upstreams' intervals ask for more, every interval is "
          "stretched by one factor (logged). No upstream overrides it"),
    doc="How workers talk to upstreams unless an upstream or route says otherwise.",
)

LOG = Schema(
    Field("level", one_of("debug", "info", "warning", "error", "critical"), "info",
          "error log level"),
    Field("access_log", boolean, True, "write one access-log line per request"),
    Field("access_log_path", absolute_path_or_empty,
          "", "file the access lines are appended to (SIGUSR1 to the master reopens it, for "
          "logrotate); empty: stderr (journald)"),
    Field("access_format", one_of("json", "common"), "json", "access-log line format"),
    Field("access_fields", list_of(field_name), list,
          "access-log fields in order; empty: the format's default (docs/operations.md "
          "lists the fields and the defaults)"),
    doc="Logs go to stderr, for journald.",
)

def endpoint_url(value):
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise Invalid(f"must be an http:// or https:// URL, got {show(value)}")
    if "@" in value.partition("://")[2].partition("/")[0]:
        # (never quoted: it holds a password) etcd takes no credentials from a URL, and an
        # endpoint is shown in the log, `routes status` and /admin/config
        raise Invalid("must not hold a user or password: use etcd.username and "
                      "etcd.password_file")
    return value.rstrip("/")


ETCD = Schema(
    Field("endpoints", list_of(endpoint_url, min_items=1), lambda: ["http://127.0.0.1:2379"],
          "etcd client URLs; all members of the cluster, tried in turn"),
    Field("prefix", string(r"/[A-Za-z0-9_./-]*[A-Za-z0-9_-]", "a key prefix like /gwserver"),
          "/gwserver", "routes live at PREFIX/routes/ID, upstreams at PREFIX/upstreams/ID"),
    Field("timeout", number(0, exclusive=True), 2.0,
          "seconds for one etcd call: its whole answer, a second more per 256 KiB of it (a "
          "member that trickles is passed over), not each read"),
    Field("watch_idle_timeout", number(1.0), 15.0,
          "seconds of silence after which a watch is re-established (partition detection)"),
    Field("backoff_max", number(0.1), 10.0, "cap of the reconnect backoff, seconds"),
    Field("username", string(what="a user name"), None, "etcd user (auth enabled)"),
    Field("password", never_quoted(string(what="a password", allow_empty=True)), None,
          "etcd password"),
    Field("password_file", absolute_path, None,
          "file holding the etcd password instead; read at start and on each reload (a "
          "systemd LoadCredential= copy is not refreshed by a reload: docs/operations.md)"),
    Field("ca_file", file_path, None, "CA bundle for https endpoints"),
    Field("cert_file", file_path, None, "client certificate (mTLS)"),
    Field("key_file", file_path, None, "client key (mTLS)"),
    Field("runtime_dir", absolute_path, "/run/gwserver",
          "where the sync process publishes the table to workers (tmpfs)"),
    Field("snapshot_path", absolute_path,
          "/var/lib/gwserver/routes-snapshot.json",
          "last good table, served at start while etcd is unreachable"),
    doc="Routes and upstreams from etcd. Without this section the static routes are the table.",
)

ADMIN = Schema(
    Field("bind", lambda value: value if value == "" else bind_address(value),
          "127.0.0.1:9180",
          "admin listener (/metrics, /-/healthz, /-/ready, /admin/...); keep it off the internet"),
    Field("token", never_quoted(string(r"[!-~]*", "printable ASCII without spaces",
                                       allow_empty=True)), "",
          "bearer token required for everything but the health probes; empty: none"),
    Field("token_file", absolute_path_or_empty, "",
          "file holding the token instead, read at start and on each reload (a systemd "
          "LoadCredential= copy is not refreshed by a reload: docs/operations.md); empty: none"),
    Field("metrics", boolean, True, "collect Prometheus metrics (served on /metrics)"),
    Field("metrics_dir", absolute_path_or_empty, "",
          "prometheus multiprocess files, rewritten all the time: keep it on tmpfs. Empty: "
          "a private dir in systemd's runtime directory, else in /dev/shm (made at start, "
          "removed at exit)"),
    doc="The admin listener, served by the workers like any other listener.",
)


class MultiHostUrl(NamedTuple):
    """A redis+sentinel:// or redis+cluster:// URL as the gateway connects with it."""
    password: str | None
    username: str | None    # a Redis 6 ACL user ("user:pw@"); None: the default user
    nodes: list             # [(host, port)]
    path: str               # after the hosts' "/": "mymaster[/db]" (sentinel), "" (cluster)


def parse_multi_host_url(url):
    """redis+sentinel:// or redis+cluster:// URL -> MultiHostUrl, read as redis_url_parts
    reads it (the user part to its last "@", percent-decoded as redis-py decodes a plain
    URL's). Raises Invalid naming the problem (redis-py's URL parser takes one host only)."""
    parts = redis_url_parts(url)
    nodes = []
    for item in parts.hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not is_port_number(port) or not 0 < int(port) < 65536:
            raise Invalid(f"needs host:port for every node, got {show(item)} in {show(url)}")
        nodes.append((host.strip("[]"), int(port)))
    if parts.query or parts.fragment:
        # Read as part of the path, "?socket_timeout=1" was the master's name, whose
        # Sentinel never knew it (and said it, with any "password=", in every error).
        raise Invalid(f"takes no ?options or #fragment (the gateway sets its timeouts; the "
                      f"password goes in the user part or password_file), got {show(url)}")
    return MultiHostUrl(parts.password, parts.username, nodes, parts.path[1:])


def _multi_host_path(value, path):
    """Raise Invalid unless ``path`` is what the URL's kind takes: a master's name and an
    optional db for a Sentinel ("m/abc" passed, and every worker died as it started, on
    int("abc")), nothing for a Cluster but its one database, 0 ("/0" passed before the one
    reading of redis URLs, and redis-py's cluster URL takes it: refused, configs that
    worked failed to load)."""
    if value.startswith("redis+cluster:"):
        if path not in ("", "0"):
            raise Invalid(f"a Redis Cluster has one database: nothing but /0 goes after the "
                          f"hosts (redis+cluster://host:port,host:port), got {show(value)}")
        return
    name, _, db = path.partition("/")
    # digits int() takes, as a port's: "m/²" (isdigit() takes it) passed, and every worker
    # died as it started on state.store's int(db)
    if not name or db and not is_port_number(db):
        raise Invalid(f"needs the master's name after the hosts, and a db number after it "
                      f"if any (redis+sentinel://host:port/mymaster[/0]), got {show(value)}")


def redis_url(value):
    value = string(r"(redis|rediss|unix|redis\+sentinel|redis\+cluster)://.+",
                   "a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL"
                   )(value)
    if value.startswith(("redis+sentinel:", "redis+cluster:")):
        _multi_host_path(value, parse_multi_host_url(value).path)
        return value
    # As each worker reads it (state.store.connect): a URL it cannot read (a port that is
    # not a number, an option of the wrong type) passed, and every worker died as it
    # started, those of a reload too, until no worker was left serving.
    from redis.connection import parse_url
    try:
        parse_url(value)
    except ValueError as exc:
        raise Invalid(f"redis-py cannot read this URL: {unreadable_url(value, exc)}") \
            from None
    if redis_url_parts(value) != redis_py_reading(value):     # read, but not as written
        raise Invalid(f"redis-py would read this URL's user part as a host, a port or a "
                      f"path, got {show(value)}: a user or password holding \"/\", \"?\" "
                      f"or \"#\" must be percent-encoded (%2F, %3F, %23), and so must an "
                      f"\"@\" in an option's value (%40)")
    _redis_query_whole(value)
    _redis_options_taken(value)
    return value


def _redis_query_whole(value):
    """Raise Invalid if redis-py drops a piece of a URL whose query holds the password: a
    "#" and what follows it (a fragment, never read) or a query piece without "="
    ("?password=Tr0ub4dor&3#horse" is password "Tr0ub4dor" to redis-py). Such a URL passed,
    every worker's AUTH failed, and the dump showed the rest of the password."""
    parts = redis_url_parts(value)
    dropped = "#" in value or any(piece and "=" not in piece
                                  for piece in parts.query.split("&"))
    if dropped and "password" in parts.options():
        raise Invalid(f"redis-py would drop a piece of this URL after a \"#\" or an \"&\" "
                      f"(a fragment, or no name=value), got {show(value)}: an option's value "
                      f"holding \"#\", \"&\" or \"+\" must be percent-encoded (%23, %26, %2B)")


def _redis_options_taken(value):
    """Raise Invalid unless redis-py makes a connection of ``value``'s options (no I/O): one
    it takes no such option for (``?socket_timout=1``, ``ssl_ca_certs`` on redis://)
    passed, and every batch of every worker raised TypeError (a traceback each) while each
    limit fell back to on_store_error."""
    import redis
    try:
        redis.Redis.from_url(value, retry_on_timeout=False, max_connections=1,
                             retry=None).connection_pool.make_connection()
    except TypeError as exc:
        name = re.search(r"argument '([^']*)'", str(exc))
        raise Invalid(f"redis-py takes no option {name.group(1) if name else '(unknown)'!r} "
                      f"in a {value.partition(':')[0]}:// URL, got {show(value)}") from None
    except (ValueError, redis.exceptions.RedisError) as exc:    # ssl_cert_reqs=bogus
        raise Invalid(f"redis-py cannot make a connection of this URL's options: "
                      f"{mask_userinfo(str(exc))[:200]}, got {show(value)}") from None


# Characters that end a URL's user part early: a password holding one (base64's "/") is read
# as host, port and path, and redis-py's error then quotes a piece of it as the "port".
USERINFO_ENDS = ("/", "?", "#")


def unreadable_url(url, exc):
    """redis-py's words on ``url``, with any piece of its user part masked: "Port could not
    be cast to integer value as 's3cr3t'" put (part of) a password with a "/", "?" or "#"
    in the log, master.json and `gwserver reload`'s answer."""
    userinfo = url.partition("://")[2].rpartition("@")[0]
    text = str(exc)
    if not userinfo:
        return text
    quoted = [piece for piece in re.findall(r"'([^']*)'", text) if piece and piece in userinfo]
    for piece in quoted:
        text = text.replace(f"'{piece}'", "'***'")
    if quoted or any(c in userinfo for c in USERINFO_ENDS):
        text += ("; a user or password holding \"/\", \"?\" or \"#\" must be "
                 "percent-encoded (%2F, %3F, %23)")
    return text


REDIS = Schema(
    Field("url", redis_url,
          "redis://127.0.0.1:6379/0",
          "redis://host:port/db; redis+sentinel://host:port,host:port/master_name[/db]; "
          "redis+cluster://host:port,host:port"),
    Field("password_file", absolute_path, None,
          "file holding the Redis password (AUTH), kept out of url; read at start and on "
          "each reload (a systemd LoadCredential= copy is not refreshed by a reload)"),
    Field("timeout", number(0, exclusive=True), 0.05,
          "seconds a decision may wait for Redis before on_store_error applies"),
    Field("pause", number(0), 1.0, "after a Redis error, seconds before asking it again"),
    Field("key_prefix", string(r"[!-~]+", "printable ASCII"), "gw:",
          "prefix of every key (rate limits: {prefix}rl:..., breakers: {prefix}br:...)"),
    doc="Redis for rate limits and breakers. Without it their state is per host (shared by "
        "the host's workers).",
)

TRACING = Schema(
    Field("enabled", boolean, True,
          "read W3C traceparent and B3, start a trace when none came, pass it upstream"),
    Field("b3", boolean, False, "when the gateway starts a trace, also send a B3 header"),
    Field("otlp_endpoint", string(r"https?://.+", "an http(s):// URL", allow_empty=True), "",
          "export the gateway's spans over OTLP/HTTP (needs `pip install gwserver[otel]`); "
          "empty: no export"),
    Field("service_name", string(r"[!-~]+", "printable ASCII"), "gwserver",
          "service.name of exported spans"),
    Field("response_header", string(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "a header name",
                                    allow_empty=True), "X-Trace-Id",
          "response header that returns the trace id to the client; empty: none"),
    doc="Trace context propagation (the trace id is in every access-log line).",
)

CERTIFICATE = Schema(
    Field("cert", absolute_path, doc="PEM chain: the leaf, then its issuers"),
    Field("key", absolute_path, doc="PEM private key of the leaf"),
    Field("hosts", list_of(string(r"(\*\.)?[a-z0-9.-]+", "a host name or *.domain"),
                           min_items=1), None,
          "SNI names served with it (default: the certificate's DNS names)"),
)

TLS = Schema(
    Field("bind", list_of(bind_address, min_items=1), lambda: ["127.0.0.1:8443"],
          "addresses served with TLS (plain HTTP stays on server.bind)"),
    Field("certificates", list_of(CERTIFICATE, min_items=1),
          doc="chosen by SNI; the first is the default"),
    Field("min_version", one_of("TLSv1.2", "TLSv1.3"), "TLSv1.2", "oldest protocol accepted"),
    Field("ciphers", string(r"[A-Za-z0-9:_+!@=-]+", "an OpenSSL cipher string"),
          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
          "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
          "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
          "TLS 1.2 suites (TLS 1.3 suites are OpenSSL's)"),
    Field("alpn", list_of(string(r"[!-~]+", "a protocol id")), lambda: ["h2", "http/1.1"],
          "protocols offered by ALPN, preferred first: h2 (HTTP/2) and http/1.1; leave h2 "
          "out to serve HTTP/1.1 only"),
    Field("strict", boolean, False,
          "refuse an expired or not-yet-valid certificate (default: start, and warn)"),
    Field("handshake_timeout", number(0, exclusive=True), 10.0, "seconds for a TLS handshake"),
    Field("ocsp_stapling", boolean, False,
          "staple OCSP responses fetched from the certificates' responders"),
    Field("ocsp_refresh", number(5), 3600.0, "refetch at least this often (seconds)"),
    Field("ocsp_timeout", number(0, exclusive=True), 5.0, "seconds for one OCSP request"),
    Field("ticket_key_files", list_of(absolute_path), list,
          "session-ticket keys, 48 or 80 bytes each (nginx's format): the first seals new "
          "tickets, all open them; re-read on reload (default: one random key for the "
          "master's life, kept across reloads)"),
    doc="TLS on the listener (pyOpenSSL): SNI, resumption across workers, OCSP stapling.",
)

def h2c_listeners(value):
    """``[http2] h2c``: false (off), true (every server.bind address) or a list of them."""
    if isinstance(value, bool):
        return value
    return list_of(bind_address, what="true, false or a list of server.bind addresses")(value)


HTTP2_CONNECTION = (
    Field("max_concurrent_streams", integer(1, 2 ** 31 - 1), 100,
          "streams a client may have open on one connection (nginx: 128, h2o: 100); streams "
          "still being served after a client reset count too. Each may hold what an HTTP/1.1 "
          "connection does: ~30 KiB, a body read whole (request_buffer_size), an upstream "
          "connection while a streamed body comes (docs/http2.md: what one connection may "
          "hold)"),
    Field("initial_window_size", integer(1024, 2 ** 31 - 1), 262144,
          "bytes of request body a stream may send ahead of the gateway (per stream)"),
    Field("connection_window_size", integer(65535, 2 ** 31 - 1), 1048576,
          "bytes of request bodies all streams of a connection may send ahead of the "
          "gateway's reads. Not the most a connection holds: bodies read whole before the "
          "upstream is contacted are held too (server.request_buffer_size per stream), and "
          "each stream ~30 KiB: about max_concurrent_streams x (30 KiB + "
          "request_buffer_size) + this (docs/http2.md)"),
    Field("max_frame_size", integer(16384, 16777215), 16384,
          "largest frame the gateway accepts (RFC 9113 default 16384)"),
    Field("send_timeout", number(0, exclusive=True), 60.0,
          "seconds a stream waits for the client to open its flow-control window before it "
          "is reset (CANCEL); nginx's send_timeout"),
    Field("head_hold", number(0, maximum=10), 0.2,
          "seconds an answer's head waits for its body's first byte to go out with it (an "
          "upstream failure within them is a whole 502, not a cut stream); then it goes "
          "alone, so an event stream's or a long poll's client has it before the first "
          "event. 0: at once"),
    Field("max_resets_per_second", integer(1), 100,
          "client RST_STREAMs on streams still being served (but those of streams served "
          "0.1 s or more: cancels), and streams the gateway resets "
          "as malformed or refuses (past the first max_concurrent_streams, 100 at least, "
          "after a GOAWAY, 1,000 at most after the client's), per second, before the "
          "connection is closed (GOAWAY ENHANCE_YOUR_CALM; rapid reset, CVE-2023-44487 and "
          "CVE-2025-8671). Per connection: a client's connections have one each "
          "(docs/http2.md)"),
    Field("max_control_frames_per_second", integer(1), 500,
          "PING, SETTINGS and PRIORITY frames per second, ACKs included, before the "
          "connection is closed (GOAWAY ENHANCE_YOUR_CALM); a SETTINGS frame counts one more "
          "per 64 entries; a PING after DATA or HEADERS the gateway sent is free (gRPC's "
          "bandwidth probes)"),
    Field("max_empty_frames_per_second", integer(1), 10000,
          "frames that carry nothing to serve (WINDOW_UPDATE, empty DATA that does not end "
          "its stream, unknown types, frames on a finished stream, CONTINUATIONs under 1 KiB "
          "that do not end their header block) per second before the "
          "connection is closed (GOAWAY ENHANCE_YOUR_CALM); each DATA frame the gateway sends "
          "adds two, for the WINDOW_UPDATEs a downloading client sends back. DATA frames under "
          "1 KiB past this many in a second are paced: the connection is read again when the "
          "second is over"),
)

# One HTTP/2 listener's own values (Envoy: http2_protocol_options per listener; nginx: per
# server): what is not set there is [http2]'s.
HTTP2_LISTENER = Schema(*(Field(f.name, f.check, None, f.doc) for f in HTTP2_CONNECTION))

HTTP2 = Schema(
    Field("h2c", h2c_listeners, False,
          "HTTP/2 with prior knowledge (h2c, RFC 9113 3.3) on plain listeners: false, true "
          "(every server.bind address) or a list of server.bind addresses; HTTP/1.1 is still "
          "served there (the first bytes tell). TLS listeners offer h2 by tls.alpn"),
    *HTTP2_CONNECTION,
    Field("listeners", map_of(HTTP2_LISTENER, bind_address), dict,
          "per HTTP/2 listener (a tls.bind address offering h2, or an h2c address): "
          "[http2.listeners.\"host:port\"] with any of the settings above; unset ones are "
          "these"),
    doc="HTTP/2 from clients: h2 on TLS listeners (ALPN), h2c where enabled (docs/http2.md).",
)


def _resolved(bind):
    """The addresses a bind's listener has (net.addresses); none for one that cannot be
    resolved: it fails to bind, by its own name."""
    try:
        return listener_addresses([bind])
    except OSError:
        return set()


def _holds(a, b):
    """Do the listeners on (ip, port) ``a`` and ``b`` keep each other from binding: the
    same address and port, or a wildcard of the same family on that port."""
    if a[1] != b[1]:
        return False
    a_ip, b_ip = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    return a_ip.version == b_ip.version and (a_ip == b_ip or a_ip.is_unspecified or
                                              b_ip.is_unspecified)


def _overlapping(binds, others):
    """Those of ``binds`` whose listener one of ``others`` keeps from binding: the same
    address and port, or a wildcard of the same family on that port (0.0.0.0:8080 holds
    127.0.0.1:8080; an IPv6 wildcard beside an IPv4 address on its port is IPv6-only,
    server.listeners.socket_type). `check` compared the text: 0.0.0.0:8080 beside an admin
    127.0.0.1:8080 passed, and the start failed, 5 s later, on `Address already in use`
    by the gateway itself."""
    theirs = set().union(*map(_resolved, others)) if others else set()
    return [bind for bind in binds
            if bind in others or any(_holds(a, b) for a in _resolved(bind) for b in theirs)]


def _overlaps_within(name, binds):
    """One list's addresses that an earlier one of it holds (0.0.0.0:8080, then
    127.0.0.1:8080); the same text twice is one listener. By the address each is bound to
    (net.addresses.bound_address), not every address a name resolves to: one role, so no
    listener is told apart by them, and "localhost:8080" beside "[::1]:8080" (two sockets,
    127.0.0.1 and ::1) was refused on a host whose /etc/hosts names ::1 localhost."""
    bound = {bind: bound_address(bind) for bind in binds}
    problems = []
    for index, bind in enumerate(binds):
        held = [b for b in binds[:index] if b != bind and bound[b] and bound[bind] and
                _holds(bound[bind], bound[b])]
        if held:
            problems.append(f"{name}[{index}]: {bind} is already listened on by {held[0]} "
                            f"(the same address, or a wildcard that covers it): keep one")
    return problems


def proxy_protocol_problems(server, tls):
    """PROXY listeners must be listeners, on IP, with someone trusted to speak it. An entry
    names a listener by the rule the worker applies (net.addresses: "[0:0::1]:8443" is
    "[::1]:8443", a host name is resolved as gunicorn resolved it to bind)."""
    listeners = set()
    for bind in set(server["bind"]) | set((tls or {}).get("bind") or ()):
        listeners |= _resolved(bind)
    problems = []
    for bind in server["proxy_protocol"]:
        if bind.startswith("unix:"):
            problems.append(f'server.proxy_protocol: "{bind}" is a unix socket: a proxy on '
                            f'this host names its clients there in X-Forwarded-For '
                            f'(trusted_proxies = ["unix:"]), not in a PROXY header')
            continue
        try:
            named = listener_addresses([bind])
        except OSError as exc:
            problems.append(f'server.proxy_protocol: "{bind}" cannot be resolved: {exc}')
            continue
        if not named & listeners:
            problems.append(f'server.proxy_protocol: "{bind}" is in neither server.bind nor '
                            f'tls.bind')
    # ("unix:" trusts no balancer: the PROXY listeners are on IP, and refused every one)
    if server["proxy_protocol"] and not cidrs_of(server["trusted_proxies"]):
        problems.append("server.proxy_protocol: needs server.trusted_proxies, the load "
                        "balancers that may name a client (anyone else could name any address)")
    return problems


MIN_ADMIN_TOKEN = 16


BUFFER_WARNING = 64 << 20      # request_buffer_size above which check says what it may cost


def buffered_streams_warning(conf):
    """The rest of request_buffer_size's warning when HTTP/2 is served: each stream of a
    connection buffers a body of its own (docs/http2.md: what one connection may hold)."""
    http2, tls = conf.http2, conf.tls
    if http2 is None or not (http2["h2c"] or tls is not None and "h2" in tls["alpn"]):
        return ""
    streams = max([http2["max_concurrent_streams"]] + [
        own["max_concurrent_streams"] for own in http2["listeners"].values()
        if own.get("max_concurrent_streams") is not None])
    return (f", and each HTTP/2 connection up to {streams} times that "
            f"(http2.max_concurrent_streams: a body per stream)")


def has_plain_listener(server, tls):
    """Is a listener on IP not a proxy_protocol one (its peers name clients in
    real_ip_header)? Matched as proxy_protocol_problems matches them (net.addresses)."""
    proxied = set()
    for bind in server["proxy_protocol"]:
        proxied |= _resolved(bind)
    return any(not bind.startswith("unix:") and not _resolved(bind) <= proxied
               for bind in set(server["bind"]) | set((tls or {}).get("bind") or ()))


def conf_warnings(conf):
    """What `gwserver check` should say of a valid conf that is likely not what was meant;
    the master logs the same at start and on each reload. Secrets are never quoted."""
    server, warnings = conf.server, []
    everyone = anyone_in(server["trusted_proxies"])
    if everyone and server["proxy_protocol"]:
        warnings.append(f"server.trusted_proxies holds {', '.join(everyone)}: anyone who can "
                        f"reach a proxy_protocol listener may name any client address")
    # (a listener beside the PROXY ones is a plain one, where the header is walked as ever)
    if everyone and has_plain_listener(server, conf.tls):
        # Every peer a proxy: the walk never meets an untrusted hop, and the client is the
        # first one the client itself wrote (past ip_restriction, a fresh limit each time)
        warnings.append(f"server.trusted_proxies holds {', '.join(everyone)}: any client may "
                        f"name its own address in {server['real_ip_header']} (ip_restriction, "
                        f"limits keyed on the client and the access log take it)")
    everyone = anyone_in(server["identity_proxies"])
    if everyone:
        warnings.append(f"server.identity_proxies holds {', '.join(everyone)}: any client may "
                        f"say who its user is (X-Forwarded-User) to the upstreams")
    buffered = server["request_buffer_size"]
    if buffered > BUFFER_WARNING:
        warnings.append(f"server.request_buffer_size is {buffered} bytes: each request body up "
                        f"to that is held in memory, so {server['worker_connections']} "
                        f"connections per worker may hold "
                        f"{buffered * server['worker_connections'] >> 30} GiB"
                        f"{buffered_streams_warning(conf)}")
    warnings += open_files_warnings(server["worker_connections"])
    warnings += unreachable_paths(conf.static_routes)
    warnings += [f"upstreams.{upstream_id}.service: ignored: an upstream in the conf file "
                 f"serves its targets and does not follow a service (put it in etcd)"
                 for upstream_id, spec in conf.static_upstreams.items()
                 if isinstance(spec, dict) and spec.get("service")]
    admin, token = conf.admin, conf.admin["token"]
    if admin["bind"] and not token and not _loopback_only(admin["bind"]):
        warnings.append(f"admin.bind {admin['bind']} is not a loopback address and admin has "
                        f"no token: anyone who can reach it reads /metrics and the /admin/ "
                        f"views (the configuration's source and reload status, every route "
                        f"and upstream with its target addresses, plugin configs with secrets "
                        f"masked, breakers, rollouts); they are read-only. Set admin.token or "
                        f"token_file, or bind it to 127.0.0.1")
    if token and len(token) < MIN_ADMIN_TOKEN:
        where = "admin.token_file's token" if admin["token_file"] else "admin.token"
        warnings.append(f"{where} has {len(token)} characters: use at least "
                        f"{MIN_ADMIN_TOKEN} random ones (`openssl rand -hex 32`)")
    warnings += [w for where, plugins in _static_plugin_confs(conf)
                 for w in plugin_warnings(where, plugins)]
    warnings += unix_peer_warnings(conf)
    warnings += boolean_claim_warnings(conf.static_routes or ())
    if conf.etcd is None:       # with etcd, the consumer may be there
        warnings += missing_anonymous(conf)
    if conf.redis:
        warnings += redis_url_warnings(conf.redis)
    return warnings


# Options of a redis URL's query that the gateway sets itself, to fail fast (state.store
# .connect): redis-py would let the URL's override them.
GATEWAY_REDIS_OPTIONS = ("socket_timeout", "socket_connect_timeout", "retry_on_timeout",
                         "retry_on_error", "health_check_interval")


def redis_url_warnings(redis):
    """What [redis] url's query says that is likely not what was meant: options the gateway
    sets itself (not used), and a "+" in the password (a space to redis-py, as to any form
    decoder: AUTH failed with no word of why)."""
    parts, warnings = redis_url_parts(redis["url"]), []
    ours = [name for name in parts.options() if name in GATEWAY_REDIS_OPTIONS]
    if ours:
        warnings.append(f"redis.url sets {', '.join(ours)}: not used, the gateway sets them "
                        f"to fail fast (redis.timeout, {redis['timeout']} s, bounds each call; "
                        f"nothing retries, on_store_error decides)")
    if any(unquote_plus(name) == "password" and "+" in value
           for name, _, value in (piece.partition("=") for piece in parts.query.split("&"))):
        warnings.append("redis.url's ?password= holds a \"+\", which redis-py reads as a "
                        "space: write it %2B if it is part of the password")
    return warnings


def missing_anonymous(conf):
    """Auth plugins of the conf file naming an ``anonymous`` consumer it does not define:
    each request without a credential is refused (401) there, and the file said ok."""
    from .plugins import load_registry
    registry = load_registry()
    found = []
    for where, plugins in _static_plugin_confs(conf):
        for name, raw in (plugins or {}).items():
            plugin = registry.get(name)
            anonymous = raw.get("anonymous") if isinstance(raw, dict) else None
            if anonymous and hasattr(plugin, "CREDENTIAL") and conf.consumers is not None \
                    and conf.consumers.get(anonymous) is None:
                found.append(f"{where}.{name}.anonymous: no consumer {show(anonymous)} is "
                             f"defined: every request without a credential gets 401")
    return found


# Descriptors a worker holds beside its clients' and their upstream connections: listeners,
# idle pooled connections, the heartbeat, state and metrics files, the access log.
FILES_BESIDE_CLIENTS = 64


def open_files_warnings(worker_connections, limit=None):
    """A proxied client holds two descriptors (its own and the upstream's; a websocket for its
    whole life): under an open-file limit below twice worker_connections, a busy worker runs
    out, and each request past it gets a 503. ``limit``: this process's hard RLIMIT_NOFILE,
    which the master raises its soft limit to (server.app); under systemd (ExecStartPre's
    check, the master) it is the unit's LimitNOFILE."""
    import resource
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    needed = 2 * worker_connections + FILES_BESIDE_CLIENTS
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return []
    return [f"the open-file limit is {limit}, under the {needed} a worker needs with every one "
            f"of server.worker_connections = {worker_connections} proxied (two each, and "
            f"{FILES_BESIDE_CLIENTS} more): past it requests get 503 (no file descriptor "
            f"left). Raise LimitNOFILE in the unit (systemd/gwserver.service: 65536) or lower "
            f"worker_connections"]


def _loopback_only(bind):
    """Whether the admin listener ``bind`` takes connections from this host alone."""
    if bind.startswith("unix:"):
        return True
    try:
        addresses = listener_addresses([bind])
    except OSError:
        return True         # it cannot be bound either: that is said at start
    return bool(addresses) and all(ipaddress.ip_address(ip.partition("%")[0]).is_loopback
                                   for ip, _ in addresses)


def boolean_claim_warnings(routes):
    """A claim condition written as Python spells a boolean: until 2026-12-06 a boolean claim
    was compared as "True"/"False", and a conf written so now matches no boolean claim (it
    is "true"/"false", as the token's JSON spells it): such a route falls through."""
    found = []
    for spec in routes:
        if not isinstance(spec, dict):
            continue
        split = (spec.get("plugins") or {}).get("split")
        rules = split.get("rules") if isinstance(split, dict) else None
        conditions = [("claims", spec.get("claims"))] + [
            (f"plugins.split.rules[{i}].claim", rule.get("claim"))
            for i, rule in enumerate(rules if isinstance(rules, list) else ())
            if isinstance(rule, dict)]
        for where, claims in conditions:
            for name, value in claims.items() if isinstance(claims, dict) else ():
                if value in ("True", "False"):
                    found.append(f"route {spec.get('id')}: {where}.{name} = \"{value}\" matches "
                                 f"a text claim \"{value}\" only: a boolean claim is "
                                 f"\"{value.lower()}\", as the token's JSON spells it")
    return found


def unix_peer_warnings(conf):
    """A unix: listener's clients all have the address "unix" unless a proxy in front is
    trusted to name them: an ip_restriction refuses every one of them."""
    server = conf.server
    listeners = [b for b in [*server["bind"], *((conf.tls or {}).get("bind") or ())]
                 if b.startswith("unix:")]
    trusting = [name for name in ("trusted_proxies", "identity_proxies")
                if UNIX_PEERS in server[name]]
    abstract = [b for b in listeners
                if b.removeprefix("unix:").removeprefix("//").startswith("\0")]
    if abstract and trusting:
        # No file, so no permissions: every process of the host's network namespace may
        # connect, and server.trusted_proxies made each a proxy free to name any client.
        return [f"server.{trusting[0]} holds \"unix:\" and {abstract[0]!r} is an abstract "
                f"socket, which any local process may connect to: any of them may name any "
                f"client there. Listen on a socket file (its mode is 0660)"]
    if not listeners or UNIX_PEERS in server["trusted_proxies"]:
        return []
    where = [where.removesuffix(": plugins").removesuffix(".plugins")
             for where, plugins in _static_plugin_confs(conf)
             if isinstance(plugins, dict) and "ip_restriction" in plugins]
    if not where:
        return []
    return [f"{', '.join(where)}: ip_restriction refuses every request on {listeners[0]}: "
            f"a unix socket's peer has no address. If a proxy on this host names the client "
            f"there (X-Forwarded-For), add \"unix:\" to server.trusted_proxies"]


def _static_plugin_confs(conf):
    """(where, plugins table) of the conf file: global, each upstream's and each route's."""
    yield "plugins", dict(conf.plugins or {})
    for upstream_id, spec in (conf.static_upstreams or {}).items():
        if isinstance(spec, dict):
            yield f"upstreams.{upstream_id}.plugins", spec.get("plugins") or {}
    for spec in conf.static_routes or ():
        if isinstance(spec, dict):
            yield f"route {spec.get('id')}: plugins", spec.get("plugins") or {}


def plugin_warnings(where, plugins, registry=None):
    """What the plugins of one table (``where``: "plugins", "route ID: plugins" ...) say of
    their configs through their ``warnings`` hook (docs/plugins.md): a valid config that is
    likely not what was meant."""
    if registry is None:
        from .plugins import load_registry
        registry = load_registry()
    found = []
    for name, raw in (plugins or {}).items():
        plugin = registry.get(name)
        if plugin is None or not hasattr(plugin, "warnings") or not isinstance(raw, dict):
            continue
        try:
            conf = plugin.SCHEMA.validate(raw, f"{where}.{name}")
        except (Exception, SystemExit):
            continue            # refused already, with its reasons (build_chain)
        try:
            said = plugin.warnings(conf)
            # a hook that says nothing when all is well (None), or one warning as text:
            # neither is a failure, nor one warning per character
            said = () if said is None else [said] if isinstance(said, str) else said
            found += [f"{where}.{name}: {warning}" for warning in said]
        except (Exception, SystemExit) as exc:  # a third-party bug (a sys.exit() too)
            # must not stop check, start or reload, nor end the master
            found.append(f"{where}.{name}: the plugin's warnings() failed: {exc!r}")
    return found + hidden_key_warnings(where, plugins or {})


# The credential header each auth plugin removes before later plugins run (hide_credentials)
HIDDEN_BY = {"key_auth": lambda conf: conf.get("header", "X-API-Key"),
             "basic_auth": lambda conf: "Authorization"}


def hidden_key_warnings(where, plugins):
    """A rate_limit or limit_conn keyed on the header an auth plugin of the same table has
    removed by then (hide_credentials, the default): it counts every authenticated client
    in the one bucket of requests without the header, and one client spends everyone's
    limit. The consumer key is what was meant."""
    hidden = set()
    for name, header_of in HIDDEN_BY.items():
        conf = plugins.get(name)
        if isinstance(conf, dict) and conf.get("hide_credentials", True) is not False:
            header = header_of(conf)
            if isinstance(header, str):
                hidden.add(header.lower())
    found = []
    for name in ("rate_limit", "limit_conn"):
        conf = plugins.get(name)
        key = conf.get("key") if isinstance(conf, dict) else None
        if isinstance(key, str) and key[:7].lower() == "header:" and \
                key[7:].strip().lower() in hidden:
            found.append(f"{where}.{name}: key {show(key)} is a header the route's auth plugin "
                         f"removes before {name} runs (hide_credentials): every client is "
                         f"counted in one bucket; use key = \"consumer\"")
    return found


def tls_file_problems(tls):
    """What keeps the master from reading a certificate or key file of [tls], named by its
    setting: missing, a directory, or not readable by the user checking (the service's user
    under systemd). The PEM contents are client.tls's to check, once these can be read.
    Returns (problems, the indexes of the entries with such a file)."""
    problems, unreadable = [], set()
    for i, entry in enumerate(tls["certificates"]):
        for what in ("cert", "key"):
            problem = file_problem(entry[what], f"tls.certificates[{i}].{what}", "a PEM file")
            if problem is not None:
                problems.append(problem)
                unreadable.add(i)
    return problems, unreadable


def file_problem(path, name, what):
    """Why the file the setting ``name`` names cannot be read by this user, or None: missing,
    a directory, unreadable, or no regular file (a FIFO would block whoever opens it, the
    etcd client's TLS setup in the sync process, a device would read without end). ``what``:
    what the file should be ("a PEM file")."""
    try:
        os.close(open_regular(path, os.O_RDONLY))
    except FileNotFoundError:
        return f"{name}: {path} does not exist"
    except PermissionError:
        return (f"{name}: {path} is not readable by this user (uid {os.geteuid()}): the "
                f"service's user needs read access to it and search access to its directories")
    except IsADirectoryError:
        return f"{name}: {path} is a directory, not {what}"
    except OSError as exc:
        if os.path.isdir(path):     # open_regular's O_RDONLY opens a directory
            return f"{name}: {path} is a directory, not {what}"
        return f"{name}: {path}: cannot read: {exc.strerror}"
    return None


def pem_file_problem(path, name):
    return file_problem(path, name, "a PEM file")


def redis_file_problems(url):
    """A rediss:// URL's TLS files (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``),
    checked as [etcd]'s: redis-py loads them at each connect, and one missing, no regular
    file or that OpenSSL cannot load passed `check`, a start and a reload, then every
    call of every worker failed on it (each limit and breaker on its on_store_error)."""
    if not isinstance(url, str) or not url.lower().startswith("rediss://"):
        return []       # (sentinel and cluster URLs name no TLS files of their own here)
    import redis
    try:
        conn = redis.Redis.from_url(url, retry_on_timeout=False, max_connections=1,
                                    retry=None).connection_pool.make_connection()
    except (TypeError, ValueError, redis.exceptions.RedisError):
        return []       # (redis_url said why)
    return client_files_problems(conn.ca_certs, conn.certfile, conn.keyfile, "redis.url: ssl_",
                                 ("ca_certs", "certfile", "keyfile"), pem_file_problem,
                                 password=getattr(conn, "certificate_password", None),
                                 encrypted_key=True)     # (ssl_password decrypts it)


def etcd_file_problems(etcd):
    """[etcd]'s TLS files, checked as [tls]'s are: the sync process and every etcd command
    open them (a FIFO there hung them, and `gwserver check` said ok); and its snapshot, which
    check and the sync process read at start, if there is one (the snapshot alone with
    files.checks_files off: a helper)."""
    if not checks_files():
        return snapshot_problems(etcd)
    unpaired = etcd.get("key_file") and not etcd.get("cert_file")
    # (loaded as each call to etcd loads them: a ca_file with no certificate passed, and
    # every call failed on it; an encrypted key too: "Client private key is encrypted")
    problems = client_files_problems(etcd.get("ca_file"), etcd.get("cert_file"),
                                     etcd.get("key_file"), prefix="etcd.",
                                     file_problem=pem_file_problem, load=not unpaired)
    if unpaired:
        problems.append("etcd.key_file: needs etcd.cert_file (the client certificate it is "
                        "the key of)")
    return problems + snapshot_problems(etcd)


def snapshot_problems(etcd):
    """[etcd] snapshot_path naming something other than a regular file (a FIFO hung the
    sync process at start): checked by every parse, the helpers' too."""
    snapshot = etcd.get("snapshot_path")
    if snapshot and os.path.exists(snapshot) and not os.path.isfile(snapshot):
        return [f"etcd.snapshot_path: {snapshot} is not a regular file"]
    return []


def http2_listener_problems(http2, server_bind, tls):
    """Each [http2.listeners] entry must name an HTTP/2 listener; ``tls`` is the [tls] table
    as written (None: no TLS listener)."""
    h2c = http2["h2c"]
    h2c_binds = set(server_bind) if h2c is True else set(h2c or ())
    tls = {**TLS.defaults(), **tls} if tls is not None else {"bind": (), "alpn": ()}
    problems = []
    for bind in http2["listeners"]:
        if bind in h2c_binds or bind in tls["bind"] and "h2" in tls["alpn"]:
            continue
        why = "tls.alpn does not offer h2" if bind in tls["bind"] else \
            "h2c is not on there (http2.h2c)" if bind in server_bind else \
            "it is in neither server.bind nor tls.bind"
        problems.append(f'http2.listeners."{bind}": not an HTTP/2 listener: {why}')
    return problems


def routes_list(value):
    """The conf file's routes: an array of tables, ``[[routes]]`` each. ``[routes.api]`` (a
    table of tables, as ``[upstreams.api]`` is written) was "must be a list, got {...}",
    which named neither the spelling nor the fix. A table with a route's own keys (id,
    paths...) or values that are not tables is one route under ``[routes]`` (one bracket
    pair short), or an empty ``[routes]``: told it was ``[routes."id"]``, the operator
    looked for a line they never wrote."""
    if isinstance(value, dict):
        fix = "must be a list: write each route as a [[routes]] block with its id inside " \
              "(id = \"...\"); "
        if value and not value.keys() & ROUTE.fields.keys() and \
                all(isinstance(route, (dict, list)) for route in value.values()):
            raise Invalid(f"{fix}[routes.{show(next(iter(value)))}] makes a table of "
                          f"routes by name")
        raise Invalid(f"{fix}[routes] (single brackets) makes one table")
    return list_of(lambda route: route)(value)


# What a TOML value that is no table is, named (its value may be a secret: not shown)
VALUE_KINDS = {str: "a string", int: "a number", float: "a number", bool: "a boolean",
               list: "an array"}


def tables_by_id(kind, key_check):
    """[upstreams] and [consumers]: tables by id, ``[upstreams.api]`` each. ``[[upstreams]]``
    blocks with an id inside, as routes are written, were "must be a table/object, got
    [...]", which named no fix and quoted the value: a consumer's key went to `gwserver
    check` and a refused reload's log, where a consumer's own checks never show one."""
    check = map_of(lambda item: item, key_check)

    def checked(value):
        if not isinstance(value, dict):
            # Blocks only if it is blocks: `consumers = 5` or `upstreams = []` was told "not
            # as a [[consumers]] block", a line nobody wrote
            if value and isinstance(value, list) and all(isinstance(i, dict) for i in value):
                wrote = f"a [[{kind}s]] block"
            else:
                wrote = "an empty array" if value == [] else \
                    VALUE_KINDS.get(type(value), "a value")
            raise Invalid(f"must be a table of {kind}s by id: write each {kind} as "
                          f"[{kind}s.ID] ([{kind}s.api], its fields inside), not as {wrote} "
                          f"(the value is not shown: it may hold secrets)")
        return check(value)
    return checked


SECTIONS = {"server": SERVER, "upstream_defaults": UPSTREAM_DEFAULTS, "log": LOG,
            "admin": ADMIN, "tracing": TRACING, "http2": HTTP2}
OPTIONAL_SECTIONS = {"etcd": ETCD, "redis": REDIS, "tls": TLS}

CONF = Schema(
    *(Field(name, schema, dict, schema.doc) for name, schema in SECTIONS.items()),
    *(Field(name, schema, None, schema.doc) for name, schema in OPTIONAL_SECTIONS.items()),
    Field("plugins", map_of(lambda c: c), dict, "plugins enabled on every route: name -> config"),
    Field("upstreams", tables_by_id("upstream", upstream_id_string()), dict,
          "named upstreams that routes refer to by id"),
    Field("routes", routes_list, list, "static routes (the table when etcd is off)"),
    Field("consumers", tables_by_id("consumer", string(CONSUMER_ID, "a consumer id")), dict,
          "named clients: credentials per auth plugin, groups, plugins (docs/consumers.md)"),
)


@dataclass(frozen=True)
class Conf:
    path: str
    server: MappingProxyType
    upstream_defaults: MappingProxyType
    log: MappingProxyType
    admin: MappingProxyType
    tracing: MappingProxyType
    plugins: MappingProxyType
    router: Router
    etcd: MappingProxyType | None = None     # None: the static routes are the whole table
    redis: MappingProxyType | None = None    # None: rate limits are per host
    static_routes: tuple = ()                # validated specs, for the live (etcd) table
    static_upstreams: MappingProxyType = None
    tls: MappingProxyType | None = None      # None: no TLS listener
    static_consumers: MappingProxyType = None    # consumer specs, for the live (etcd) table
    consumers: object = None                 # core.consumers.Directory of the conf's consumers
    http2: MappingProxyType = None           # [http2]: client-side HTTP/2 (client.h2server)
    # the file's bytes it was made of (load_conf); never shown: a conf may hold credentials
    source: bytes = dataclass_field(default=None, repr=False, compare=False)


def _fill(schema, value):
    """Fill a section's defaults; nested validation already ran."""
    return MappingProxyType({**schema.defaults(), **value})


def compile_table(route_specs, upstream_specs, upstream_defaults, server, global_plugins,
                  registry):
    """Validate and compile routes and named upstreams.

    Returns (router, problems): every route that is good is in the router; each bad one is left
    out and named in problems, with every problem it has (a bad field is named and checking goes
    on with its default). An upstream that exists but is invalid is reported for what is wrong
    with it, never as unknown to the routes that use it. The conf file treats any problem as
    fatal; etcd sync will not.
    """
    problems, upstreams, broken = [], {}, set()
    for upstream_id, spec in upstream_specs.items():
        owner = f"upstream {upstream_id}"
        spec, bad_problems, bad = UPSTREAM.partial(spec, owner)
        problems.extend(bad_problems)
        try:
            if spec is None:
                raise ConfigError([])
            upstream = make_upstream(upstream_id, spec, upstream_defaults, registry)
        except ConfigError as exc:
            # A field already named bad is at its default here: what that default makes of
            # it (no targets, say) is not another problem.
            problems.extend(p for p in exc.problems
                            if not any(p.startswith(f"{owner}: {name}") for name in bad))
            broken.add(upstream_id)
            continue
        if bad:
            broken.add(upstream_id)
        else:
            upstreams[upstream_id] = upstream
    routes, first_of = [], {}
    for i, spec in enumerate(route_specs):
        route_id = spec.get("id") if isinstance(spec, dict) else None
        owner = f"route {route_id}" if isinstance(route_id, str) else f"routes[{i}]"
        if isinstance(route_id, str):
            if route_id in first_of:
                problems.append(f"route {route_id}: duplicate route id (routes"
                                f"[{first_of[route_id]}] and routes[{i}])")
            first_of.setdefault(route_id, i)
        written = spec
        spec, bad_problems, bad = ROUTE.partial(spec, owner)
        problems.extend(bad_problems)
        if spec is None:
            problems.extend(path_problems_beside(written, bad, owner, server))
            continue
        try:
            route = compile_route(spec, upstreams, upstream_defaults, server, global_plugins,
                                  registry, broken=frozenset(broken))
        except ConfigError as exc:
            problems.extend(p for p in exc.problems
                            if not any(p.startswith(f"{owner}: {name}") for name in bad))
            continue
        if not bad and first_of[route.id] == i:
            routes.append(route)
    router = Router()
    for route in routes:
        try:
            router.add(route)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return router, problems


# Secrets an operator keeps out of the conf file (a systemd credential, a mounted secret):
# (section, the setting the secret is, the setting naming a file that holds it instead).
SECRET_FILES = (("admin", "token", "token_file"), ("etcd", "password", "password_file"),
                ("redis", "password", "password_file"))
MAX_SECRET_FILE = 4096


def read_secret_file(path):
    """The secret a file holds, less one trailing newline (``echo`` and editors add one).
    Raises Invalid naming the problem: a FIFO or device is refused, not waited on."""
    try:
        data = read_bounded(path, MAX_SECRET_FILE, path)
    except FileRefused as exc:
        raise Invalid(str(exc)) from None
    try:
        secret = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not UTF-8 text") from None
    if not secret:
        raise Invalid(f"{path} is empty")
    return secret


# The sections whose secret files parse_conf reads (SECRET_FILES; None: all): the master
# and `check` read them all. A helper reads none but those it needs as it starts
# (helpers.helper.start_helper): one restarted while a secret it never uses was being
# rotated (an empty [redis] password_file, for a health checker) died at each restart.
# The etcd password is read as a call to etcd authenticates (sync.etcd.EtcdClient), one
# that fails on it retried as any failed call to etcd.
READ_SECRET_FILES = None


def secrets_from_files(name, section, problems):
    """``section`` with its secrets read from their files (SECRET_FILES); problems named."""
    for section_name, key, file_key in SECRET_FILES:
        if section_name != name or not section.get(file_key):
            continue
        if READ_SECRET_FILES is not None and name not in READ_SECRET_FILES:
            continue                # (the master read it; a user of it reads it again)
        if section.get(key):
            problems.append(f"{name}.{file_key}: {name}.{key} is set too; set one of them")
            continue
        if name == "redis" and _url_password(section.get("url", "")):
            problems.append(f"{name}.{file_key}: redis.url holds a password too; set one of "
                            f"them")
            continue
        try:
            secret = read_secret_file(section[file_key])
            field = (OPTIONAL_SECTIONS.get(name) or SECTIONS[name]).fields.get(key)
            if field is not None:           # the token's own rule (printable, no spaces)
                try:
                    secret = field.check(secret)
                except Invalid:             # its message would quote the secret: not in logs
                    raise Invalid(f"{section[file_key]} holds what {name}.{key} cannot be "
                                  f"(`gwserver settings` says what it can)") from None
        except Invalid as exc:
            problems.append(f"{name}.{file_key}: {exc}")
            continue
        section = {**section, key: secret}
    return section


def _url_password(url):
    """Does a redis URL hold a password, in its user part or as ``?password=`` (which
    redis-py takes over password_file's: the file was read, and unused)?"""
    parts = redis_url_parts(url)
    return bool(parts.password or parts.options().get("password"))


def elsewhere(key, section=None):
    """The hint `; it is a setting of [server]` when ``key``, unknown where it was written (at
    the top of the file, or in ``section``), is one of another section's: a key put above its
    section's header, or under the wrong one, was an unknown key and a list of the others."""
    homes = [f"[{name}]" for name, schema in {**SECTIONS, **OPTIONAL_SECTIONS}.items()
             if name != section and key in schema.fields]
    if not homes:
        return ""
    return f"; it is a setting of {' or '.join(homes)}"


def parse_conf(data, path="<conf>"):
    """Validate a parsed TOML document; raise ConfigError listing every problem at once."""
    from .plugins import load_registry
    problems, parts = [], {}
    for key in data:
        if key not in CONF.fields:
            problems.append(f"{key}: unknown key (known: {', '.join(CONF.fields)})"
                            f"{elsewhere(key)}")
    for name, field in CONF.fields.items():
        try:
            parts[name] = field.check(data[name]) if name in data else field.default_value()
        except Invalid as exc:
            problems.extend(f"{join(name, sub)}: {reason}"
                            f"{elsewhere(sub, name) if reason.startswith('unknown key') else ''}"
                            for sub, reason in exc.problems)
            # Its good fields still count: the checks below then see them, not defaults.
            value = field.check.partial(data[name])[0] if isinstance(field.check, Schema) \
                else None
            parts[name] = field.default_value() if value is None else value
    if not parts["server"].get("state_dir"):
        parts["server"] = {**parts["server"], "state_dir": default_state_dir()}
    for name in ("admin", "etcd", "redis"):
        if parts[name] is not None:
            parts[name] = secrets_from_files(name, parts[name], problems)
    sections = {name: _fill(schema, parts[name]) for name, schema in SECTIONS.items()}
    registry = load_registry()
    # Global plugin configs are checked once here so that their errors name `plugins.X`.
    try:
        global_chain = build_chain("plugins", {}, parts["plugins"], registry)
        global_plugins = parts["plugins"]
    except ConfigError as exc:
        problems.extend(p.replace("plugins: plugins.", "plugins.", 1) for p in exc.problems)
        global_plugins, global_chain = {}, None
    if global_chain is not None:
        # Their inline upstreams (split's) once too, their tls files loaded: linked only with
        # a route's chain, a bad ca_file passed check, start and reload of a gateway whose
        # routes are all in etcd, and config-sync refused every route from etcd on it.
        defaults = sections["upstream_defaults"]
        try:
            link_chain("[plugins] global", global_chain, {}, defaults, registry,
                       absent=lambda ref: undefined_upstream(ref, defaults))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if sections["tracing"]["otlp_endpoint"]:
        import importlib.util
        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
            problems.append("tracing.otlp_endpoint: span export needs the OpenTelemetry SDK: "
                            "pip install 'gwserver[otel]'")
    problems.extend(proxy_protocol_problems(sections["server"], parts["tls"]))
    if parts["etcd"] is not None:
        problems.extend(etcd_file_problems(parts["etcd"]))
    if parts["redis"] is not None and checks_files():   # (a helper: the master checked them)
        problems.extend(redis_file_problems(parts["redis"].get("url")))
    access_path = sections["log"]["access_log_path"]
    if access_path and not os.path.isdir(os.path.dirname(access_path)):
        problems.append(f"log.access_log_path: the directory {os.path.dirname(access_path)} "
                        f"does not exist")
    elif access_path and os.path.exists(access_path) and not os.path.isfile(access_path):
        problems.append(f"log.access_log_path: {access_path} is not a regular file")
    tmp_dir = sections["server"]["worker_tmp_dir"]
    if tmp_dir and not os.path.isdir(tmp_dir):     # gunicorn would fail each worker's start
        problems.append(f"server.worker_tmp_dir: {tmp_dir} is not a directory")
    elif tmp_dir:
        problems.extend(worker_tmp_problems(tmp_dir))
    problems.extend(_overlaps_within("server.bind", sections["server"]["bind"]))
    admin_bind = sections["admin"]["bind"]
    if admin_bind and _overlapping([admin_bind], sections["server"]["bind"]):
        problems.append(f"admin.bind: {admin_bind} is also in server.bind; give the admin "
                        f"listener its own address")
    h2c = sections["http2"]["h2c"]
    if isinstance(h2c, list):
        problems.extend(f"http2.h2c: {bind} is not in server.bind" for bind in h2c
                        if bind not in sections["server"]["bind"])
    problems.extend(http2_listener_problems(sections["http2"], sections["server"]["bind"],
                                            parts["tls"]))
    # Config-sync expands live instances into upstreams from etcd only (workers build the
    # conf file's own); one here answered 503 "no live instance" for good, [etcd] or not.
    # (With targets, it serves them, as it did: conf_warnings says its service is ignored.)
    for upstream_id, spec in parts["upstreams"].items():
        if isinstance(spec, dict) and spec.get("service") and not spec.get("targets"):
            problems.append(f"upstreams.{upstream_id}.service: an upstream in the conf file "
                            f"cannot follow a service (its live instances go to upstreams in "
                            f"etcd only): put it in etcd (gwserver upstreams put), with the "
                            f"[etcd] section")
    router, route_problems = compile_table(parts["routes"], parts["upstreams"],
                                           sections["upstream_defaults"], sections["server"],
                                           global_plugins, registry)
    problems.extend(route_problems)
    consumers, consumer_problems = compile_consumers(parts["consumers"], registry)
    problems.extend(consumer_problems)
    tls = None
    if parts["tls"] is not None:
        tls = MappingProxyType({**TLS.defaults(), **parts["tls"]})
        problems.extend(_overlaps_within("tls.bind", tls["bind"]))
        clash = _overlapping(tls["bind"], [*sections["server"]["bind"],
                                           *filter(None, [sections["admin"]["bind"]])])
        if clash:
            problems.append(f"tls.bind: {', '.join(sorted(clash))} is also a plain listener")
        elif checks_files():        # (a helper serves no TLS; the master checked them)
            # certificate and key files are named with every other problem
            from .client.tls import certificate_problems   # pyOpenSSL: only with [tls]
            file_problems, unreadable = tls_file_problems(tls)
            problems.extend(file_problems)
            problems.extend(certificate_problems(tls, unreadable))
    if problems:
        raise ConfigError(problems)
    etcd = parts["etcd"]
    return Conf(static_consumers=MappingProxyType(dict(parts["consumers"])), consumers=consumers,
                tls=tls, path=path, plugins=MappingProxyType(global_plugins), router=router,
                etcd=MappingProxyType({**ETCD.defaults(), **etcd}) if etcd is not None else None,
                redis=MappingProxyType({**REDIS.defaults(), **parts["redis"]})
                if parts["redis"] is not None else None,
                static_routes=tuple(parts["routes"]),
                static_upstreams=MappingProxyType(dict(parts["upstreams"])), **sections)


MAX_CONF_FILE = 64 << 20     # bytes; a conf file with a large static route table is far less


def read_conf_source(path):
    """The bytes of the conf file ``path``: a regular file only, at most MAX_CONF_FILE bytes.
    A FIFO in its place blocked the open until a writer came, and a device (/dev/zero) read
    without end: `gwserver check`, `reload`, every etcd command and the master's own reload
    hung or filled memory. Raises OSError whose strerror says why."""
    data = read_regular(path, MAX_CONF_FILE)
    if len(data) > MAX_CONF_FILE:
        raise OSError(errno.EFBIG, f"over {MAX_CONF_FILE >> 20} MiB: not a conf file")
    return data


BOM = b"\xef\xbb\xbf"


def toml_error(source, exc):
    """Why ``source`` is not TOML, as `check`, `run`, `reload` and the master's reload say it.
    A UTF-8 byte order mark (Notepad's, some editors' "UTF-8 with BOM") is named: TOML
    refuses it, and "Invalid statement (at line 1, column 1)" pointed at a line that reads
    as right."""
    if source.startswith(BOM):
        return ("not valid TOML: it begins with a UTF-8 byte order mark (an editor's \"UTF-8 "
                "with BOM\"): save it as plain UTF-8")
    return f"not valid TOML: {exc}"


def load_conf(path, source=None):
    """The conf file ``path``, checked; ``source``: its bytes as read before (the copy the
    master applied, which its helpers read: helpers.helper.applied_conf). The Conf keeps the
    bytes it was made of (``Conf.source``)."""
    try:
        if source is None:
            source = read_conf_source(path)
        data = tomllib.loads(source.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {toml_error(source, exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (TOML files are): byte {exc.start} is "
                          f"{exc.object[exc.start:exc.start + 1]!r}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deep to read") from None
    if not data:
        # Every setting has a default, but a file with none is far likelier truncated by an
        # editor or a deploy than meant: a reload would move the listeners to the defaults.
        raise ConfigError(f"{path}: no settings at all (an empty or truncated file?); a conf "
                          f"file names at least its [server] bind or its routes")
    try:
        conf = parse_conf(data, path)
    except Exception as exc:        # noqa: BLE001 - ConfigError.of: a value no check foresaw
        raise ConfigError.of(exc, f"{path}: a value ") from None
    object.__setattr__(conf, "source", bytes(source))     # (a frozen dataclass)
    return conf


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):      # TOML's basic string: control characters escaped
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if c < " " or
                                                     c == "\x7f" else c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


# What the reference shows for settings that have no default (the section is optional).
REQUIRED_EXAMPLES = {("tls", "certificates"): '[{ cert = "/etc/gwserver/tls/site.pem", '
                                              'key = "/etc/gwserver/tls/site.key" }]'}


def reference_toml():
    """The documented settings part of conf/gwserver.toml, generated from the registry.

    Optional sections (etcd) are shown commented out: their presence switches a feature on."""
    lines = []
    for sections, comment in ((SECTIONS, ""), (OPTIONAL_SECTIONS, "# ")):
        for name, schema in sections.items():
            lines += [f"# {schema.doc}", f"{comment}[{name}]"]
            for field in schema.fields.values():
                if field.required:
                    value = REQUIRED_EXAMPLES[(name, field.name)]
                else:
                    default = field.default_value()
                    value = "" if default is None else _toml_value(default)
                lines += [f"# {field.doc}", f"{comment}{field.name} = {value}".rstrip()]
            lines.append("")
    return "\n".join(lines)


def _toml_inline(value):
    """A TOML value on one line (inline tables for tables); None values are left out (TOML
    has no null: an unset optional setting is absent)."""
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {_toml_inline(v)}" for k, v in value.items()
                 if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    return _toml_value(value)


def _toml_key(key):
    return key if all(c.isalnum() or c in "_-" for c in key) and key else _toml_value(key)


def dump_toml(conf):
    """The effective configuration (``gwserver check --dump``, like ``nginx -T``): every
    section with its defaults filled, upstreams and routes as validated, secrets masked."""
    from .redact import redact
    doc = {name: dict(getattr(conf, name)) for name in SECTIONS}
    for name in OPTIONAL_SECTIONS:
        if getattr(conf, name) is not None:
            doc[name] = dict(getattr(conf, name))
    doc = redact(doc)
    if not doc["server"]["worker_tmp_dir"]:
        # the directory the master will use, as state_dir is shown (not "")
        import tempfile
        doc["server"]["worker_tmp_dir"] = tmpfs_dir() or tempfile.gettempdir()
    from .plugins import load_registry
    registry = load_registry()

    def filled(plugins):
        """Plugin configs with their schemas' defaults (they were validated at load)."""
        out = {}
        for name, plugin_conf in (plugins or {}).items():
            schema = getattr(registry.get(name), "SCHEMA", None)
            try:
                out[name] = schema.validate(plugin_conf) if isinstance(schema, Schema) \
                    else plugin_conf
            except ConfigError:
                out[name] = plugin_conf
        return out
    lines = [f"# effective configuration of {conf.path} (defaults filled, secrets masked)", ""]
    for name, section in doc.items():
        lines.append(f"[{name}]")
        lines += [f"{_toml_key(k)} = {_toml_inline(v)}" for k, v in section.items()
                  if v is not None]
        lines.append("")
    if conf.plugins:
        lines.append("[plugins]")
        lines += [f"{_toml_key(k)} = {_toml_inline(v)}"
                  for k, v in redact(filled(conf.plugins)).items()]
        lines.append("")
    for upstream_id, spec in (conf.static_upstreams or {}).items():
        spec = UPSTREAM.validate(spec, f"upstream {upstream_id}")
        spec = redact({**spec, "plugins": filled(spec.get("plugins")) or None})
        lines.append(f"[upstreams.{_toml_key(upstream_id)}]")
        lines += [f"{_toml_key(k)} = {_toml_inline(v)}" for k, v in spec.items()
                  if v is not None]
        lines.append("")
    for spec in conf.static_routes:
        spec = ROUTE.validate(spec, f"route {spec.get('id')}")
        spec = redact({**spec, "plugins": filled(spec.get("plugins"))})
        lines.append("[[routes]]")
        lines += [f"{_toml_key(k)} = {_toml_inline(v)}" for k, v in spec.items()
                  if v is not None]
        lines.append("")
    return "\n".join(lines)
