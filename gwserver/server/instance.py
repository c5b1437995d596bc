"""One gateway per runtime directory and snapshot: a lock that names its holder.

Two gateways on one host share the host state directory (``[server] state_dir``) by default,
and in etcd mode ``/run/gwserver`` and the snapshot path: their health checkers and sync
processes would overwrite each other's files without a word. The master takes an ``flock`` on
``state_dir/gwserver.lock`` (and ``runtime_dir/gwserver.lock``, ``snapshot_path + ".lock"``)
before anything else and holds them for its life (workers inherit the descriptors, so the locks go with the
last process of the instance; the kernel drops them even after a SIGKILL). The file holds the
holder's pid, for the error a second instance prints.
"""
import fcntl
import os


class InstanceLocked(Exception):
    """Another gwserver holds the runtime directory or the snapshot."""


LOCK_FILE = "gwserver.lock"


def lock_paths(conf):
    """{lock file: the setting that names it}: the host state directory, and with etcd the
    runtime directory and the snapshot."""
    paths = {os.path.join(conf.server["state_dir"], LOCK_FILE): "[server] state_dir"}
    if conf.etcd is not None:
        paths.update({
            os.path.join(conf.etcd["runtime_dir"], LOCK_FILE): "[etcd] runtime_dir",
            conf.etcd["snapshot_path"] + ".lock": "[etcd] snapshot_path"})
    return paths


class InstanceLock:

    def __init__(self):
        self.held = {}          # lock file -> descriptor (None: could not be created)
        self.warnings = []

    def retarget(self, paths):
        """Hold exactly ``paths`` ({lock file: setting})."""
        self.take(paths)
        self.keep_only(paths)

    def take(self, paths):
        """Also hold ``paths``. Raises InstanceLocked, holding what it held before, if one is
        held by another instance."""
        taken = {}
        try:
            for path, setting in paths.items():
                if path not in self.held:
                    taken[path] = self._take(path, setting)
        except InstanceLocked:
            for fd in taken.values():
                if fd is not None:
                    os.close(fd)
            raise
        self.held.update(taken)

    def keep_only(self, paths):
        for path in [p for p in self.held if p not in paths]:
            fd = self.held.pop(path)
            if fd is not None:
                os.close(fd)

    def _take(self, path, setting):
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
            os.close(fd)
            raise InstanceLocked(
                f"{what} is in use by another gwserver (pid {holder}); give each instance its "
                f"own: set {setting} to a path of its own (docs/operations.md, 'Several "
                f"instances on one host')") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
