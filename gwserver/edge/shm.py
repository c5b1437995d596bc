"""Publishing the route table from the sync process to the workers of one host.

The table is a JSON file replaced by atomic rename (readers see the old file or the new one,
never a mix); next to it an 8-byte generation counter in an mmap'd file, bumped after each
rename. A worker compares those 8 bytes with the generation it has on every request (~100 ns)
and reads the file only when they differ. ``multiprocessing.shared_memory`` is not used: on 3.11
an unrelated process attaching by name unlinks the segment when it exits.

Each worker also records what it applied in ``workers/PID`` (generation and etcd revision), so
``gwserver routes status`` and the benchmark can tell when every worker serves a change.
"""
import json
import mmap
import os
import struct

GENERATION = "generation"
TABLE = "table.json"
WORKERS = "workers"
STATUS = "status.json"
_COUNTER = struct.Struct("<Q")


def atomic_write(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _open_counter(runtime_dir, create):
    path = os.path.join(runtime_dir, GENERATION)
    if create and not os.path.exists(path):
        atomic_write(path, _COUNTER.pack(0))
    fd = os.open(path, os.O_RDWR if create else os.O_RDONLY)
    try:
        return mmap.mmap(fd, _COUNTER.size, access=mmap.ACCESS_WRITE if create else
                         mmap.ACCESS_READ)
    finally:
        os.close(fd)


class TablePublisher:
    """Sync-process side."""

    def __init__(self, runtime_dir):
        self.runtime_dir = runtime_dir
        os.makedirs(os.path.join(runtime_dir, WORKERS), exist_ok=True)
        self.counter = _open_counter(runtime_dir, create=True)
        # Continue the numbering of a previous sync process: workers only ever see it grow.
        self.generation = _COUNTER.unpack_from(self.counter, 0)[0]

    def publish(self, table, revision):
        self.generation += 1
        document = {"generation": self.generation, "revision": revision, "table": table}
        atomic_write(os.path.join(self.runtime_dir, TABLE), json.dumps(document).encode())
        _COUNTER.pack_into(self.counter, 0, self.generation)
        return self.generation

    def write_status(self, status):
        atomic_write(os.path.join(self.runtime_dir, STATUS),
                     json.dumps(status, indent=2, sort_keys=True).encode())


class TableReader:
    """Worker side. ``changed()`` is the per-request check; ``read()`` loads the table."""

    def __init__(self, runtime_dir):
        self.runtime_dir = runtime_dir
        self.counter = None
        self.seen = _COUNTER.pack(0)
        self.board = os.path.join(runtime_dir, WORKERS, str(os.getpid()))

    def changed(self):
        counter = self.counter
        if counter is None:
            try:
                self.counter = counter = _open_counter(self.runtime_dir, create=False)
            except (OSError, ValueError):
                return False            # nothing published yet
        return counter[:8] != self.seen

    def read(self):
        """Return the published document, or None if there is none yet."""
        seen = self.counter[:8]
        try:
            with open(os.path.join(self.runtime_dir, TABLE), "rb") as f:
                document = json.load(f)
        except FileNotFoundError:
            return None
        self.seen = seen if _COUNTER.unpack(seen)[0] <= document["generation"] else \
            _COUNTER.pack(document["generation"])
        return document

    def record(self, generation, revision, routes):
        try:
            atomic_write(self.board, json.dumps({"generation": generation, "revision": revision,
                                                 "routes": routes}).encode())
        except OSError:
            pass

    def forget(self):
        try:
            os.unlink(self.board)
        except OSError:
            pass


def read_json(path):
    try:
        with open(path, "rb") as f:
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
