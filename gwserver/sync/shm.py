"""Publishing the route table from the sync process to the workers of one host.

Each generation is a JSON file written by atomic rename (readers see an old file or a new one,
never a mix); next to them an 8-byte generation counter file, bumped after the file is in
place. A worker reads those 8 bytes (one ``pread``, ~0.5 us) at most once a millisecond, when
a request comes, and reads files only when they differ from its own generation. Not an mmap:
a counter file truncated under a mapping (by hand, by a cleanup script) is SIGBUS on the next
read, which killed every worker mid-request and the sync process with them.
``multiprocessing.shared_memory`` is not used either: on 3.11 an unrelated process attaching
by name unlinks the segment when it exits.

Each worker also records what it applied in ``workers/PID`` (generation and etcd revision), so
``gwserver routes status`` and the benchmark can tell when every worker serves a change.
"""
import functools
import json
import logging
import os
import re
import struct
import threading
import time

from ..core.throttledlog import throttled_log
from ..files import open_regular
from ..processes import pid_alive

log = logging.getLogger("gwserver.shm")

GENERATION = "generation"
CHANGES = "changes"
TABLE = "table.json"
WORKERS = "workers"
STATUS = "status.json"
_COUNTER = struct.Struct("<Q")


def etcd_prefix(conf):
    """The prefix a published table names as its source (``[etcd] prefix``, one "/" ended)."""
    return conf.etcd["prefix"].rstrip("/") + "/"


# The kinds of key the gateway reads items from (unread_reason)
READ_KINDS = ("routes", "upstreams", "consumers", "services")


@functools.lru_cache(maxsize=1024)
def meant_for_gateway(kind):
    """Whether a key of ``kind`` holds an item meant for the gateway: a kind it reads, or a
    slip of one (``route``, ``Routes``, ``upstream``). Taken for a tool's own kind, a route
    misspelt so was logged once a process and passed ``routes status``: a 404 unsaid. A slip
    is one letter missing, extra, changed or two swapped, case aside: a likeness ratio also
    took a team's own kinds (``servicemesh``, ``consumer-keys``), failing ``routes status``."""
    kind = kind.lower()
    return any(_one_slip(kind, read) for read in READ_KINDS)


def _one_slip(a, b):
    """Whether ``a`` is ``b`` or one edit from it (a letter dropped, added, changed, or two
    next to each other swapped)."""
    if len(a) < len(b):
        a, b = b, a
    if len(a) - len(b) > 1:
        return False
    i = 0
    while i < len(b) and a[i] == b[i]:
        i += 1
    if len(a) > len(b):
        return a[i + 1:] == b[i:]
    return a[i + 1:] == b[i + 1:] or a[i:i + 2] == b[i:i + 2][::-1] and a[i + 2:] == b[i + 2:]


def unread_order(key):
    """Sort key of the unread keys: those meant for the gateway first, by name. By name
    alone, a tool's keys under a shared prefix (``billing/...``) took every place
    status.json and the log name, and ``routes status`` passed a route lost."""
    return not meant_for_gateway(key.partition("/")[0]), key


def unread_reason(key):
    """Why the gateway reads nothing from etcd ``key`` (given after the prefix), or None: a
    kind misspelt (``route/orders``), an id that is empty or holds a "/" (a team's folder,
    ``routes/team/orders``). Such a key was ignored without a word, and its route answered
    404. The prefix's own key and ``rollouts/`` (the rollout controller's) are the gateway's."""
    kind, _, rest = key.partition("/")
    if key == "" or kind == "rollouts":
        return None
    if kind in ("routes", "upstreams", "consumers"):
        return None if rest and "/" not in rest else (
            f"an id is one segment: the gateway reads PREFIX/{kind}/ID, an ID not empty and "
            f"without a \"/\"")
    if kind == "services":
        service, _, instance = rest.partition("/")
        return None if service and instance and "/" not in instance else \
            "the gateway reads a service instance at PREFIX/services/NAME/INSTANCE"
    return ("not a key the gateway reads: it reads PREFIX/routes/ID, PREFIX/upstreams/ID, "
            "PREFIX/consumers/ID and PREFIX/services/NAME/INSTANCE")


def atomic_write(path, data, mode=0o666):
    """``path`` holds ``data`` whole or keeps what it held: written to ``path.PID.tmp``
    (made with ``mode``, less the umask), then renamed over it. A write that fails takes
    its tmp file with it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_TMP_OF_PID = re.compile(r"\.(\d+)\.tmp$")


def remove_stale_tmp(directory, of=None):
    """Remove what atomic_write left there (``NAME.PID.tmp``; with ``of``, only ``of.PID.tmp``)
    when a process was killed mid-write: nothing else ever removes them. A file of a process
    still alive is its write in progress, and stays."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        found = _TMP_OF_PID.search(name)
        if found is None or (of is not None and name[:found.start()] != of) or \
                pid_alive(int(found.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _open_counter(runtime_dir, create):
    """-> a descriptor of the counter file (read and written with pread/pwrite)."""
    path = os.path.join(runtime_dir, GENERATION)
    if create and not os.path.exists(path):
        atomic_write(path, _COUNTER.pack(0))
    elif create and os.path.getsize(path) != _COUNTER.size:
        # Truncated or overwritten by something else: the newest generation the published
        # files show, so workers never see the numbering go back.
        log.error("%s was damaged (%d bytes); rewriting it", path, os.path.getsize(path))
        # In place, not by rename: running workers hold this very file open.
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, _COUNTER.size)
            os.pwrite(fd, _COUNTER.pack(_newest_generation(runtime_dir)), 0)
        finally:
            os.close(fd)
    return os.open(path, os.O_RDWR if create else os.O_RDONLY)


def _read_counter(fd):
    """The published generation, or None if the file is short (truncated under us)."""
    raw = os.pread(fd, _COUNTER.size, 0)
    return _COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else None


def _newest_generation(runtime_dir):
    base = read_published(os.path.join(runtime_dir, TABLE), full=True) or {}
    # "N.json" only: a sync process killed mid-write leaves "N.json.PID.tmp", no generation
    changes = [int(name[:-5]) for name in os.listdir(os.path.join(runtime_dir, CHANGES))
               if name.endswith(".json") and name[:-5].isdigit()] \
        if os.path.isdir(os.path.join(runtime_dir, CHANGES)) else []
    return max([base.get("generation") or 0, *changes])


class TablePublisher:
    """Sync-process side.

    A generation is published as a small change file (``changes/N.json``: the items whose
    served version changed, null for removed) written before the counter moves, so an update
    costs what it touches, not the table's size. ``table.json`` (the whole table, for workers
    that start or fall behind) and the snapshot are rewritten by a background thread once
    publications pause; the change files cover the gap.
    """

    BASE_INTERVAL = 0.5
    MAX_STALE = 5.0
    MAX_RETRY = 60.0     # the longest wait between tries at a base that cannot be written
    KEEP_CHANGES = 2000

    def __init__(self, runtime_dir, full_table, snapshot_path=None, source=None):
        self.runtime_dir = runtime_dir
        self.full_table = full_table        # () -> published table; called under self.lock
        self.snapshot_path = snapshot_path
        # Where the table comes from ({"cluster_id", "prefix"}), written into table.json and
        # the snapshot: a revision means nothing without its etcd cluster. Set under lock.
        self.source = dict(source or {})
        os.makedirs(os.path.join(runtime_dir, WORKERS), exist_ok=True)
        os.makedirs(os.path.join(runtime_dir, CHANGES), exist_ok=True)
        # One sync process per runtime_dir (the instance lock): what a killed one was writing
        # is garbage now. In runtime_dir itself only our own names: the directory may be
        # shared (/dev/shm, /run), and a file of a pid not alive here may be a live writer's
        # in another pid namespace.
        remove_stale_tmp(os.path.join(runtime_dir, CHANGES))
        for name in (GENERATION, TABLE, STATUS):
            remove_stale_tmp(runtime_dir, name)
        if snapshot_path:
            # Exactly its own name: another instance's snapshot beside it ("snap.b") is no
            # "snap" to sweep, and its writer may be alive in another pid namespace.
            remove_stale_tmp(os.path.dirname(snapshot_path) or ".",
                             os.path.basename(snapshot_path))
        self.counter = _open_counter(runtime_dir, create=True)
        # Continue the numbering of a previous sync process: workers only ever see it grow.
        self.generation = _read_counter(self.counter) or 0
        self.counted = self.generation      # what the counter says (written last)
        self._remove_unpublished()
        self.counter_lock = threading.Lock()    # the sync thread's writes, the writer's checks
        self.revision = None
        self.lock = threading.Lock()           # held while the table is read or changed
        self.base_lock = threading.Lock()
        self.base_generation = 0
        self.base_stamp = None          # file_stamp of the table.json we last wrote or saw
        self.last_publish = 0.0
        self.remake_lock = threading.Lock()    # _made_again's, from either thread
        self.status = None              # the status.json we last wrote (its bytes)
        self.dirty = threading.Event()
        self.stopping = threading.Event()      # close(): the base writer ends
        self.writer = threading.Thread(target=self._write_bases, name="base-writer", daemon=True)
        self.writer.start()

    def _remove_unpublished(self):
        """Change files numbered past the counter: a sync process killed between a change
        file and the counter's move (the OOM killer, the master's SIGKILL of a stuck one, a
        reload's SIGTERM) left one that was never published. Our generation of that number
        may be a whole table (no change file), and workers read the dead one's as the step
        to it, serving its change for good (a route deleted from etcd meanwhile answered)."""
        directory = os.path.join(self.runtime_dir, CHANGES)
        for name in os.listdir(directory):
            number = name[:-len(".json")]
            if name.endswith(".json") and number.isdigit() and int(number) > self.generation:
                log.warning("removing %s: a sync process before this one wrote it, and died "
                            "before it published it", os.path.join(directory, name))
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass

    def publish(self, delta, revision, full=False):
        """Publish one generation: the whole table (``full``) or ``delta``.

        Only the sync thread calls this, so the table does not change under it; ``lock``
        keeps the base writer thread from reading the table while the sync thread changes it.
        A runtime_dir removed under the gateway (a tmp cleaner, a hand) is made again, and
        the generation published whole (the change files went with it).
        """
        if self._made_again():
            delta, full = None, True
        # The number is taken once its file is there: a write that failed (a full
        # runtime_dir) left a gap, a generation no worker could ever read.
        generation = self.generation + 1
        if full:
            with self.lock:
                table, source = self.full_table(), dict(self.source)
            self._write_base(generation, revision, table, source)
        else:
            document = {"generation": generation, "revision": revision, **delta}
            atomic_write(self._change_path(generation), json.dumps(document).encode())
        self.generation, self.revision = generation, revision
        self.last_publish = time.monotonic()
        if not full:
            self.dirty.set()
        # pwrite, in place: also puts back a counter someone truncated meanwhile.
        with self.counter_lock:
            os.pwrite(self.counter, _COUNTER.pack(self.generation), 0)
            self.counted = self.generation
        try:
            os.unlink(self._change_path(self.generation - self.KEEP_CHANGES))
        except FileNotFoundError:
            pass
        return self.generation

    def _made_again(self):
        """Whether the runtime_dir was removed under the gateway (a tmp cleaner, a hand) and
        is made again now, with a counter file numbered on from ours (never back: workers
        re-open it and hold what it says until the next generation): a whole table must
        follow. A stat before each write the sync process makes there, never per request."""
        if os.path.isdir(os.path.join(self.runtime_dir, CHANGES)):
            return False
        with self.remake_lock:          # (the sync thread's writes, the base writer's look)
            if os.path.isdir(os.path.join(self.runtime_dir, CHANGES)):
                return False            # the other thread made it again just now
            log.warning("the runtime_dir %s was removed while the gateway ran: made again, "
                        "and the whole table published in it", self.runtime_dir)
            os.makedirs(os.path.join(self.runtime_dir, WORKERS), exist_ok=True)
            with self.counter_lock:
                self._new_counter(self.generation)
            with self.base_lock:
                self.base_generation = 0        # table.json went with it
            if self.status is not None:         # what a new worker waits for too
                atomic_write(os.path.join(self.runtime_dir, STATUS), self.status)
            # Last: the sign that it is made again (the check above, the other thread's)
            os.makedirs(os.path.join(self.runtime_dir, CHANGES), exist_ok=True)
        return True

    def _made_again_quietly(self):
        """``_made_again``, False where making it failed too (the caller's error says why)."""
        try:
            return self._made_again()
        except OSError:
            return False

    def _change_path(self, generation):
        return os.path.join(self.runtime_dir, CHANGES, f"{generation}.json")

    def _write_base(self, generation, revision, table, source):
        """The whole table as of ``generation`` (never replacing a newer one), and the snapshot.

        Serialising 10,000 routes takes ~100 ms: done outside ``lock``, on references taken
        under it (items are replaced, never changed in place)."""
        data = json.dumps({"generation": generation, "revision": revision, **source,
                           "table": table}).encode()
        with self.base_lock:
            if generation <= self.base_generation:
                return
            atomic_write(os.path.join(self.runtime_dir, TABLE), data)
            self.base_generation = generation
            self.base_stamp = file_stamp(os.path.join(self.runtime_dir, TABLE))
            if self.snapshot_path:
                try:
                    os.makedirs(os.path.dirname(self.snapshot_path), exist_ok=True)
                    atomic_write(self.snapshot_path, data)
                except OSError as exc:
                    log.warning("cannot write snapshot %s: %s", self.snapshot_path, exc)

    def _write_bases(self):
        """Rewrite the base once publications pause for BASE_INTERVAL (at most MAX_STALE late):
        serialising a large table holds the GIL, and would delay the next update."""
        retry_in = self.MAX_STALE
        while not self.stopping.is_set():
            if not self.dirty.wait(self.BASE_CHECK):
                try:
                    # runtime_dir removed: made again now, with our counter and the base (a
                    # worker started meanwhile finds the table). The sync thread did it only
                    # at its next write there, after a quiet watch (watch_idle_timeout):
                    # until then a new worker served the conf file's routes alone.
                    if self._made_again():
                        self.dirty.set()
                        continue
                    self._check_counter()
                    self._check_base()
                except OSError as exc:      # (a full disk): the next look tries again
                    log.error("cannot restore the published table in %s: %s",
                              self.runtime_dir, exc)
                continue
            dirty_since = time.monotonic()
            while time.monotonic() - self.last_publish < self.BASE_INTERVAL and \
                    time.monotonic() - dirty_since < self.MAX_STALE and \
                    not self.stopping.wait(self.BASE_INTERVAL / 5):
                pass
            if self.stopping.is_set():
                return                  # close(): a pending base is flush()'s to write
            self.dirty.clear()
            try:
                with self.lock:
                    table, source = self.full_table(), dict(self.source)
                    generation, revision = self.generation, self.revision
                self._write_base(generation, revision, table, source)
                retry_in = self.MAX_STALE
            except Exception as exc:
                self.dirty.set()        # still pending: a flush on exit writes it
                # A runtime dir removed under the write: made again and written at once (the
                # back-off below held a worker started meanwhile without a table, 404 for
                # every etcd route). A full disk: tried again, later. Anything else is a bug,
                # said with its traceback: this thread is no part of the loop the master
                # watches, and its death left table.json and the snapshot stale unseen.
                if isinstance(exc, OSError) and self._made_again_quietly():
                    continue
                if isinstance(exc, OSError):
                    log.error("cannot write the table base in %s: %s (next try in %.0f s)",
                              self.runtime_dir, exc, retry_in)
                else:
                    log.exception("writing the table base in %s failed (next try in %.0f s)",
                                  self.runtime_dir, retry_in)
                self.stopping.wait(retry_in)
                retry_in = min(retry_in * 2, self.MAX_RETRY)

    BASE_CHECK = 1.0        # seconds between looks at table.json while nothing is published

    def _check_counter(self):
        """The counter removed (or replaced) under us, its directory kept (a cleanup script,
        a hand): running workers and we still shared the removed file, but every worker
        started since (a reload's, a dead one's replacement) found none, took the table for
        not published yet and served the conf file's routes alone, a 404 for every etcd
        route, for good. Written again, with the generation it held; running workers follow
        the new file (TableReader.reopen_if_replaced). One overwritten in place with zeros
        did the same to them until the next etcd change: its number is put back too."""
        if not os.path.isdir(os.path.join(self.runtime_dir, CHANGES)):
            return      # runtime_dir removed: _made_again's case
        path = os.path.join(self.runtime_dir, GENERATION)
        with self.counter_lock:
            try:
                if os.path.samestat(os.fstat(self.counter), os.stat(path)):
                    if _read_counter(self.counter) == self.counted:
                        return
                    # Overwritten in place (zeros, another number): workers started now
                    # took it for their generation, or for one not published yet.
                    log.warning("%s was overwritten under the gateway: writing generation "
                                "%d again", path, self.counted)
                    os.pwrite(self.counter, _COUNTER.pack(self.counted), 0)
                    return
                how = "replaced"
            except FileNotFoundError:
                how = "removed"
            log.warning("%s was %s under the gateway: writing it again (generation %d)",
                        path, how, self.counted)
            self._new_counter(self.counted)

    def _new_counter(self, generation):
        """(Under counter_lock.) A counter file made anew, holding ``generation``, in place of
        ours: the file was removed, alone or with the runtime_dir. The old descriptor is
        closed only once the new one is ours (never a closed descriptor held)."""
        counter = _open_counter(self.runtime_dir, create=True)
        os.pwrite(counter, _COUNTER.pack(generation), 0)
        old, self.counter = self.counter, counter
        self.counted = generation
        os.close(old)

    def took_up(self):
        """We hold the table the workers serve (ConfigSync.load_served took it up from
        runtime_dir): its base and the snapshot are written again, once, and guarded from
        then on as ours (_check_base)."""
        self.dirty.set()

    def _check_base(self):
        """table.json is what a starting worker reads (a reload's, a dead one's replacement):
        one truncated, removed or replaced under us (a cleanup script, a hand) left each of
        them with the conf file's routes alone, a 404 for every etcd route, until an etcd
        change had the base written again. A stat a second; a base that is not the one we
        wrote is written again, whole (one we took up is written once: took_up). One a sync
        process before us left, and we did not take up (another prefix's, a damaged one), is
        not ours to guard: written over with what we held, a table empty of etcd items
        numbered as the one the workers serve, every etcd route was a 404 in a worker started
        then, and /-/ready said 200 on a gateway that never reached etcd."""
        if not self.generation or self.base_stamp is None or \
                not os.path.isdir(os.path.join(self.runtime_dir, CHANGES)):
            return      # nothing of ours published yet; or runtime_dir removed: _made_again's
        path = os.path.join(self.runtime_dir, TABLE)
        with self.base_lock:            # (not while a base is being written)
            try:
                stamp = file_stamp(path)
            except OSError:
                return
            if stamp is not None and stamp == self.base_stamp:
                return
            log.warning("%s was %s under the gateway: writing it again", path,
                        "removed" if stamp is None else "changed")
            self.base_generation = 0    # whatever it holds now is not ours: write it whole
        self.dirty.set()

    def close(self):
        """End the base writer thread (it sleeps in short steps: this waits at most about one
        BASE_CHECK or BASE_INTERVAL). The sync process exits without it; tests and embedders call it so no
        thread of a publisher they are done with writes into its runtime_dir later."""
        self.stopping.set()
        self.dirty.set()                # wake it; flush() still sees a pending base
        self.writer.join(self.BASE_CHECK + self.BASE_INTERVAL + 1.0)

    def flush(self):
        """Write a pending base now (on exit). Skipped if the table is being changed."""
        if self.dirty.is_set() and self.lock.acquire(blocking=False):
            try:
                table, source = self.full_table(), dict(self.source)
            finally:
                self.lock.release()
            self._write_base(self.generation, self.revision, table, source)

    def write_status(self, status):
        if self._made_again():
            # Removed while etcd was quiet: made again now, not at the next change (a sync
            # process that died of it came back numbering from 1 in a new counter).
            status = {**status, "generation": self.publish(None, self.revision, full=True)}
        data = json.dumps(status, indent=2, sort_keys=True).encode()
        atomic_write(os.path.join(self.runtime_dir, STATUS), data)
        self.status = data


class TableReader:
    """Worker side. ``due()`` is the per-request check; ``updates()`` says what to apply."""

    def __init__(self, runtime_dir, prefix=None):
        self.runtime_dir = runtime_dir
        self.prefix = prefix        # a table of another etcd prefix is not ours to serve
        self.counter = None             # a descriptor of the counter file
        self.generation = 0
        self.published = 0              # the counter as last read
        self.damaged = False            # the counter was short when last read
        # The counter was replaced (TablePublisher numbering again in a remade runtime_dir):
        # our generation is a number of the old counter, and no number of the new one says
        # whether we have its table (a worker at the old 1 took the new 1 for its own).
        self.renumbered = False
        self.foreign = None             # file_stamp of a table.json of another prefix, refused
        self.read_after = 0.0           # time.monotonic() before which it is not read again
        self.board = os.path.join(runtime_dir, WORKERS, str(os.getpid()))
        self.recorded = None            # (revision, routes, refused) said on the board last

    READ_EVERY = 0.001      # seconds: at most one pread a millisecond, not one a request

    def due(self, now):
        """The per-request check: ``changed()``, asked at most once a millisecond (``now``:
        time.monotonic()). A change is seen within a millisecond instead of by the next
        request; the counter costs a system call where a mapping cost none."""
        if now < self.read_after:
            return False
        self.read_after = now + self.READ_EVERY
        return self.changed()

    def reopen_if_replaced(self):
        """Re-open the counter file if the one at its path is another (the runtime_dir was
        removed and made again): the descriptor held the removed file, whose generation no
        longer moved, and the worker served its table for good. Asked on the worker's tick."""
        if self.counter is None:
            return
        try:
            same = os.path.samestat(os.fstat(self.counter),
                                    os.stat(os.path.join(self.runtime_dir, GENERATION)))
        except OSError:
            return                  # not made again yet: keep what we serve
        if not same:
            os.close(self.counter)
            self.counter = None     # changed() opens the new one
            self.renumbered = True
            log.warning("the table's counter in %s was replaced: following the new one",
                        self.runtime_dir)

    def changed(self):
        counter = self.counter
        if counter is None:
            try:
                self.counter = counter = _open_counter(self.runtime_dir, create=False)
            except OSError:
                return False            # nothing published yet
        published = _read_counter(counter)
        if published is None:
            # Truncated: keep what we serve (the sync process writes the counter again at its
            # next publication); a worker with nothing yet takes the newest published files.
            if not self.damaged:
                self.damaged = True
                log.error("%s is damaged (not 8 bytes): serving generation %d until the sync "
                          "process publishes again", os.path.join(self.runtime_dir, GENERATION),
                          self.generation or _newest_generation(self.runtime_dir))
                if self.generation == 0:
                    self.published = _newest_generation(self.runtime_dir)
            return self.renumbered or self.published != self.generation
        self.damaged, self.published = False, published
        return self.renumbered or published != self.generation

    def updates(self):
        """[("full", document) | ("delta", document), ...] up to the published generation.

        Change files from our generation on when they are all there; otherwise the whole
        table (first start, or fallen further behind than the kept change files), then the
        changes after it.
        """
        target = self.published
        steps, generation = [], self.generation
        if target < generation and not self.renumbered:
            return self._below_ours(target)
        # Numbered again (a sync process that made a removed runtime_dir again in a new
        # counter): any number once the counter was replaced. Its whole table first, never
        # a delta onto ours.
        renumbered = self.renumbered
        if renumbered:
            generation = 0
        while generation < target:
            change = read_published(os.path.join(self.runtime_dir, CHANGES,
                                                 f"{generation + 1}.json"), full=False)
            if change is not None and generation > 0:
                steps.append(("delta", change))
                generation += 1
                continue
            base, foreign = self._read_base()
            if foreign:
                # Left by a gateway of another prefix (its conf changed while etcd was down):
                # nothing here is ours until our sync process publishes a table of its own.
                return [], self.generation
            if base is None or base["generation"] <= generation:
                if change is not None:          # first start before any base: deltas only
                    steps.append(("delta", change))
                    generation += 1
                    continue
                break
            steps = [("full", base)]
            generation = base["generation"]
        if renumbered:
            if not steps or steps[0][0] != "full":
                return [], self.generation      # its table is not written yet
            self.renumbered = False
        return self._keeping_ours(steps, generation)

    def _below_ours(self, target):
        """The counter (the same file) says less than we serve: numbered again in place (a
        damaged counter rewritten from what runtime_dir held), or overwritten by a hand or a
        script, which the sync process writes back (_check_counter). Only a whole table of
        that very number: its older base and the change files after it (ours, numbered on)
        rolled us back to that number, a route deleted since answering again."""
        base, _ = self._read_base()
        if base is not None and base["generation"] == target:
            return self._keeping_ours([("full", base)], target)
        return [], self.generation

    def _read_base(self):
        """table.json -> (its document or None, whether it is another prefix's). One refused
        is not read again until it changes (a stat): read again, it was a whole table's parse
        each millisecond on the request path (changed() holds while it is all there is), for
        as long as our sync process published nothing: a gateway restarted onto another
        prefix while etcd was down."""
        path = os.path.join(self.runtime_dir, TABLE)
        try:
            stamp = file_stamp(path)        # before the read: a file replaced meanwhile is
        except OSError:                     # read again next time, never taken as refused
            stamp = None
        if stamp is not None and stamp == self.foreign:
            return None, True
        base = read_published(path, full=True)
        if base is not None and self.prefix is not None and \
                base.get("prefix") not in (None, self.prefix):
            self.foreign = stamp
            return None, True
        return base, False

    def _keeping_ours(self, steps, generation):
        """``steps``, or none when they are only a snapshot and this reader has a table
        already (its generation then taken as applied: the next publication, a whole table
        once etcd answers, is read from there). A sync process that starts with nothing in
        runtime_dir (wiped under a running gateway) serves its snapshot until etcd answers:
        it lags the table the workers serve (written once publications pause, or not at all
        on a full disk), and taken, it rolled them back: a route deleted in etcd answered
        again for as long as etcd did not."""
        if len(steps) != 1 or not steps[0][1].get("snapshot") or not self.generation:
            return steps, generation
        log.warning("the sync process in %s publishes its snapshot (generation %d) until etcd "
                    "answers: keeping the table served here (generation %d), newer than that",
                    self.runtime_dir, generation, self.generation)
        if self.recorded is None:
            self.generation = generation    # (a helper: no entry on the board)
        else:
            self.record(generation, *self.recorded)     # what it serves, on the board again
        return [], generation

    def record(self, generation, revision, routes, refused=0):
        """Say on the worker board what this worker serves; ``refused``: published items it
        could not apply (the sync process checked them: a worker that differs is a bug)."""
        self.generation, self.recorded = generation, (revision, routes, refused)
        try:
            atomic_write(self.board, json.dumps({"generation": generation, "revision": revision,
                                                 "routes": routes,
                                                 "refused": refused}).encode())
        except OSError as exc:      # it serves on; `routes status` misses it and says so
            throttled_log.log(log, logging.ERROR, "worker board",
                              "cannot say on the worker board which table this worker serves: "
                              "%s: %s", self.board, exc.strerror)

    def close(self):
        """Let go of the counter file: a reader replaced by another (a helper's reload, the
        sync process's look at what workers serve) held its descriptor for good, one more
        at each reload, and a removed counter's file with it."""
        if self.counter is not None:
            os.close(self.counter)
            self.counter = None

    def forget(self):
        try:
            os.unlink(self.board)
        except OSError:
            pass


KINDS = ("routes", "upstreams", "consumers", "fences")


def read_published(path, full):
    """A published document (``full``: table.json or a snapshot, else a change file), or
    None when it is missing, not JSON, or JSON not of the shape the sync process writes (by
    hand, another tool, another release): read as damaged, as a file that is not JSON is.
    Taken as it was, ``{}`` in table.json killed every worker that started (KeyError
    'generation': a reload's new ones died at boot, and the master let the old ones go) and
    the sync process at each restart."""
    doc = read_json(path)
    if not isinstance(doc, dict) or type(doc.get("generation")) is not int or \
            "revision" not in doc:
        return None
    items = doc.get("table") if full else doc
    if not isinstance(items, dict) or (full and not all(
            isinstance(items.get(kind), dict) for kind in ("routes", "upstreams"))):
        return None
    for kind in KINDS:
        entries = items.get(kind, {})
        if not isinstance(entries, dict) or not all(
                (entry is None and not full) or (isinstance(entry, list) and len(entry) == 2)
                for entry in entries.values()):
            return None
    return doc


def file_stamp(path):
    """What tells a file replaced by ``atomic_write`` from its previous version: a rename
    gives a new inode, which a coarse mtime alone (kernel ticks) would not always show.
    None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_json(path):
    """The JSON document the regular file ``path`` holds, or None. Opened as files.py opens
    what an operator names: a FIFO at etcd.snapshot_path blocked `gwserver check` and the
    sync process's start until someone wrote to it."""
    try:
        with open(open_regular(path, os.O_RDONLY), "rb") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def worker_board(runtime_dir):
    """{pid: {"generation", "revision", "routes"}} for workers that are still alive."""
    board = {}
    directory = os.path.join(runtime_dir, WORKERS)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.isdigit() and os.path.exists(f"/proc/{name}"):
            entry = read_json(os.path.join(directory, name))
            if entry is not None:
                board[int(name)] = entry
    return board
