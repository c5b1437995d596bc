"""One gateway per runtime directory and snapshot: a lock that names its holder.

Two gateways on one host share the host state directory (``[server] state_dir``) by default,
and in etcd mode ``/run/gwserver`` and the snapshot path: their health checkers and sync
processes would overwrite each other's files without a word. The master takes an ``flock`` on
``state_dir/gwserver.lock`` (and ``runtime_dir/gwserver.lock``, ``snapshot_path + ".lock"``)
before anything else and holds them for its life (workers inherit the descriptors, so the locks go with the
last process of the instance; the kernel drops them even after a SIGKILL). The file holds the
holder's pid, for the error a second instance prints. A worker keeps only the locks of its
own configuration's paths (drop_copies); a path a reload moved away from stays the master's
until the workers of the previous configuration are gone (keep_only, forget_exited).
"""
import fcntl
import os
import time

from ..processes import pid_alive, pid_text


class InstanceLocked(Exception):
    """Another gwserver holds the runtime directory or the snapshot."""


LOCK_FILE = "gwserver.lock"


def lock_paths(conf):
    """{lock file: the setting that names it}: the host state directory, and with etcd the
    runtime directory and the snapshot. Each by its real path: one directory spelt two ways
    ("/var/run/gwserver" and "/run/gwserver", a trailing "/.") was two locks of one file,
    and the second was refused as "in use by another gwserver" naming this very master (a
    reload that respelt state_dir; a start with state_dir and runtime_dir the same)."""
    real = os.path.realpath
    paths = {os.path.join(real(conf.server["state_dir"]), LOCK_FILE): "[server] state_dir"}
    if conf.etcd is not None:
        paths.update({
            os.path.join(real(conf.etcd["runtime_dir"]), LOCK_FILE): "[etcd] runtime_dir",
            os.path.join(real(os.path.dirname(conf.etcd["snapshot_path"])),
                         os.path.basename(conf.etcd["snapshot_path"]) + ".lock"):
                "[etcd] snapshot_path"})
    return paths


class InstanceLock:

    def __init__(self):
        self.held = {}          # lock file -> descriptor (None: could not be created)
        self.released = {}      # lock file -> (descriptor, pids of workers that hold it too)
        self.retaken = {}       # lock file -> those pids, for a path take() got back
        self.warnings = []

    ORPHANS_WAIT = 5.0      # seconds a start waits for the workers of a dead holder

    def retarget(self, paths):
        """Hold exactly ``paths`` ({lock file: setting}). At start: a lock held though the
        master it names is gone is waited for a moment (``_orphans_gone``)."""
        self.take(paths, wait=self.ORPHANS_WAIT)
        self.keep_only(paths)

    def take(self, paths, wait=0.0):
        """Also hold ``paths``. Raises InstanceLocked, holding what it held before, if one is
        held by another instance. ``wait``: for a dead holder's workers (a start; a reload
        does not wait: the master's loop would stop)."""
        taken = {}
        try:
            for path, setting in paths.items():
                if path not in self.held and path not in self.released:
                    taken[path] = self._take(path, setting, wait)
        except InstanceLocked:
            for fd in taken.values():
                if fd is not None:
                    os.close(fd)
            raise
        self.held.update(taken)
        for path in [p for p in paths if p in self.released]:
            # Still ours: let go of by a reload, and kept while workers of that configuration
            # drain (keep_only). A flock of its own would find them holding it, and a reload
            # back to a previous state_dir or runtime_dir was refused as "in use by another
            # gwserver" naming this master, until they were gone.
            fd, holders = self.released.pop(path)
            self.held[path] = fd
            self.retaken[path] = holders        # a refused reload puts it back (keep_only)

    def keep_only(self, paths, holders=()):
        """Let go of what ``paths`` does not name. ``holders``: pids of workers forked while
        it was held (their copies hold the lock on): its descriptor is kept until they are
        gone (``forget_exited``), so that a reload back to it takes it up again."""
        for path in [p for p in self.held if p not in paths]:
            fd = self.held.pop(path)
            kept_for = frozenset(holders) | self.retaken.get(path, frozenset())
            if fd is not None and kept_for:
                self.released[path] = (fd, kept_for)
            elif fd is not None:
                os.close(fd)
        self.retaken = {}

    def forget_exited(self, alive):
        """Close what keep_only kept for workers none of which is in ``alive`` any more."""
        for path, (fd, holders) in list(self.released.items()):
            if not holders & alive:
                del self.released[path]
                os.close(fd)

    def drop_copies(self, paths):
        """In a worker, after the fork: close its copies of locks its configuration does not
        name (``paths``), so that it holds only its own instance's paths, not the ones a
        reload is moving away from (else those stayed held for this worker's whole life)."""
        for path in [p for p in self.held if p not in paths]:
            fd = self.held.pop(path)
            if fd is not None:
                os.close(fd)
        for fd, _ in self.released.values():
            os.close(fd)
        self.released = {}

    def renew(self, paths):
        """Lock again what ``paths`` names whose lock file is not the one held: removed under
        the running gateway with its directory (a tmp cleaner, a hand; made again by
        GatewayArbiter.ensure_state_dir), the lock held the removed file, and a second
        instance started there took the new one: two gateways on one state_dir. Raises
        InstanceLocked, holding what it held, if another instance was first."""
        for path, setting in paths.items():
            fd = self.held.get(path)
            if fd is None:
                continue
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    continue
            except FileNotFoundError:
                pass
            self.held[path] = self._take(path, setting)
            os.close(fd)        # (workers keep their copies, of the removed file)

    def _take(self, path, setting, wait=0.0):
        what = os.path.dirname(path) if setting.endswith("_dir") else path[:-5]
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if setting.endswith("snapshot_path"):
                # As before locks: an unwritable snapshot costs the snapshot, not the gateway.
                self.warnings.append(f"cannot lock {what} ({setting}): {exc.strerror}")
                return None
            raise InstanceLocked(f"cannot lock {what} ({setting}): {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if self._orphans_gone(fd, holder, wait):
                return self._own(fd)
            os.close(fd)
            raise InstanceLocked(
                f"{what} is in use by another gwserver (pid {holder}); give each instance its "
                f"own: set {setting} to a path of its own (docs/operations.md, 'Several "
                f"instances on one host')") from None
        return self._own(fd)

    @staticmethod
    def _own(fd):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    @staticmethod
    def _orphans_gone(fd, holder, wait):
        """The master the lock file names is gone, yet its lock is held: its workers, which
        inherited it, still run (a master killed -9; each lets go of it within a second or
        two, once it sees its parent gone, and then drains: GatewayWorker.notify). Waited
        for, within ``wait`` seconds, as a bind retries a port the previous master may
        still hold: a supervisor's restart at once exited 2, "in use by another gwserver
        (pid N)", N the dead master. -> locked?"""
        deadline = time.monotonic() + wait
        # A holder no process can be (20 digits: an OverflowError in kill(); "\u00b2") is
        # garbage, refused at once like any other: no dead master's workers to wait for.
        pid = pid_text(holder)
        while pid is not None and not pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
        return False
