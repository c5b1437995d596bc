"""Files an operator names (key, secret and log files): regular files only.

A path from a conf file or etcd may name a FIFO, which blocks an open until someone writes
(or reads) the other end, or a device such as /dev/zero, which reads without end. Either
would hang or exhaust the process that checks it. So a file is opened with O_NONBLOCK,
refused unless fstat says it is regular, and only then made blocking again.
"""
import contextlib
import errno
import os
import ssl
import stat


def open_regular(path, flags, mode=0o640):
    """``os.open(path, flags)`` of a regular file only -> a descriptor. Raises OSError, with
    strerror "not a regular file" for anything else."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path, limit):
    """At most ``limit + 1`` bytes of a regular file: more than ``limit`` tells the caller
    the file is not what it should be. Raises OSError as open_regular."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        data = b""
        while len(data) <= limit and (piece := os.read(fd, limit + 1 - len(data))):
            data += piece
        return data
    finally:
        os.close(fd)


class FileRefused(ValueError):
    """A file an operator named cannot be used; the message names it and says why."""


def read_bounded(path, limit, name):
    """The bytes of the regular file ``path``, at most ``limit`` of them, or FileRefused
    whose message starts with ``name`` (what the file is, e.g. "public_key_file /k.pem")."""
    try:
        data = read_regular(path, limit)
    except OSError as exc:
        raise FileRefused(f"cannot read {name}: {exc.strerror}") from None
    if len(data) > limit:
        raise FileRefused(f"{name} is over {limit} bytes")
    return data


def foreign_dir(path):
    """Why the directory ``path`` (or the one holding it) is not this process's to trust, or
    None: owned by another user than this one or root, or writable by others without the
    sticky bit. A state directory under /tmp (the default of an unprivileged run with no
    runtime directory) could be made first by another local user, who could then change
    the host state (ejections, limits) and the reload verdicts the gateway reads there."""
    me = os.geteuid()
    for directory in (path, os.path.dirname(os.path.normpath(path))):
        try:
            st = os.stat(directory)
        except OSError:
            continue
        if st.st_uid not in (me, 0):
            return f"{directory} belongs to uid {st.st_uid}, not this user ({me}) or root"
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            return f"{directory} is writable by every user"
    return None


STATE_DIR = "in [server] state_dir"     # where the per-host state is (write_remedy's place)


def write_remedy(exc, place="there"):
    """What an operator does about a failed write, by its cause: every such log line said
    "free space there", which sent whoever read it to a disk with room to spare when the
    process was out of file descriptors (EMFILE) or the directory was read-only."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "raise the open-file limit (LimitNOFILE) or lower server.worker_connections"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make it writable by the gateway's user ({place})"
    return f"free space {place}"


def private_key_problem(path):
    """What keeps ``path`` from being a private key the gateway can load unattended, in
    words an operator can act on; None when it looks like one (OpenSSL has the last word).
    OpenSSL's own reason for these was "unsupported; PEM lib", and for an encrypted key it
    asked for the passphrase on the terminal: `gwserver check` waited there, and a master
    under systemd, with no terminal, could never start with the key."""
    limit = 1 << 16
    try:
        head = read_regular(path, limit)
    except OSError:
        return None             # (the caller's own check names a missing or odd file)
    if not head.strip():
        return "is empty"
    if b"-----BEGIN ENCRYPTED PRIVATE KEY" in head or b"Proc-Type: 4,ENCRYPTED" in head:
        return ("is an encrypted private key: the gateway runs unattended and cannot ask for "
                "its passphrase; store it decrypted (openssl pkey -in KEY -out KEY.plain), "
                "readable by the service's group only")
    if b"PRIVATE KEY-----" not in head:
        if len(head) > limit:
            # Only the head was read: a combined PEM (chain, then the key) over 64 KiB was
            # said to hold "a certificate, not a private key", and OpenSSL loads it.
            return None
        if b"-----BEGIN CERTIFICATE" in head:
            return "holds a certificate, not a private key (are cert and key swapped?)"
        if not head.lstrip().startswith(b"-----BEGIN"):
            return ("is not PEM (DER? convert it: openssl pkey -inform DER -in KEY "
                    "-out KEY.pem)")
        return "holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)"
    return None


def no_passphrase(*_):
    """A passphrase callback for OpenSSL that has none to give: an encrypted key fails at
    once instead of OpenSSL prompting on the terminal (see private_key_problem)."""
    return b""


# Whether this process checks the files of what it compiles and parses (an upstream's tls
# files, [etcd]'s and a rediss:// URL's, [tls]'s certificates) before it uses them: `check`,
# the master at start and reload, and config-sync for what etcd sends do. Workers and helpers
# take their word (compiles_checked): a file replaced since (by `cp`: empty until it is
# written; gone between `rm` and `cp`; a key being replaced) made each worker started
# meanwhile die at boot on the static route that names it (gunicorn stops when a worker
# cannot boot), a route from etcd refused in that worker alone (503 there after the file was
# put right), and a helper restarted meanwhile die at every restart (config-sync: no etcd
# change applied). A connection names such a file itself (a 502: upstream.proxy), and works
# again once it is put right; a helper serves no TLS (the ocsp one retries a certificate).
_CHECKS_FILES = True


def checks_files():
    """Whether this process checks the files it is given (see _CHECKS_FILES)."""
    return _CHECKS_FILES


def compiles_checked(checked=True):
    """This process compiles, from now on, what another checked (a worker, a helper), or
    (``checked`` False) what nobody else did: config-sync, for the items etcd sends, once it
    parsed and compiled the conf (whose files stay the master's word: it parses no other)."""
    global _CHECKS_FILES
    _CHECKS_FILES = not checked


@contextlib.contextmanager
def accepted_before():
    """Compile, inside, what was checked already: the table a restarted config-sync takes up
    from runtime_dir (loaded again, an etcd upstream whose ca_file was caught half-written
    by `cp` as it restarted was dropped from the table the workers serve, its routes 503 for
    good, even once the file was put right), global plugins' inline upstreams."""
    global _CHECKS_FILES
    was, _CHECKS_FILES = _CHECKS_FILES, False
    try:
        yield
    finally:
        _CHECKS_FILES = was


def regular_file_problem(path, name):
    """An upstream's tls file that is missing or no regular file, as ``name: PATH why``."""
    if os.path.isfile(path):
        return None
    # (a FIFO or a device exists: "does not exist" sent the operator looking for it)
    return f"{name}: {path} {'is not a regular file' if os.path.exists(path) else 'does not exist'}"


def client_files_problems(ca_file, cert_file, key_file, prefix="tls.",
                          names=("ca_file", "cert_file", "key_file"),
                          file_problem=regular_file_problem, password=None,
                          encrypted_key=False, load=True):
    """What keeps a set of client TLS files (an upstream's ``tls``, [etcd]'s, a rediss://
    URL's) from making a client context, each named ``prefix`` + its name in ``names``:
    a list of problems, [] for none. Every file named is checked by ``file_problem(path,
    name)`` (the conf's words, settings.file_problem, say more); if all are there (and
    ``load``), then the key (unless ``encrypted_key``: redis-py decrypts one with
    ``password``) and then the files as a connection loads them, one problem at most."""
    named = zip(names, (ca_file, cert_file, key_file))
    problems = [problem for name, path in named if path
                for problem in [file_problem(path, f"{prefix}{name}")] if problem is not None]
    if problems or not load:
        return problems
    if key_file and not encrypted_key:
        # An encrypted key made each new connection's OpenSSL ask for the passphrase on the
        # terminal (a worker run by hand blocked there), or fail every call under systemd
        problem = private_key_problem(key_file)
        if problem is not None:
            return [f"{prefix}{names[2]}: {key_file} {problem}"]
    problem = client_tls_problem(ca_file, cert_file, key_file, prefix, names, password)
    return [] if problem is None else [problem]


_CLIENT_TLS_CHECKED = {}    # ("ca", path) or ("pair", cert, key) -> (stamps, problem)


def client_tls_problem(ca_file, cert_file, key_file, prefix="tls.",
                       names=("ca_file", "cert_file", "key_file"), password=None):
    """What keeps an upstream's ``tls`` files (or [etcd]'s: ``prefix``) from making a client
    context, as ``tls.FIELD: PATH ...``, or None: loaded as each connection loads them. A
    ca_file that holds no PEM certificate (a DER file, a key, a truncated copy) passed
    `check`, a start and a reload, and then failed every request of its routes, a 500
    "internal error" for HTTP/1.1 (and every call to etcd). ``names``: the three settings'
    names (a rediss:// URL's ssl_ca_certs, ssl_certfile, ssl_keyfile). ``password``: the
    key_file's passphrase, if it has one (a rediss:// URL's ssl_password: redis-py loads an
    encrypted key with it, and loaded with none such a URL was refused).

    The CA file and the certificate with its key are checked (and kept, until a file
    changes) apart: a table names the same bundle in many routes, and a system-sized one
    takes ~30 ms to load. Kept per (bundle, certificate, key), the bundle was loaded again
    for each route with a client certificate of its own: 200 such routes took 6 s to
    check, and as long in the sync process compiling them."""
    ca_name, cert_name, key_name = names
    irregular = irregular_file(ca_file, cert_file, key_file, prefix, names)
    if irregular is not None:       # (OpenSSL would block on a FIFO's open: never asked)
        return irregular
    if ca_file:
        problem = _checked(("ca", ca_file), lambda: _ca_problem(ca_file))
        if problem is not None:
            return f"{prefix}{ca_name}: {ca_file} {problem}"
    if cert_file:
        problem = _pair_problem(cert_file, key_file, password) if password else \
            _checked(("pair", cert_file, key_file), lambda: _pair_problem(cert_file, key_file))
        if problem is not None:
            and_key = f" and {prefix}{key_name}: {key_file}" if key_file else ""
            return (f"{prefix}{cert_name}: {cert_file}{and_key} make no client certificate "
                    f"({problem})")
    return None


def irregular_file(ca_file, cert_file, key_file, prefix="tls.",
                   names=("ca_file", "cert_file", "key_file")):
    """``PREFIX NAME: PATH is not a regular file`` for the first of the files (None or
    empty for none; named as client_tls_problem names them) that exists and is no regular
    file, or None. A stat only: OpenSSL opens and reads the tls files blocking, gevent or
    not, and a FIFO (or a symlink to /dev/zero) put in place of one after the check blocked
    the whole worker at its next new connection, every client of it stalled."""
    for name, path in zip(names, (ca_file, cert_file, key_file)):
        if not path:
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue                # (gone: OpenSSL says so, at once)
        if not stat.S_ISREG(mode):
            return f"{prefix}{name}: {path} is not a regular file"
    return None


def stamp(path):
    """What tells the file ``path`` from its next version (inode, mtime, size), or None for
    no path or one that cannot be stat'ed (gone: whoever reads it next says so)."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


def _checked(key, check):
    """``check()``'s word on the files of ``key`` (after its kind), kept until one changes."""
    stamps = [stamp(path) for path in key[1:]]
    cached = _CLIENT_TLS_CHECKED.get(key)
    if cached is not None and cached[0] == stamps:
        return cached[1]
    problem = check()
    if len(_CLIENT_TLS_CHECKED) >= 1024:        # (tables from etcd come and go)
        _CLIENT_TLS_CHECKED.clear()
    _CLIENT_TLS_CHECKED[key] = (stamps, problem)
    return problem


def _ca_problem(ca_file):
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
    except (OSError, ValueError) as exc:
        return ca_file_problem(ca_file, exc)
    return None


def _pair_problem(cert_file, key_file, password=None):
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            cert_file, key_file, password=password or no_passphrase)
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)
    return None


def ca_file_problem(path, exc):
    """``path`` failed to load as a CA bundle with ``exc``: why, in words to act on."""
    try:
        head = read_regular(path, 1 << 16)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head.strip():
        return "is empty"
    if b"-----BEGIN" not in head:
        return "is not PEM (DER? convert it: openssl x509 -inform DER -in CA -out CA.pem)"
    return f"holds no CA certificate OpenSSL can load ({getattr(exc, 'reason', None) or exc})"
