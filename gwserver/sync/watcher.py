"""``gwserver: config-sync``: one process per host that follows etcd and publishes the table.

Started and supervised by the master (``GatewayArbiter``), never by workers. The loop, after
APISIX's config_etcd and the traps we hit (issue 3):

1. Serve the last snapshot at once, if there is one: a gateway that starts while etcd is
   unreachable serves the routes it had.
2. Range-read the prefix (header revision R), replace the table, publish; watch from R + 1.
3. Each watch batch updates only the items it names; publish if what is served changed.
4. The stream ends or goes silent (``watch_idle_timeout``): resume from the last revision + 1,
   unless etcd's revision is now lower than ours (etcd wiped or restored: full reload) or the
   revision was compacted (full reload).
5. etcd unreachable: keep serving, retry every endpoint with capped exponential backoff and
   full jitter.

A generation is published as the items it changed (shm.TablePublisher); the whole table and
the snapshot are rewritten in the background at most twice a second. ``status.json``
(generation, revision, connection state, rejected items) is what ``gwserver routes status``
reads.
"""
import hashlib
import heapq
import json
import logging
import os
import random
import signal
import time

from ..core.routes import UPSTREAM, upstream_refs
from ..core.table import LiveTable, decode_json
from ..errors import ConfigError
from ..files import accepted_before, compiles_checked
from ..helpers.helper import no_beat
from ..plugins import load_registry
from ..terminal import printable
from .etcd import (AuthRejected, Compacted, EtcdClient, EtcdError, EtcdRefused,
                   PasswordUnreadable)
from .shm import (TablePublisher, TableReader, etcd_prefix, meant_for_gateway, read_json,
                  read_published, unread_order, unread_reason)

log = logging.getLogger("gwserver.sync")


# How much of an etcd key, and of a rejection's reason, the log and status.json show. An id
# is at most 128 characters, but a key in etcd may be 1.5 MiB, and a reason quotes its id
# once a problem: one key of a megabyte was a 4 MB status.json (in /dev/shm, rewritten at
# every change and every watch_idle_timeout), and a line of as many in the log.
SHOWN_KEY = 512
SHOWN_REASON = 4096
# Keys under the prefix no item is read from (unread_reason): named in the log, and listed
# in status.json, up to these many; the rest counted.
UNREAD_LOGGED = 10
UNREAD_SHOWN = 100


def in_turn(items):
    """{id: (version, raw)} of ``items`` ([(turn, id, (version, raw))] of one kind, the turn
    a revision) in the order they came. Two routes that want one path, or two consumers one key, are
    settled by which came first; a full load that put them in etcd's key order let the one
    whose id sorts first win. Where the table holds a version already (what it serves, or
    the snapshot it starts from), an item that changed since comes at its last change
    (mod_revision): a route's update to a path a newcomer took before it is refused, as on
    the hosts that saw them come. A new item comes at its creation (create_revision): a
    route updated after a newcomer was refused for its path holds the path still. Only
    the items' last versions are known: of two routes both new to the table, the older
    one moved later onto the younger one's path goes in first still (docs/etcd.md)."""
    return {item_id: entry for _, item_id, entry in sorted(items)}


def shown(text, limit):
    """``text``, or its start, its length and a digest (two long keys that begin alike stay
    apart in status.json)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode(errors="backslashreplace")).hexdigest()[:12]
    return f"{text[:limit // 2]}... ({len(text)} characters, sha1 {digest})"


def listed(keys, most=10):
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def shown_rejection(key, reason):
    """A rejection ('KIND/ID', reason) as the log and status.json show it: a long id
    shortened wherever the reason quotes it, so what is wrong with it still shows."""
    item_id = key.partition("/")[2]
    if len(item_id) > SHOWN_KEY:
        reason = reason.replace(item_id, shown(item_id, SHOWN_KEY))
    return shown(key, SHOWN_KEY), shown(reason, SHOWN_REASON)


class PublishFailed(Exception):
    """The table could not be written in runtime_dir (full: /dev/shm is shared; removed
    and not made again): published whole once it can be, after a backoff."""


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's recommendation)."""

    def __init__(self, base=0.1, cap=10.0):
        self.base, self.cap, self.attempt = base, cap, 0

    def reset(self):
        self.attempt = 0

    def next(self):
        delay = random.uniform(0, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt += 1
        return delay


# How many versions of an upstream old_static_targets reads back in etcd's history, at most
HISTORY_VERSIONS = 8


def made_of(raw, published):
    """``raw`` (a version of an upstream in etcd's history) as a valid spec, if it is the
    version ``published`` (a service-following upstream, expanded) was made of: it follows
    the same service and every field it names but its targets is as published. Else None (a
    refused update, another version)."""
    try:
        named = decode_json(raw)
        names = set(named) - {"targets"} if isinstance(named, dict) else ()
        written = json.loads(json.dumps(UPSTREAM.validate(named)))  # (as published: lists)
    except ConfigError:
        return None
    return written if written.get("service") and all(
        written.get(name) == published.get(name) for name in names) else None


class ConfigSync:
    def __init__(self, conf):
        etcd = conf.etcd
        self.conf = conf
        self.prefix = etcd_prefix(conf)
        self.client = EtcdClient(etcd["endpoints"], etcd["timeout"], etcd["username"],
                                 etcd["password"], etcd["ca_file"], etcd["cert_file"],
                                 etcd["key_file"], etcd["password_file"])
        self.idle_timeout = etcd["watch_idle_timeout"]
        self.snapshot_path = etcd["snapshot_path"]
        self.table = LiveTable.for_conf(conf, load_registry())
        self.table.expand_services = True       # workers get upstreams with live instances
        self.table.retries_files = True         # (retry_files: only this process does)
        self.publisher = TablePublisher(etcd["runtime_dir"], self.table.published,
                                        etcd["snapshot_path"], {"cluster_id": None,
                                                                "prefix": self.prefix})
        self.backoff = Backoff(cap=etcd["backoff_max"])
        self.revision = None
        # The revision of the table served from the start (the snapshot's, or the one a
        # restarted process took up) until etcd's own: what it is published with, never a 0
        # or a null that lost which etcd history the snapshot had seen (keep_last_good).
        self.start_revision = None
        self.cluster_id = None          # etcd's, with the revision: which state we serve
        self.unread = {}                # key after the prefix -> why no item is read from it
        self.logged_unread = set()
        self.logged_kinds = set()       # kinds not read, one key of which was logged
        self.lost = False               # the connection broke since the last full load
        self.quiet_watch = None         # the endpoint whose watch just ended silent
        self.catch_up = None            # the revision the resumed watch must reach at once
        self.withheld = None            # what the last watch that withheld changes did
        self.served = None
        self.served_targets = {}        # table.service_targets as last published
        self.snapshot_served = None     # served at the start until etcd answers (its full load)
        self.logged = {}
        self.unreachable_said = set()   # log_unreachable's warnings that still hold
        self.rejections_total = 0
        self.connected = False
        self.error = None               # why etcd did not answer, while it does not
        self.auth_failed = False        # ... because it refused our credentials
        self.refused = False            # ... because it answered the sync's call with an error
        self.unreadable = False         # ... because [etcd] password_file could not be read
        self.unpublished = False        # the table changed, and its publication failed
        # A table of this process's own making (etcd's, its snapshot) is published: until
        # then the workers serve what it took up from runtime_dir, which a predecessor
        # compiled beside another conf file perhaps (a reload's); new workers wait for it.
        self.own_table = False
        self.write_error = None         # the last write in runtime_dir that failed, if any
        self.last_sync = None
        self.started = time.time()
        # The master's watch on this process (helpers.helper.Heartbeat.beat, set by run()):
        # one turn of the
        # loop is a watch that may stay quiet idle_timeout, or a full load: a few etcd calls
        # (and an authentication), each a connect and a read on every endpoint in turn, and
        # the table's compiling (~6 s of CPU for 60,000 routes).
        self.beat = no_beat
        # A quiet turn (a watch with no change, its few calls) promises that alone; a turn
        # that compiles (a full load, a batch of changes) promises 30 s more first. Had every
        # turn promised the compile, a sync process stuck on a quiet watch held every etcd
        # change back 30 s longer before the master killed it.
        self.quiet_turn = self.idle_timeout + 8 * etcd["timeout"] * len(etcd["endpoints"]) + 2.0
        self.turn = self.quiet_turn + 30.0

    # -- publishing ----------------------------------------------------------------------------

    def versions(self):
        return {"routes": {k: v[0] for k, v in self.table.route_specs.items()},
                "upstreams": {k: v[0] for k, v in self.table.upstream_specs.items()},
                "consumers": {k: v[0] for k, v in self.table.consumer_specs.items()},
                # A fence follows the table around its route, at the route's version.
                "fences": {k: (v[0], json.dumps(v[1], sort_keys=True))
                           for k, v in self.table.fence_specs.items()}}

    def publish(self, full=False):
        """Publish what changed since the last generation (everything when ``full``, or when
        the last publication failed); PublishFailed if the runtime_dir cannot take it. A
        failed write used to end the sync process at each change, and again at each start
        while runtime_dir stayed full: the master restarted it with a growing backoff, a
        traceback each time, and a change made meanwhile waited for the next restart."""
        full = full or self.unpublished
        with self.publisher.lock:       # consistent with what the base writer reads
            versions = self.versions()
            delta = {}
            if not full:
                served = self.served or {"routes": {}, "upstreams": {}}
                specs = {"routes": self.table.route_specs,
                         "upstreams": self.table.upstream_specs,
                         "consumers": self.table.consumer_specs,
                         "fences": self.table.fence_specs}
                for kind in specs:
                    now, before = versions[kind], served.get(kind, {})
                    delta[kind] = {k: list(specs[kind][k]) for k, v in now.items()
                                   if before.get(k) != v}
                    delta[kind].update({k: None for k in before if k not in now})
                if self.table.service_targets != self.served_targets:
                    # (workers read none of it; a sync process restarted takes it up)
                    delta["service_targets"] = dict(self.table.service_targets)
            self.served = versions
            self.served_targets = dict(self.table.service_targets)
        try:
            revision = self.revision if self.revision is not None else self.start_revision
            generation = self.publisher.publish(delta, revision or 0, full=full)
        except OSError as exc:
            self.unpublished = True
            self.cannot_write("publish the table", exc)
            raise PublishFailed(str(exc)) from None
        self.unpublished = False
        self.own_table = True
        self.can_write()
        changed = len(versions["routes"]) if full else \
            sum(len(delta[kind]) for kind in versions)
        log.info("published generation %d (etcd revision %s, %s %d items; %d routes, "
                 "%d upstreams)", generation, self.revision, "all" if full else "changed",
                 changed, len(versions["routes"]), len(versions["upstreams"]))
        self.write_status()

    def write_metrics(self):
        """Prometheus text format in runtime_dir/metrics.prom (node_exporter's textfile
        collector reads it; the admin listener of issue 5 will serve it)."""
        from prometheus_client import (CollectorRegistry, disable_created_metrics,
                                       write_to_textfile)
        disable_created_metrics()
        registry = CollectorRegistry()
        from ..server.metrics import SYNC_METRICS, SYNC_REJECTED, SYNC_REJECTIONS, make
        values = (self.publisher.generation, self.revision or 0, 1 if self.connected else 0,
                  self.last_sync or 0, len(self.table.route_specs),
                  len(self.table.upstream_specs))
        for metric, value in zip(SYNC_METRICS, values, strict=True):   # in the catalog's order
            make(metric, registry=registry).set(value)
        rejected = make(SYNC_REJECTED, registry=registry)
        # refused(), as `routes status` counts them: a route waiting for its upstream is
        # served (a 503 until it arrives) and no problem, and counted here it fired
        # GwserverConfigRejected with nothing for `routes status` to name.
        refused = self.table.refused()
        for kind in ("routes", "upstreams", "consumers"):
            rejected.labels(kind).set(sum(1 for key in refused if key.startswith(kind + "/")))
        make(SYNC_REJECTIONS, registry=registry).inc(self.rejections_total)
        write_to_textfile(f"{self.publisher.runtime_dir}/metrics.prom", registry)

    def cannot_write(self, what, exc):
        """Said once until a write in runtime_dir works again, not at every retry."""
        if self.write_error is None:
            log.error("cannot %s in %s: %s; the workers serve the last table published "
                      "there; trying again", what, self.publisher.runtime_dir, exc)
        self.write_error = exc

    def can_write(self):
        if self.write_error is not None:
            log.info("writing in %s works again", self.publisher.runtime_dir)
        self.write_error = None

    def write_status(self):
        try:
            self._write_status()
        except OSError as exc:      # (a full runtime_dir): rewritten at least every turn
            self.cannot_write("write the status", exc)
        else:
            if not self.unpublished:    # (a status may fit where the table does not)
                self.can_write()

    def _write_status(self):
        self.publisher.write_status({
            "generation": self.publisher.generation, "revision": self.revision,
            "connected": self.connected, "endpoint": self.client.endpoint,
            "last_sync": self.last_sync, "prefix": self.prefix, "cluster_id": self.cluster_id,
            "routes": len(self.table.route_specs), "upstreams": len(self.table.upstream_specs),
            "consumers": len(self.table.consumer_specs),
            "rejected": dict(shown_rejection(key, reason)
                             for key, reason in sorted(self.table.rejected.items())),
            "unread": dict((shown(key, SHOWN_KEY), self.unread[key]) for key in
                           heapq.nsmallest(UNREAD_SHOWN, self.unread, key=unread_order)),
            "unread_total": len(self.unread),
            "pid": os.getpid(),
            "error": None if self.connected else self.error,
            "auth_failed": not self.connected and self.auth_failed,
            "refused": not self.connected and self.refused,
            "password_unreadable": not self.connected and self.unreadable,
            "watch_withheld": self.withheld,    # the last watch found silent on changes
            "own_table": self.own_table,        # (worker.wait_for_table)
            "lost": self.lost})     # etcd failed us since the last full load (workers ask)
        self.write_metrics()

    # -- etcd ----------------------------------------------------------------------------------

    def split(self, key):
        """'PREFIX/routes/ID' -> ('routes', 'ID'); 'PREFIX/services/NAME/INSTANCE' ->
        ('services', ('NAME', 'INSTANCE')); keys of other kinds -> (None, None)."""
        kind, _, item_id = key[len(self.prefix):].partition("/")
        if kind in ("routes", "upstreams", "consumers") and item_id and "/" not in item_id:
            return kind, item_id
        if kind == "services":
            service, _, instance = item_id.partition("/")
            if service and instance and "/" not in instance:
                return kind, (service, instance)
        return None, None

    def full_load(self, snapshot=None):
        """Make the table exactly what etcd holds under the prefix, by value (and the
        ``snapshot``'s last good versions of what it holds refused: keep_last_good)."""
        self.beat(self.turn)
        revision, items = self.client.range_prefix(self.prefix, created=True)
        cluster_id = self.client.cluster_id
        snapshot, self.snapshot_served = snapshot or self.snapshot_served, None
        found = {"routes": [], "upstreams": [], "consumers": []}
        instances = {}
        self.unread = {}
        for key, value, mod_revision, create_revision in items:
            kind, item_id = self.split(key)
            self.note_unread(key, kind, "put")
            if kind == "services":
                instances.setdefault(item_id[0], {})[item_id[1]] = value
            elif kind:
                # When it came: a change of an item the table holds at its last change, a
                # new one at its creation (see in_turn)
                held = item_id in getattr(self.table, f"wanted_{kind}")
                found[kind].append((mod_revision if held else create_revision, item_id,
                                    (mod_revision, value)))
        wanted = {kind: in_turn(items) for kind, items in found.items()}
        was = self.cluster_id or self.publisher.source.get("cluster_id")
        if was and cluster_id != was:
            log.warning("the table served came from etcd cluster %s; etcd is cluster %s: "
                        "replacing it whole, by value", was, cluster_id)
        with self.publisher.lock:           # the base writer reads the table under this lock
            self.table.replace_instances(instances, revision)
            self.table.replace_all(wanted["routes"], wanted["upstreams"], wanted["consumers"])
            self.revision, self.cluster_id, self.lost = revision, cluster_id, False
            self.start_revision = None
            self.quiet_watch = self.catch_up = None     # (whatever was withheld is in)
            self.publisher.source = {"cluster_id": cluster_id, "prefix": self.prefix}
        self.settle_unknown_targets()
        if snapshot is not None:
            # before the refusals are said: "answers 503" of a route kept serving was logged,
            # and said again (counted again) at the next unrelated change
            self.keep_last_good(snapshot)
        self.log_rejections()
        self.log_unreachable()
        log.info("loaded %d keys from etcd cluster %s at revision %d", len(items), cluster_id,
                 revision)

    def why_reload(self):
        """Why the watch cannot resume from our revision + 1 (None if it can)."""
        cluster_id, current = self.client.identity(self.prefix)
        if cluster_id != self.cluster_id:
            return f"etcd is now cluster {cluster_id}, not {self.cluster_id}"
        if current < self.revision:
            return (f"etcd revision went backwards ({current} < {self.revision}): etcd was "
                    f"wiped or restored")
        if not self.lost:
            self.expect_catch_up(current)
            return None
        if self.client.compacted(self.prefix, self.revision):
            return f"watch from revision {self.revision}: revision compacted"
        # Same cluster id, revision not lower: the same history, or a restored or wiped etcd
        # (same name, peers and token give the same cluster id) written back up to our
        # revision or past it. Only the values tell them apart.
        return (f"the connection to etcd was lost (etcd at revision {current}, ours "
                f"{self.revision}): etcd may have been restored or wiped meanwhile")

    def expect_catch_up(self, current):
        """After a watch that ended silent: if etcd changed keys under the prefix meanwhile
        (from our revision + 1 to ``current``), the watch resumed must bring them at once,
        in its catch-up (watched_all says whether it did). A watch that hangs (a member cut off
        from its cluster, a proxy that holds a stream) was resumed as a quiet one: every
        watch made there hung alike, its catch-up never came, and no change reached the
        workers again, with nothing said. Changes made as the watch ended come in the
        catch-up of a member that works: no false alarm. None made: etcd's revision is
        our position (a "created" message moves nothing, and a quiet prefix on a busy etcd
        kept the last full load's revision until a compaction passed it: a full reload,
        on a healthy cluster, at every compaction)."""
        endpoint, self.quiet_watch = self.quiet_watch, None
        if endpoint is None or current <= self.revision:
            return
        if self.client.changes_since(self.prefix, self.revision, current):
            self.catch_up = current
        else:
            self.revision = current     # (nothing under the prefix between the two)

    # How long the catch-up of a resumed watch may take (see expect_catch_up)
    CATCH_UP = 2.0

    def watched_all(self):
        """After a watch that was to bring a catch-up: why a full load must follow, if it
        ended without it (None if it came)."""
        expected, self.catch_up = self.catch_up, None
        if expected is None or self.revision >= expected:
            return None
        endpoint = self.client.move_on()
        reason = (f"the watch at {endpoint} withheld changes etcd made under {self.prefix} "
                  f"(revisions {self.revision + 1} to {expected}): silent for "
                  f"{self.idle_timeout:g}s, then no catch-up when resumed (a member cut off "
                  f"from its cluster, or a proxy that holds streams)")
        self.withheld = {"at": time.time(), "endpoint": endpoint, "reason": reason}
        return reason

    def apply(self, events):
        with self.publisher.lock:
            routes_put = self._apply(events)
            self.table.retry_files()    # (a busy prefix's watch may never go quiet)
        self.log_rejections()
        if routes_put:
            self.log_unreachable(routes_put)

    def _apply(self, events):
        """-> the ids of the routes put."""
        instances = []      # applied together, after the rest: one rebuild per service
        routes_put = set()
        for kind_of_event, key, value, mod_revision in events:
            kind, item_id = self.split(key)
            if kind is None:
                self.note_unread(key, kind, kind_of_event)
                continue
            if kind == "services":
                instances.append((*item_id, None if kind_of_event == "delete" else value,
                                  mod_revision))
                continue
            if kind == "consumers":
                if kind_of_event == "delete":
                    self.table.delete_consumer(item_id)
                else:
                    self.table.put_consumer(item_id, value, mod_revision)
                continue
            if kind_of_event == "delete":
                (self.table.delete_route if kind == "routes" else
                 self.table.delete_upstream)(item_id)
            elif kind == "routes":
                self.table.put_route(item_id, value, mod_revision)
                routes_put.add(item_id)
            else:
                self.table.put_upstream(item_id, value, mod_revision)
        if instances:
            self.table.apply_instances(instances)
        return routes_put

    def note_unread(self, key, kind, event):
        """Keep ``key`` among those no item is read from (unread_reason), or drop it."""
        key = key[len(self.prefix):]
        reason = kind is None and unread_reason(key)
        if reason and event != "delete":
            self.unread[key] = reason
        else:
            self.unread.pop(key, None)

    def log_unread(self):
        """Each key of the gateway's kinds no item is read from, once while it is there, and
        one key of each other kind once: the first few by name, the rest counted (a prefix
        shared with another tool's keys writes no flood)."""
        new = set(self.unread) - self.logged_unread
        self.logged_unread = set(self.unread)
        # Of a kind the gateway does not read, one key a kind for the process's life: a
        # tool's lock or lease keys under a shared prefix, put and deleted again and again,
        # each logged a line at every put.
        new = [key for key in new if meant_for_gateway(key.partition("/")[0]) or
               key.partition("/")[0] not in self.logged_kinds]
        # Such a kind's first key alone takes a place among those named: all of a tool's
        # keys put in one change took the places, were skipped but one, and a misspelt kind
        # after them (route/orders) went unnamed.
        named, kinds = [], set()
        for key in sorted(new, key=unread_order):
            kind = key.partition("/")[0]
            if not meant_for_gateway(kind):
                if kind in kinds:
                    continue
                kinds.add(kind)
            named.append(key)
        for key in named[:UNREAD_LOGGED]:
            kind = key.partition("/")[0]
            ours = meant_for_gateway(kind)
            if not ours:
                self.logged_kinds.add(kind)
            log.warning("etcd key %s%s is not read: %s%s", self.prefix,
                        printable(shown(key, SHOWN_KEY)), self.unread[key],
                        "" if ours else
                        f" (the other keys of {printable(shown(kind, SHOWN_KEY))}/ are not "
                        f"logged: gwserver routes status lists them)")
        unnamed = len(new) - min(len(named), UNREAD_LOGGED)
        if unnamed:
            log.warning("%d more keys under %s are not read (gwserver routes status lists "
                        "them)", unnamed, self.prefix)

    def log_rejections(self):
        """Log each rejection once (and again only if its reason changes)."""
        self.log_unread()
        for key, reason in self.table.rejected.items():
            if self.logged.get(key) != reason:
                # one line whatever the key holds: a newline in it forged log lines
                log.warning("rejected %s%s: %s", self.prefix,
                            *map(printable, shown_rejection(key, reason)))
                self.rejections_total += 1
        self.logged = dict(self.table.rejected)

    def log_unreachable(self, route_ids=None):
        """What `routes put` notes, said when a route written straight to etcd (etcdctl, a
        deploy tool) takes a path another route served, by a higher priority, or never gets
        one: the takeover was silent. Each warning once (a full load, ``route_ids`` None,
        starts over). After a watch batch only the routes sharing a path with the ones put
        are looked at: all 10,000 of a large table took ~70 ms, on every change."""
        from ..core.routes import unreachable_paths
        from ..core.target import static_key
        routes = self.table.router.routes
        specs = [route.spec for route in routes.values()]
        if route_ids is not None:
            # keyed as the router keys them: a route put on "/a%2Bb" takes "/a+b"'s requests
            paths = {static_key(p) for i in route_ids if i in routes
                     for p in routes[i].spec["paths"]}
            specs = [spec for spec in specs
                     if not paths.isdisjoint(static_key(p) for p in spec["paths"])]
        found = set(unreachable_paths(specs))
        for warning in sorted(found - self.unreachable_said):
            log.warning("%s", warning)
        self.unreachable_said = found if route_ids is None else self.unreachable_said | found

    def read_snapshot(self):
        """The snapshot this gateway may serve until etcd answers, or None."""
        snapshot = read_published(self.snapshot_path, full=True)
        if not snapshot:
            if read_json(self.snapshot_path) is not None:
                log.warning("snapshot %s is not a table the sync process wrote: not serving "
                            "it", self.snapshot_path)
            return None
        prefix = snapshot.get("prefix", self.prefix)
        if prefix != self.prefix:
            log.warning("snapshot %s holds etcd prefix %s, not %s: not serving it",
                        self.snapshot_path, prefix, self.prefix)
            return None
        return snapshot

    def take_snapshot(self, snapshot):
        """The table holds the snapshot's versions (the publisher's lock held)."""
        self.table.apply_published(snapshot["table"])
        self.table.take_service_targets(snapshot["table"].get("service_targets") or {})

    def serve_snapshot(self, snapshot):
        log.info("serving snapshot %s (etcd cluster %s, revision %s) until etcd answers",
                 self.snapshot_path, snapshot.get("cluster_id"), snapshot.get("revision"))
        with self.publisher.lock:
            self.take_snapshot(snapshot)
            # Marked: a worker that serves a table already keeps it (TableReader).
            self.publisher.source = {"cluster_id": snapshot.get("cluster_id"),
                                     "prefix": self.prefix, "snapshot": True}
        self.revision = None            # a snapshot is a start, not a position in etcd
        self.start_revision = etcd_revision(snapshot.get("revision"))
        self.snapshot_served = snapshot
        try:
            self.publish(full=True)
        except PublishFailed:
            pass                        # said; the loop publishes it first (unpublished)

    # How long a start with nothing served in runtime_dir asks etcd before it serves the
    # snapshot instead: within the 5 s a new worker waits for a first table (TABLE_WAIT).
    FIRST_TRY = 2.0

    def start_fresh(self):
        """Nothing served in runtime_dir: etcd's table if it answers within FIRST_TRY, else
        the snapshot. Published first, the snapshot was what workers listened with until the
        range came: a route deleted while the gateway was stopped answered again meanwhile.
        Without a snapshot the loop asks etcd, and nothing is published until it answers.
        A first try that fails is no outage yet: each member had a share of FIRST_TRY, not
        ``timeout``, and a healthy one may take longer (a large table's range, a loaded
        member). Said as "etcd unreachable" (an ERROR, at each start, of a cluster that
        answered every call), it is left to the loop, which asks with ``timeout``."""
        snapshot = self.read_snapshot()
        if snapshot is None:
            return
        # Loaded onto the snapshot, as after serving it until etcd answered: etcd's changes
        # since go in as they came (in_turn), not onto nothing, where a route's update that
        # the hosts that saw it come refused could take its path before the newcomer that
        # holds it there
        with self.publisher.lock:
            self.take_snapshot(snapshot)
        timeout = self.client.timeout
        self.client.timeout = min(timeout, self.FIRST_TRY / len(self.client.endpoints))
        try:
            self.full_load(snapshot)
        except EtcdError as exc:
            log.warning("no table from etcd in the first %gs of the start (%s): serving the "
                        "snapshot meanwhile, and asking etcd again", self.FIRST_TRY, exc)
            self.serve_snapshot(snapshot)
            return
        finally:
            self.client.timeout = timeout
        self.mark_synced()
        try:
            self.publish(full=True)
        except PublishFailed:
            pass                        # said; the loop publishes it first (unpublished)

    def old_static_targets(self, upstream_id, published, ask_etcd=True):
        """The static targets of a kept service-following upstream whose table (taken up, or
        the snapshot) was written before tables listed them: those of the version in etcd's
        history the published one was made of (made_of: past refused updates), else (history
        compacted, etcd gone) its published targets less the service's live instances. Taken
        as none, it served the live instances alone until etcd's version was fixed.
        -> (targets or None, whether etcd may be asked again)"""
        revision = self.table.wanted_upstreams[upstream_id][0] - 1
        if ask_etcd:
            # up to HISTORY_VERSIONS reads of etcd's for each of many such upstreams: a
            # turn's promise (8 calls' timeouts and more) is made for each
            self.beat(self.turn)
            try:
                # The version before the refused update may be refused too (a second try
                # at the same change): its targets (a host moved to) served as the good
                # version's. Read back to the version the published one was made of.
                for _ in range(HISTORY_VERSIONS):
                    found = self.client.value_at(f"{self.prefix}upstreams/{upstream_id}",
                                                 revision)
                    if found is None:
                        break
                    written = made_of(found[0], published)
                    if written is not None:
                        return written.get("targets"), True
                    revision = found[1] - 1
            except EtcdError as exc:
                log.info("upstreams/%s: its static targets are not read from etcd's history "
                         "(%s): its published targets less the live instances", upstream_id,
                         exc)
                ask_etcd = isinstance(exc, Compacted)
        return self.table.without_instances(published.get("service"),
                                            published.get("targets")), ask_etcd

    def settle_unknown_targets(self):
        """The table taken up (load_served) did not list static targets: a kept
        service-following upstream, served again from it beside etcd's refused update, gets
        those of its last good version (old_static_targets)."""
        unknown, self.table.targets_unknown = self.table.targets_unknown, {}
        fixes, ask_etcd = [], True
        for upstream_id, targets in unknown.items():
            if upstream_id not in self.table.followers or \
                    f"upstreams/{upstream_id}" not in self.table.rejected:
                continue        # etcd's version serves, with its own static targets
            spec = self.table.followers[upstream_id][1]
            static, ask_etcd = self.old_static_targets(
                upstream_id, {**spec, "targets": targets}, ask_etcd)
            fixes.append((upstream_id, static))
        with self.publisher.lock:
            for upstream_id, static in fixes:
                version, spec = self.table.followers[upstream_id]
                etcd_version, etcd_raw = self.table.wanted_upstreams[upstream_id]
                self.table.put_upstream(upstream_id, json.dumps({**spec, "targets": static}),
                                        version)
                self.table.put_upstream(upstream_id, etcd_raw, etcd_version)    # refused again

    def keep_last_good(self, snapshot):
        """An item etcd holds a refused update of, and the snapshot a good version: serve
        that, as a sync process that saw the update come keeps its last good version. A
        gateway started afresh (a reboot, a stop and start: nothing in runtime_dir) fenced
        such a route (503) or dropped such an upstream or consumer, while every other host
        went on serving it. Only the version that update replaced (``replaced``), and not
        from another etcd cluster's snapshot: what it held is no version of these items.
        The load went onto the snapshot's versions (start_fresh, serve_snapshot), and a
        refused update leaves the version the table holds serving: one that is not the last
        good is dropped, as on a host that saw the key deleted or changed. What the snapshot
        lacks came in its turn (in_turn), after the snapshot's versions."""
        same_cluster = snapshot.get("cluster_id") == self.cluster_id
        puts = {"upstreams": self.table.put_upstream, "routes": self.table.put_route,
                "consumers": self.table.put_consumer}
        deletes = {"upstreams": self.table.delete_upstream, "routes": self.table.delete_route,
                   "consumers": self.table.delete_consumer}
        # Asked of etcd before the lock is taken (the base writer waits on it), and no more
        # once etcd fails (a wait of ``timeout`` per item)
        changes, kept, history, seen = [], [], True, snapshot.get("revision") or 0
        static = snapshot["table"].get("service_targets")
        known = static is not None          # None: a snapshot written before they were listed
        static = static if isinstance(static, dict) else {}     # (a file by another hand)
        ask_etcd = True
        for kind in puts:       # upstreams first: the routes find theirs
            served = getattr(self.table, f"{kind[:-1]}_specs")
            wanted = getattr(self.table, f"wanted_{kind}")
            for item_id, (version, spec) in snapshot["table"].get(kind, {}).items():
                key = f"{kind}/{item_id}"
                # An upstream etcd's version of which was accepted here, but only as no
                # route was served yet to refuse it: a route the snapshot holds good that
                # uses it was refused instead, fenced (503), where the hosts that saw the
                # update come refused the upstream as unfit and served the route.
                unfit = kind == "upstreams" and key not in self.table.rejected and \
                    item_id in wanted and wanted[item_id][0] != version and \
                    self.refused_users(item_id, snapshot)
                if item_id not in wanted or key not in self.table.rejected and not unfit or \
                        key in self.table.waiting:
                    continue        # etcd deleted it, or its version is good
                etcd_version, etcd_raw = wanted[item_id]
                replaced = same_cluster and etcd_version <= seen    # the snapshot saw it come
                if same_cluster and not replaced and history:
                    replaced, history = self.replaced(key, version, etcd_version, seen)
                # (served: the snapshot's, served). A service-following one is put again
                # even so: served from the snapshot until etcd answered, its targets were
                # still the instances of the snapshot's day (see below)
                if (replaced if unfit else replaced != (item_id in served)) or \
                        replaced and kind == "upstreams" and spec.get("service"):
                    if replaced and kind == "upstreams" and spec.get("service") and not known:
                        static[item_id], ask_etcd = self.old_static_targets(item_id, spec,
                                                                            ask_etcd)
                    changes.append((kind, item_id, replaced, version, spec, etcd_version,
                                    etcd_raw))
                elif replaced:
                    kept.append(key)    # the table holds the snapshot's version: it serves
        dropped, again = [], []
        with self.publisher.lock:
            for kind, item_id, replaced, version, spec, etcd_version, etcd_raw in changes:
                key = f"{kind}/{item_id}"
                if kind != "upstreams" and key not in self.table.rejected:
                    continue        # etcd's version serves now (its unfit upstream's kept)
                if replaced:
                    if kind == "upstreams" and spec.get("service"):
                        # published expanded: its targets are the instances of the
                        # snapshot's day, and one deregistered meanwhile kept its share of
                        # the traffic for good; the live ones are its targets again, beside
                        # the static targets it was written with (the snapshot lists them:
                        # dropped with the instances, they served no more until etcd's
                        # version was fixed)
                        spec = {**spec, "targets": static.get(item_id)}
                    if puts[kind](item_id, json.dumps(spec), version):
                        kept.append(f"{kind}/{item_id}")
                else:
                    deletes[kind](item_id)
                    dropped.append(f"{kind}/{item_id}")
                again.append((kind, item_id, etcd_version, etcd_raw))
            # etcd's versions again, refused again: they leave the good ones serving, or (the
            # snapshot's refused too, its paths taken, say) all as it was. Only once every
            # good version is in: an upstream put again before the route it is unfit for
            # was (that route's own update refused too) went in, no route served to refuse
            # it, and the route's last good version was then refused for it, fenced (503).
            for kind, item_id, etcd_version, etcd_raw in again:
                puts[kind](item_id, etcd_raw, etcd_version)
        if kept:
            log.warning("etcd holds refused updates of %d item(s) that snapshot %s holds "
                        "good: serving the snapshot's version of %s", len(kept),
                        self.snapshot_path, listed(kept))
        if dropped:
            log.warning("etcd holds refused updates of %d item(s) whose version in snapshot "
                        "%s is no longer theirs (deleted or changed since): not serving %s",
                        len(dropped), self.snapshot_path, listed(dropped))

    def refused_users(self, upstream_id, snapshot):
        """Does a route refused here, which the snapshot holds, use ``upstream_id``?"""
        for route_id, (_, spec) in snapshot["table"].get("routes", {}).items():
            if f"routes/{route_id}" in self.table.rejected:
                try:
                    if upstream_id in upstream_refs(spec, self.table.registry):
                        return True
                except ConfigError:
                    continue        # (a hook that raises: the route is refused for it)
        return False

    def replaced(self, key, version, etcd_version, seen=0):
        """Did etcd's refused update of ``key`` (at ``etcd_version``) replace the snapshot's
        ``version``, the last good one a host that saw it come keeps? Not if the key changed
        otherwise while this gateway was down: deleted (a consumer revoked) and put again
        refused, or put good and then refused (a key rotated): the snapshot's version, served,
        accepted the revoked key again. -> (replaced, whether etcd may be asked again).
        Also when the value it replaced is one the snapshot (at revision ``seen``) had seen
        come: a service-following upstream is published at the later of its own and its
        service's revision, never its own, and was never kept."""
        try:
            before = self.client.mod_revision_at(self.prefix + key, etcd_version - 1)
        except EtcdError as exc:        # Compacted: not known, so not kept
            log.info("%s: the snapshot's version is not served: etcd's history before its "
                     "refused update is not read (%s)", key, exc)
            return False, isinstance(exc, Compacted)    # (etcd gone: no wait per item)
        return before is not None and (before == version or before <= seen), True

    def load_served(self):
        """A sync process that restarts (the last one died; the master started this one)
        takes up what the workers serve now, from runtime_dir: the snapshot lags it by up to
        TablePublisher.MAX_STALE, and publishing that would roll the workers back. -> bool"""
        reader = TableReader(self.publisher.runtime_dir, self.prefix)
        try:
            if not reader.changed():
                return False            # nothing published here: a first start
            steps, _ = reader.updates()
        finally:
            reader.close()              # (its counter descriptor, held for good otherwise)
        if not steps or steps[0][0] != "full" or steps[0][1].get("prefix") != self.prefix:
            return False
        base = steps[0][1]
        with self.publisher.lock, accepted_before():   # (etcd's versions are loaded next)
            self.table.apply_steps(steps)
            # None when no step lists them: a table written before they were (a hot upgrade)
            targets = base["table"].get("service_targets")
            for _, change in steps[1:]:
                targets = change.get("service_targets", targets)
            self.table.take_service_targets(targets)
            self.served_targets = dict(self.table.service_targets)
            self.publisher.source = {"cluster_id": base.get("cluster_id"),
                                     "prefix": self.prefix}
            # The revision the table is at (the last step's): took_up writes the base and
            # the snapshot again with it, which said null (a worker started then told the
            # board so; a start from that snapshot lost which etcd history it had seen).
            # Ours stays None: a full load from etcd comes first.
            self.start_revision = etcd_revision(steps[-1][1].get("revision"))
            self.publisher.revision = self.start_revision
        self.publisher.took_up()
        self.served = self.versions()   # what the workers have: nothing to publish
        log.info("taking up the table the workers serve (generation %d, etcd revision %s) "
                 "until etcd answers", self.publisher.generation, steps[-1][1].get("revision"))
        return True

    def run(self):
        # Without a snapshot nothing is published until etcd answers: workers serve the conf
        # file's static routes, and /-/ready answers 503 (no first table), so a load balancer
        # sends no traffic to a gateway that lacks every etcd route.
        self.beat(self.turn)            # the served table or snapshot compiled
        if not self.load_served():
            self.start_fresh()
        self.write_status()             # routes status works from the start, etcd or not
        while True:
            self.beat(self.turn if self.revision is None or self.unpublished else
                      self.quiet_turn)      # (full_load promises its compile itself)
            try:
                self.sync_once()
            except Compacted as exc:
                log.warning("watch from revision %s: %s; reloading everything",
                            self.revision, exc)
                self.revision = None
            except (EtcdError, PublishFailed) as exc:   # (answer_shaped: a malformed answer)
                if isinstance(exc, EtcdError):
                    self.unreachable(exc)
                self.write_status()
                pause = self.backoff.next()
                self.beat(pause + self.turn)
                time.sleep(pause)

    def unreachable(self, exc):
        """Said once an outage (not every retry): when the connection is lost, and at the
        first try after a start, whatever is served meanwhile. Served from a snapshot (or
        from the table a restarted sync process took up), the first failure once went
        unsaid: a reload with a mistyped etcd password, a CA that does not sign etcd's
        certificate, never synced again, and the journal never said why. A refusal of our
        credentials is said as one (it names the user), and so is an error etcd answers a
        call with (a user without access to the prefix), never as "etcd unreachable"; each
        said again when the failure changes kind."""
        auth_failed, refused = isinstance(exc, AuthRejected), isinstance(exc, EtcdRefused)
        # (etcd was not even asked: said "etcd unreachable", the operator looked for a
        # network problem, as for a refused password before)
        unreadable = isinstance(exc, PasswordUnreadable)
        if self.connected or not self.lost or auth_failed != self.auth_failed or \
                refused != self.refused or unreadable != self.unreadable:
            what = str(exc) if auth_failed else \
                f"etcd refused the sync's call: {exc}" if refused else \
                f"cannot authenticate to etcd: {exc}" if unreadable else \
                f"etcd unreachable: {exc}"
            if self.served is None:
                log.error("%s; no snapshot either: serving the conf file's static routes "
                          "only, and /-/ready answers 503 until etcd answers", what)
            else:
                log.error("%s; serving the last good table", what)
        self.connected, self.lost, self.error = False, True, str(exc)
        self.auth_failed, self.refused, self.unreadable = auth_failed, refused, unreadable

    def sync_once(self):
        if self.unpublished:
            self.publish(full=True)     # what the failed publication held, first
        if self.revision is not None:
            reason = self.why_reload()
            if reason:
                log.warning("%s; reloading everything, by value", reason)
                self.revision = None
        if self.revision is None:
            self.full_load()
            self.mark_synced()
            self.publish(full=True)
            self.beat(self.quiet_turn)      # compiled: a watch is next
        idle = self.idle_timeout if self.catch_up is None else \
            min(self.idle_timeout, self.CATCH_UP)
        for revision, events in self.client.watch_prefix(self.prefix, self.revision + 1, idle):
            self.revision = max(self.revision, revision)
            self.beat(self.turn if events else self.quiet_turn)
            self.mark_synced()
            if events:
                # Published even when only rejections changed: a worker at revision R has
                # then seen everything etcd had up to R (status and benchmarks rely on it).
                self.apply(events)
                self.publish()
                self.beat(self.quiet_turn)  # compiled: the watch goes on
            elif not self.retry_files():
                self.write_status()
        # A quiet watch ends after idle_timeout: the status is rewritten then too, so its age
        # tells a live sync process from a stale file (``gwserver routes status``). Whether
        # it was quiet or withheld changes is asked before it is resumed (why_reload).
        reason = self.watched_all()
        if reason:
            log.warning("%s; reloading everything, by value", reason)
            self.revision = None
        else:
            self.quiet_watch = self.client.endpoint
        if not self.retry_files():
            self.write_status()

    def retry_files(self):
        """Put again the items refused over tls files that changed since (at least once a
        watch_idle_timeout): -> whether the table was published (only when one of them was
        accepted: a generation of no change, each worker applying it, at every quiet turn
        while a file kept changing and stayed bad)."""
        with self.publisher.lock:
            accepted = self.table.retry_files()
        self.log_rejections()           # (a reason that changed: said once)
        if not accepted:
            return False
        self.publish()
        return True

    def mark_synced(self):
        if not self.connected:
            log.info("connected to etcd at %s", self.client.endpoint)
        self.connected = True
        self.last_sync = time.time()
        self.backoff.reset()


def etcd_revision(value):
    """A published document's "revision" if it is one (a file by another hand: not)."""
    return value if type(value) is int and value >= 0 else None


def snapshot_warnings(conf):
    """What ``gwserver check`` says of the snapshot on disk: another prefix's, or another etcd
    cluster's (the gateway would serve it from start until etcd answers)."""
    etcd = conf.etcd
    snapshot = read_published(etcd["snapshot_path"], full=True) if etcd else None
    if not snapshot:
        if etcd and read_json(etcd["snapshot_path"]) is not None:
            return [f"snapshot {etcd['snapshot_path']} is not a table gwserver wrote: it will "
                    f"not be served"]
        return []
    path, prefix = etcd["snapshot_path"], etcd["prefix"].rstrip("/") + "/"
    warnings = []
    if snapshot.get("prefix", prefix) != prefix:
        warnings.append(f"snapshot {path} holds etcd prefix {snapshot['prefix']}, not {prefix}: "
                        f"another instance's? It will not be served (docs/operations.md)")
    cluster_id = snapshot.get("cluster_id")
    if cluster_id:
        client = EtcdClient(etcd["endpoints"], etcd["timeout"], etcd["username"],
                            etcd["password"], etcd["ca_file"], etcd["cert_file"],
                            etcd["key_file"], etcd["password_file"])
        try:
            current = client.identity(prefix)[0]
        except EtcdError as exc:
            warnings.append(f"cannot compare snapshot {path} with etcd's cluster: {exc}")
        else:
            if current != cluster_id:
                warnings.append(
                    f"snapshot {path} belongs to etcd cluster {cluster_id}; etcd at "
                    f"{', '.join(etcd['endpoints'])} is cluster {current}: it would be served "
                    f"at start until etcd answers, then replaced whole")
    return warnings


def run(conf_path):
    from ..helpers.helper import handlers_in_place, heartbeat, start_helper
    conf, _ = start_helper(conf_path, "config-sync")
    beat = heartbeat("config-sync").beat
    beat(60.0)                      # the static table compiled, then run() beats
    sync = ConfigSync(conf)         # the conf's static items: compiled, their files not loaded
    # The files of what etcd sends are loaded as a connection loads them (refused, not
    # served as a 500); the conf's, which the master checked, are not: one bad since (a
    # ca_file caught half-written by `cp`) made this process die at every restart, and no
    # etcd change was applied until it was put right.
    compiles_checked(False)
    sync.beat = beat

    def stop(*_):
        try:
            sync.publisher.flush()      # the snapshot must hold the last change
        except OSError as exc:          # a full disk: the last base stands, the next start syncs
            log.error("cannot write the table base on exit: %s", exc)
        os._exit(0)                     # every file is replaced atomically: nothing half-done
    signal.signal(signal.SIGTERM, stop)
    handlers_in_place()             # (it has no SIGHUP handler: the master sends it none)
    sync.run()
