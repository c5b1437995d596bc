"""Target health on one host: the ``gwserver: health`` checker process, and what workers read.

Two small files in the host's state directory (GWSERVER_LOCAL_STATE), both replaced or
rewritten whole, both read by workers on their 50 ms tick when their file stamp (inode, mtime,
size: shm.file_stamp) changes:

    health.json      written by the checker: {"upstream|url": {"healthy": bool, ...}}
    ejections.json   written by workers under flock: passive ejections (core.health.Ejections)

Active checks run once per host, in one process the master owns (restarted if it dies, kept
across SIGHUP: the master forwards SIGHUP and the checker re-reads its targets). In etcd mode
it follows the published table like a worker.
"""
import fcntl
import http.client
import json
import logging
import os
import random
import signal
import socket
import time

import h2.errors
import h2.events
import h2.exceptions

from ..core import health as core
from ..core.throttledlog import throttled_log
from ..errors import UpstreamTLSFilesError, describe
from ..files import write_remedy
from .helper import no_beat
from ..upstream.clienttls import client_context
from ..sync.shm import atomic_write, file_stamp, read_json

log = logging.getLogger("gwserver.health")

HEALTH_FILE = "health.json"
EJECTIONS_FILE = "ejections.json"
METRICS_FILE = "health.prom"


def target_key(upstream_id, url):
    return f"{upstream_id}|{url}"


# -- worker side ------------------------------------------------------------------------------

def _ejection_entries(data):
    """ejections.json's entries that are [until, count, last_change]; anything else made every
    worker tick (and every ejection) raise."""
    if not isinstance(data, dict):
        return {}
    return {key: entry for key, entry in data.items()
            if isinstance(entry, list) and len(entry) == 3 and
            all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry)}


class HealthView:
    """A worker's view of which targets are down: active verdicts plus passive ejections."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.active = {}            # key -> state dict from health.json
        self.ejections = core.Ejections()
        self._stamps = [None, None]
        self.down = frozenset()     # keys of targets down now
        self._avoid = {}            # upstream id -> (targets, (avoid, panicking)); cleared
                                    # whenever ``down`` changes

    def refresh(self, now=None):
        """Re-read changed files and expire ejections; cheap when nothing changed."""
        now = time.time() if now is None else now
        for i, name in enumerate((HEALTH_FILE, EJECTIONS_FILE)):
            stamp = file_stamp(os.path.join(self.state_dir, name))
            if stamp != self._stamps[i]:
                self._stamps[i] = stamp
                data = read_json(os.path.join(self.state_dir, name))
                data = data if isinstance(data, dict) else {}
                if i == 0:
                    # only what the checker writes: {key: {"healthy": bool, ...}}. Anything
                    # else made every later tick raise (a traceback each 50 ms, and the rest
                    # of the tick skipped: staples, the slow-body check, pool pruning)
                    targets = data.get("targets")
                    self.active = {key: state for key, state in targets.items()
                                   if isinstance(state, dict) and
                                   isinstance(state.get("healthy", True), bool)} \
                        if isinstance(targets, dict) else {}
                else:
                    self.ejections = core.Ejections(_ejection_entries(data))
        checked = frozenset(key for key, state in self.active.items()
                            if not state.get("healthy", True))
        ejected = frozenset(key for key in self.ejections.entries
                            if self.ejections.ejected(key, now))
        if checked != self.checked_down or ejected != self.ejected:
            self.checked_down, self.ejected = checked, ejected
            self.down = checked | ejected
            self._avoid.clear()

    checked_down = ejected = frozenset()    # keys the active checks / passive ejections hold

    def is_down(self, upstream, key):
        """Whether target ``key`` of ``upstream`` is out. An ejection holds only while the
        upstream still has ``passive``: a reload (or an etcd update) that took it away, to
        stop ejections that were wrong, left the target out for the rest of its eject_for
        (up to max_eject_for), as if passive were still on."""
        return key in self.checked_down or (key in self.ejected and bool(upstream.passive))

    def avoid(self, upstream):
        """(targets to avoid, panicking) for an upstream, as core.health.usable decides."""
        cached = self._avoid.get(upstream.id)
        if cached is not None and cached[0] is upstream.targets and \
                cached[1] == bool(upstream.passive):
            return cached[2]
        down = frozenset(t for t in upstream.targets
                         if self.is_down(upstream, target_key(upstream.id, t.url)))
        answer = core.usable(upstream.targets, down, upstream.panic_threshold)
        if answer[1]:
            log.warning("upstream %s: %d of %d targets down: panic mode, using all of them",
                        upstream.id, len(down), len(upstream.targets))
        self._avoid[upstream.id] = (upstream.targets, bool(upstream.passive), answer)
        return answer

    def describe(self, upstream_id, url, now=None, passive=True):
        """What /admin/upstreams says about one target (``passive``: whether its upstream
        ejects; an ejection left from before it stopped is no longer said)."""
        now = time.time() if now is None else now
        key = target_key(upstream_id, url)
        entry = self.ejections.entries.get(key) if passive else None
        if entry is not None and entry[0] > now:
            return {"health": "ejected", "ejected_for": round(entry[0] - now, 1),
                    "ejections_in_a_row": entry[1]}
        state = self.active.get(key)
        if state is None:
            return {"health": "not checked" if entry is None else "healthy (passive)"}
        return {"health": "healthy" if state.get("healthy", True) else "unhealthy",
                "since": state.get("since"), "last_error": state.get("last_error") or None}


class PassiveTracker:
    """Per worker: consecutive failures per target; ejections go to the shared file."""

    def __init__(self, view, on_eject=None):
        self.view = view
        self.failures = {}
        self.on_eject = on_eject

    def observe(self, upstream, target, ok):
        conf = upstream.passive
        key = target_key(upstream.id, target.url)
        if ok:
            if key in self.failures:
                del self.failures[key]
            return
        count = self.failures.get(key, 0) + 1
        if count < conf["consecutive_failures"]:
            self.failures[key] = count
            return
        self.failures.pop(key, None)
        self._eject(upstream, key, conf)

    def forget_gone(self, keys):
        """Drop the counts of targets no longer in the table (``keys``: target_key of those
        that are): one that left mid-count (an instance failing as it went away) kept its
        entry for the worker's life, and a new instance at its address (IP:port reused)
        inherited it, ejected before its own ``consecutive_failures``."""
        for key in [key for key in self.failures if key not in keys]:
            del self.failures[key]

    def _eject(self, upstream, key, conf):
        now = time.time()
        try:
            seconds = self._write_ejection(upstream, key, conf, now)
        except OSError as exc:
            # A full or read-only state_dir must not turn the request's 502 into a 500: the
            # target stays in rotation (a refused connect still skips it for 1 s).
            throttled_log.log(log, logging.ERROR, ("ejections", upstream.id),
                              "upstream %s: cannot eject %s: %s: %s; it stays in rotation",
                              upstream.id, key.partition("|")[2], EJECTIONS_FILE,
                              exc.strerror)
            return
        if not seconds:
            return
        log.warning("upstream %s: ejected %s for %.0fs after %d failures in a row",
                    upstream.id, key.partition("|")[2], seconds, conf["consecutive_failures"])
        if self.on_eject is not None:
            self.on_eject(upstream.id, key.partition("|")[2])
        self.view.refresh(now)

    def _write_ejection(self, upstream, key, conf, now):
        """Eject ``key`` in ejections.json; -> its seconds, or None (another worker was
        first, or max_ejected_percent holds it back)."""
        # Writers serialise on a lock file and replace ejections.json whole (atomic rename):
        # workers read it without the lock, so they must never see it half written.
        path = os.path.join(self.view.state_dir, EJECTIONS_FILE)
        with open(os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600), "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                ejections = core.Ejections(_ejection_entries(read_json(path)))
                if ejections.ejected(key, now):
                    return None             # another worker was first
                keys = {target_key(upstream.id, t.url) for t in upstream.targets}
                out = sum(1 for k in keys if ejections.ejected(k, now) or k in self.view.down)
                seconds = ejections.eject(key, conf, now, out, len(keys))
                if not seconds:
                    # Throttled: a client asking for what the upstream answers 503 makes one
                    # of these every consecutive_failures requests, as fast as it sends them
                    throttled_log.log(log, logging.WARNING, ("not ejecting", upstream.id),
                                      "upstream %s: not ejecting %s: max_ejected_percent "
                                      "(%d%%) reached", upstream.id, key.partition("|")[2],
                                      conf["max_ejected_percent"])
                    return None
                for stale in [k for k, v in ejections.entries.items()
                              if v[0] < now - 2 * conf["max_eject_for"]]:
                    del ejections.entries[stale]
                atomic_write(path, json.dumps(ejections.entries).encode())
                return seconds
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# -- the checker process ------------------------------------------------------------------------

class UnreadableAnswer(Exception):
    """An answer the check cannot read as the proxy would; its text is the check's error."""


class NoAnswerInTime(Exception):
    """The exchange after the connect outlasted ``timeout`` (no OSError: the probe must not
    take it for a failed read)."""


def probe(target, conf, tls=None, protocol="http1", max_head=None):
    """One active check; returns (ok, error text). Runs in a greenlet (gevent-patched I/O).

    The connection is opened here and, for https targets, wrapped with the upstream's own
    ``tls`` settings (verify, CA, SNI, client certificate), the rules the proxy's pools
    follow. The check speaks what the proxy speaks to the upstream and reads the answer as
    the proxy reads it: HTTP/1.1 (``read_status``) or, for ``protocol = "h2"``, HTTP/2
    (``probe_h2``). The body is never read: the status decides.

    ``timeout`` bounds the connect (the name's lookup with it), and then the rest as a whole
    (TLS, the request, the answer's head; in the checker's greenlets, where gevent.Timeout
    can interrupt a read):
    bounded read by read, a target that dripped its answer a byte at a time held the check,
    and its last verdict, for as long as it liked."""
    import gevent

    from ..net.sockets import opening_within
    context = None
    if target.scheme == "https" and conf["type"] != "tcp":
        try:
            context = client_context(tls, ["h2"] if protocol == "h2" else ())
        except (OSError, ValueError) as exc:    # (ssl.SSLError is an OSError)
            # the gateway's own files (replaced by bad ones since the check, and no context
            # read before: a checker restarted meanwhile), no target's: booked as each
            # target's failure, every one was taken out (the proxy blames none either)
            raise UpstreamTLSFilesError(f"the upstream's tls files cannot be loaded "
                                        f"({describe(exc)})") from None
    try:
        with opening_within(conf["timeout"], target.host):      # the name's lookup too
            sock = socket.create_connection((target.host, target.port),
                                            timeout=conf["timeout"])
    except OSError as exc:
        return False, f"connect: {exc.strerror or exc}"
    if conf["type"] == "tcp":
        sock.close()
        return True, ""
    late = NoAnswerInTime(f"timed out: no whole answer in {conf['timeout']} s")
    try:
        with gevent.Timeout(conf["timeout"], late):
            sock.settimeout(conf["timeout"])
            if target.scheme == "https":
                server_name = tls[2] if tls is not None and tls[2] else target.host
                sock = context.wrap_socket(sock, server_hostname=server_name)
            if protocol == "h2":
                status = probe_h2(sock, target, conf, max_head or MAX_HEAD)
            else:
                host = conf["host"] or target.authority
                sock.sendall(f"{conf['method']} {conf['path']} HTTP/1.1\r\nHost: {host}\r\n"
                             f"User-Agent: gwserver-health\r\nConnection: close\r\n\r\n"
                             .encode("latin-1"))
                status = read_status(sock, max_head or MAX_HEAD)
        if status not in conf["expected"]:
            return False, f"status {status}"
        return True, ""
    except http.client.RemoteDisconnected:
        return False, "closed without an answer"
    except http.client.BadStatusLine:
        return False, "not an HTTP answer"
    except h2.exceptions.ProtocolError:
        return False, "not an HTTP/2 answer"
    except (UnreadableAnswer, NoAnswerInTime) as exc:
        return False, str(exc)
    except OSError as exc:
        return False, describe(exc)
    finally:
        sock.close()


MAX_HEAD = 65536        # the proxy's default max_response_head, 1xx heads included
MAX_INTERIM_HEADS = 16  # as the h2 client's (upstream/h2client.py)


def read_status(sock, max_head=MAX_HEAD):
    """The status of an HTTP/1.1 answer, read as the proxy reads one: CRLFs before a status
    line skipped (llhttp does), HTTP/1.0 or 1.1 only, 1xx heads other than 101 passed over
    (103 Early Hints, 102), the head (CRLFs and 1xx heads included) at most ``max_head``
    bytes (the proxy's max_response_head),
    a line ending in a bare LF refused (as llhttp does); the body never read. http.client
    passed over 100 only and refused the leading CRLFs: a target the proxy served was
    "status 103" or "not an HTTP answer", and taken out."""
    buf, taken, interim = b"", 0, 0
    while True:
        while True:
            stripped = buf.lstrip(b"\r\n")
            taken += len(buf) - len(stripped)
            buf = stripped
            if b"\r\n\r\n" in buf:
                break
            if taken + len(buf) > max_head:
                raise UnreadableAnswer(f"answer head over {max_head} bytes")
            data = sock.recv(16384)
            if not data:
                if taken or buf:
                    raise http.client.BadStatusLine("closed mid head")
                raise http.client.RemoteDisconnected("closed")
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        taken += len(head) + 4
        if taken > max_head:
            raise UnreadableAnswer(f"answer head over {max_head} bytes")
        parts = head.split(b"\r\n", 1)[0].split(None, 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.0", b"HTTP/1.1") or \
                len(parts[1]) != 3 or not parts[1].isdigit():
            raise http.client.BadStatusLine(repr(head[:40]))
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            interim += 1
            if interim > MAX_INTERIM_HEADS:
                raise UnreadableAnswer(f"more than {MAX_INTERIM_HEADS} interim (1xx) heads")
            continue
        return status


def probe_h2(sock, target, conf, max_head=MAX_HEAD):
    """One request on a new HTTP/2 connection (h2c prior knowledge, or h2 by ALPN) -> the
    answer's status (``probe``'s timeout bounds the exchange: a server that keeps sending
    frames without answering does not hold the check)."""
    from ..upstream.h2client import (HEADS, HeadBounds, HeadOutOfBounds, StreamMalformed,
                                     upstream_h2_state)
    # The proxy's own state machine: h2's closes on any GOAWAY, so a stream a graceful one
    # lets finish (nginx at keepalive_requests) could not get its answer, and the target
    # the proxy served was "closed without an answer".
    conn = upstream_h2_state()
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [
        (b":method", conf["method"].encode()), (b":scheme", target.scheme.encode()),
        (b":path", conf["path"].encode("latin-1")),
        (b":authority", (conf["host"] or target.authority).encode("latin-1")),
        (b"user-agent", b"gwserver-health")], end_stream=True)
    sock.sendall(conn.data_to_send())
    bounds = HeadBounds(max_head)       # as the proxy reads the answer's heads
    while True:
        data = sock.recv(65536)
        if not data:
            raise http.client.RemoteDisconnected("closed")
        for event in conn.receive_data(data):
            if isinstance(event, HEADS) and event.stream_id == stream_id:
                try:
                    if bounds.take(event):
                        return bounds.status    # (a status code, fields the proxy relays)
                except HeadOutOfBounds as exc:
                    raise UnreadableAnswer(f"answer {exc}" if exc.oversized else
                                           str(exc)) from None
                continue        # an interim head, passed over within the bounds as the proxy does
            if isinstance(event, h2.events.ConnectionTerminated):
                if (event.last_stream_id or 0) < stream_id or \
                        event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                    raise http.client.RemoteDisconnected("GOAWAY before the answer")
                continue        # a graceful one that took our stream: its answer comes
            if isinstance(event, (h2.events.StreamReset, StreamMalformed)):
                raise http.client.RemoteDisconnected("reset before an answer")
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)


class _CheckCounts:
    """``gwserver_health_checks_total{result, target, upstream}`` from the checker's counts."""

    def __init__(self, counts):
        self.counts = counts            # (target key, result) -> n

    def collect(self):
        from ..server.metrics import HEALTH_CHECKS, family
        checks = family(HEALTH_CHECKS)
        for (key, result), n in sorted(self.counts.items()):
            upstream, _, url = key.partition("|")
            checks.add_metric([result, url, upstream], n)
        yield checks


# The health process's promises to the master (helpers.helper.Heartbeat): a turn of its
# loop is 0.2 s of sleep and a pass over the targets (5 s leaves room for tens of thousands);
# compiling a new table can take up to 30 s, promised before it. A stuck checker is then
# found server.helper_timeout past 6 s, not past 31 s, while its verdicts froze.
TURN = 5.0
COMPILE_TURN = 30.0


class Checker:
    beat = staticmethod(no_beat)        # the helper's Heartbeat.beat, set by run()

    def __init__(self, conf, state_dir):
        self.conf = conf
        self.state_dir = state_dir
        self.table = self.reader = None
        self.states = {}            # key -> ActiveState
        self.greenlets = {}         # key -> (greenlet, target, health conf)
        self.counts = {}            # (key, result) -> n
        self.broken_probes = set()  # keys whose probe raised: its traceback logged once
        self.previous = self.previous_verdicts()
        self.load(conf)

    def previous_verdicts(self):
        """{key: since} of the targets the checker before us, under the same master, judged
        down: a checker the master restarts (it was killed, it crashed) takes them up. Every
        target starting healthy sent traffic to dead ones until they failed their checks
        again (unhealthy_threshold probes). A new master hands over its predecessor's file
        when that checker ran moments ago (app.take_up_health), else removes it."""
        written = read_json(os.path.join(self.state_dir, HEALTH_FILE))
        if not isinstance(written, dict) or written.get("master") != os.getppid():
            return {}
        targets = written.get("targets")
        down = {}
        for key, state in targets.items() if isinstance(targets, dict) else ():
            if isinstance(state, dict) and state.get("healthy") is False:
                since = state.get("since")
                down[key] = since if isinstance(since, (int, float)) else time.time()
        if down:
            log.info("taking up %d target(s) the previous checker judged down until they "
                     "pass their checks: %s", len(down), ", ".join(sorted(down)))
        return down

    def load(self, conf):
        from ..core.table import LiveTable
        from ..plugins import load_registry
        from ..sync.shm import TableReader, etcd_prefix
        self.conf = conf
        self.table = LiveTable.for_conf(conf, load_registry())
        reader = TableReader(conf.etcd["runtime_dir"], etcd_prefix(conf)) if conf.etcd else None
        if self.reader is not None:
            self.reader.close()     # or a counter descriptor kept for good at each reload
        self.reader = reader
        self.follow()

    def follow(self):
        if self.reader is not None:
            self.reader.reopen_if_replaced()    # a runtime_dir removed and made again
        if self.reader is not None and self.reader.changed():
            self.beat(COMPILE_TURN)     # a new table compiled: up to 30 s for a large one
            steps, generation = self.reader.updates()
            self.table.apply_steps(steps)
            # Advance, or every later call re-reads the whole published table. Not record():
            # that is the workers' board, which `routes status` lists as workers.
            self.reader.generation = generation
        self.reconcile()

    def wanted(self):
        """Targets to probe: of named upstreams and of upstreams written inline in routes
        and in their plugins (a split's canary: its health_check was never run)."""
        upstreams = {u.id: u for u in self.table.upstreams.values()}
        for route in self.table.router.routes.values():     # never in place of a named one
            for upstream in (route.upstream, *route.chain.linked_upstreams()):
                upstreams.setdefault(upstream.id, upstream)
        out, checks = {}, {}
        for upstream in upstreams.values():
            if upstream.health_check is None:
                continue
            for target in upstream.targets:
                key = target_key(upstream.id, target.url)
                out[key] = (target, upstream.tls, upstream.protocol)
                checks[key] = upstream.health_check
        checks, stretch = core.within_probe_budget(
            checks, self.conf.upstream_defaults["health_probes_per_second"])
        self.say_stretch(stretch, len(checks))
        return {key: (target, checks[key], tls, protocol)
                for key, (target, tls, protocol) in out.items()}

    stretch = 1.0           # the factor the probe budget last put on every interval

    def say_stretch(self, stretch, targets):
        """Logged when the factor changes: an etcd writer's interval of 0.05 s on a thousand
        targets asked this one process for 20,000 probes a second, and the targets too."""
        if round(stretch, 1) == round(self.stretch, 1):
            return
        self.stretch = stretch
        budget = self.conf.upstream_defaults["health_probes_per_second"]
        if stretch > 1.0:
            log.warning("health checks of %d targets ask for %.0f probes a second, over "
                        "upstream_defaults.health_probes_per_second = %d: every interval is "
                        "%.1f times as long", targets, stretch * budget, budget, stretch)
        else:
            log.info("health checks are within health_probes_per_second again")

    def reconcile(self):
        import gevent
        wanted = self.wanted()
        changed = False
        for key in list(self.greenlets):
            greenlet, *probed = self.greenlets[key]
            if greenlet.dead and key in wanted:
                # A dead check froze its target's last verdict: healthy for good, however
                # the target fared. Said (once a second at most: one that dies at once would
                # say it every turn), and started again below (its state is kept).
                throttled_log.log(log, logging.ERROR, ("check stopped", key),
                                  "the check of target %s stopped (%r); started again", key,
                                  greenlet.exception)
            if greenlet.dead or key not in wanted or wanted[key] != tuple(probed):
                greenlet.kill(block=False)
                del self.greenlets[key]
                if key not in wanted:
                    self.states.pop(key, None)
                    # and its counts: health.prom kept a removed target's series (and this
                    # dict its keys) for the checker's life, however many targets came and went
                    for result in ("success", "failure"):
                        self.counts.pop((key, result), None)
                    self.broken_probes.discard(key)
                    changed = True
        for key, (target, hc, tls, protocol) in wanted.items():
            if key not in self.greenlets:
                if key not in self.states:
                    self.states[key] = self.new_state(key, hc)
                self.greenlets[key] = (gevent.spawn(self.watch, key, target, hc, tls,
                                                    protocol), target, hc, tls, protocol)
                changed = True
        if self.previous and (self.reader is None or self.reader.generation):
            # Verdicts of the checker before us on targets no check wants now (their upstream
            # lost its health_check, or is gone), once the targets are known (in etcd mode,
            # the first table read): health.json held them, and with no other change to
            # publish (no upstream checked any more) they held for good, no one to lift them.
            self.previous = {}
            changed = True
        if changed:
            self.publish()

    def new_state(self, key, hc):
        """A target's state as its checks begin: down if the checker before us judged it so,
        and its first probe at a random point of the first second, to spread them."""
        since = self.previous.pop(key, None)
        state = core.ActiveState(since=time.time()) if since is None else \
            core.ActiveState(healthy=False, since=since)
        state.next_at = time.time() + random.uniform(0, min(hc["interval"], 1.0))
        return state

    def watch(self, key, target, hc, tls=None, protocol="http1"):
        import gevent
        state = self.states[key]
        # A check started again (its conf changed, or the probe budget's stretch moved with
        # the number of targets: every check, at every change of the targets of any upstream)
        # keeps its schedule, never later than its new conf's delay. Each started with a
        # probe within the second: an etcd writer's churn, or a service's instances coming
        # and going, had every target probed about once a second, past
        # health_probes_per_second and the backoff of the dead ones.
        gevent.sleep(max(0.0, min(state.next_at - time.time(),
                                  core.probe_delay(hc, state))))
        while True:
            try:
                # The proxy's own head limit: with the default's, a target whose answers
                # the proxy served under a raised max_response_head was taken out.
                ok, error = probe(target, hc, tls, protocol,
                                  self.conf.upstream_defaults["max_response_head"])
            except UpstreamTLSFilesError as exc:
                # no verdict on the target while the gateway's own files are bad: said once
                # per upstream, checked again at the interval
                throttled_log.log(log, logging.ERROR, ("tls files", key.partition("|")[0]),
                                  "upstream %s: its targets are not checked: %s",
                                  key.partition("|")[0], exc.reason)
                gevent.sleep(hc["interval"])
                continue
            except Exception as exc:        # what the target sent broke the probe: a failure
                if key not in self.broken_probes:
                    self.broken_probes.add(key)
                    log.exception("the check of target %s failed on its answer", key)
                ok, error = False, f"check failed: {type(exc).__name__}: {exc}"[:200]
            now = time.time()
            factor = random.uniform(1 - hc["jitter"], 1 + hc["jitter"])
            self.counts[(key, "success" if ok else "failure")] = \
                self.counts.get((key, "success" if ok else "failure"), 0) + 1
            said = state.last_error
            if state.record(hc, ok, now, factor, error):
                log.warning("target %s of upstream %s is now %s%s", target.url,
                            key.partition("|")[0], "healthy" if state.healthy else "UNHEALTHY",
                            f" ({error})" if error else "")
                self.publish()
            elif not state.healthy and error != said:
                # Down for another reason now (or down since a checker before this one, which
                # left no reason): /admin/upstreams says why, not the first reason or none.
                self.publish()
            gevent.sleep(max(0.0, state.next_at - time.time()))

    publish_failing = False     # health.json cannot be written: said once, not per verdict
    metrics_failing = False     # health.prom, the same

    def publish(self):
        targets = {key: {"healthy": s.healthy, "since": round(s.since, 3), "checks": s.checks,
                         "last_error": s.last_error} for key, s in self.states.items()}
        try:
            atomic_write(os.path.join(self.state_dir, HEALTH_FILE),
                         json.dumps({"pid": os.getpid(), "master": os.getppid(),
                                     "targets": targets}).encode())
        except OSError as exc:
            # A full state_dir: dying here was a restart loop with a traceback each time.
            # The workers keep the verdicts they read last; the checks go on.
            if not self.publish_failing:
                self.publish_failing = True
                log.error("cannot write %s in %s: %s; workers keep the verdicts they read "
                          "last until it can be written: %s", HEALTH_FILE,
                          self.state_dir, exc.strerror, write_remedy(exc))
            return
        if self.publish_failing:
            self.publish_failing = False
            log.warning("%s is written again", HEALTH_FILE)

    def write_metrics(self):
        """health.prom, which /metrics appends, by prometheus_client's textfile writer (label
        values escaped, atomic rename) as sync.py writes its own. A collector of ready counts,
        not Counter objects: with PROMETHEUS_MULTIPROC_DIR inherited from the master, a Counter
        here would also land in the workers' multiprocess files."""
        from prometheus_client import CollectorRegistry, write_to_textfile
        registry = CollectorRegistry()
        registry.register(_CheckCounts(dict(self.counts)))
        try:
            write_to_textfile(os.path.join(self.state_dir, METRICS_FILE), registry)
        except OSError as exc:      # a full state_dir: said once, as publish() says it
            if not self.metrics_failing:
                self.metrics_failing = True
                log.error("cannot write %s in %s: %s", METRICS_FILE, self.state_dir,
                          exc.strerror)
            return
        self.metrics_failing = False

    def run(self):
        import gevent
        last_metrics = 0.0
        while True:
            self.beat(TURN)     # a turn: 0.2 s (follow() promises more before a compile)
            self.follow()
            if time.monotonic() - last_metrics >= 1.0:
                self.write_metrics()
                last_metrics = time.monotonic()
            gevent.sleep(0.2)


def run(conf_path):
    from gevent import monkey
    monkey.patch_all()
    from ..errors import ConfigError
    from .helper import applied_conf, handlers_in_place, heartbeat, start_helper
    conf, state_dir = start_helper(conf_path, "health", state_dir_needed=True)
    beat = heartbeat("health").beat
    beat(60.0)                          # the targets read, then run() beats
    checker = Checker(conf, state_dir)
    checker.beat = beat
    import gevent

    def reload():
        try:
            beat(COMPILE_TURN)          # the conf's table compiled, the loop held meanwhile
            checker.load(applied_conf(conf_path))
            log.info("health: targets re-read from %s", conf_path)
        except ConfigError as exc:
            log.error("health: keeping the previous targets: %s", exc)
    signal.signal(signal.SIGHUP, lambda *_: gevent.spawn(reload))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    handlers_in_place()
    checker.run()
