"""Session-ticket keys: key files as nginx reads them, the first encrypts and all decrypt.

Key files (nginx's ``ssl_session_ticket_key`` format, so one file can serve both):

    80 bytes: name (16) | HMAC-SHA256 secret (32) | AES-256-CBC key (32)   (openssl rand 80)
    48 bytes: name (16) | AES-128-CBC key (16)     | HMAC-SHA256 secret (16)  (nginx's order)

A ticket starts with the name of the key that sealed it; a ticket whose name matches none of
the keys gets a full handshake, one sealed with an older key is renewed with the first.

How the keys reach OpenSSL. pyOpenSSL has no ticket-key API, and the OpenSSL that
cryptography's wheel links in statically declares to Python none of
``SSL_CTX_set_tlsext_ticket_key_evp_cb``, ``SSL_CTX_set_tlsext_ticket_key_cb``,
``SSL_CTX_ctrl`` (``SSL_CTRL_SET_TLSEXT_TICKET_KEYS``) or ``SSL_CTX_callback_ctrl``: ``dir(lib)``
holds only ``SSL_OP_NO_TICKET``, and the library exports no C symbol but its ``PyInit_*``. The
functions are in the library all the same, named in its ELF symbol table (the wheel is not
stripped). ``OpenSSLTicketApi`` finds them there, relative to the exported ``PyInit__rust``, and
proves the addresses on a throw-away context (a timeout set through the found
``SSL_CTX_set_timeout`` must read back through pyOpenSSL's own binding) before anything uses
them. Whenever that fails (a stripped or changed wheel), ``ticket_key_files`` is a
configuration error that says so, and without it OpenSSL keeps its own per-context keys: what
gwserver did before, a full handshake once after each reload.
"""
import ctypes
import errno
import logging
import os
import pwd
import stat
import struct
import tempfile
from dataclasses import dataclass

from ..errors import ConfigError
from ..files import read_regular

log = logging.getLogger("gwserver.tls")

SIZES = (48, 80)
HOW_TO_MAKE = "gwserver tls new-ticket-key FILE, or (umask 077; openssl rand 80 > FILE)"
NAME_LEN = 16
IV_LEN = 16                         # AES-CBC; OpenSSL's iv buffer is EVP_MAX_IV_LENGTH (16)


@dataclass(frozen=True)
class TicketKey:
    name: bytes
    hmac: bytes
    aes: bytes
    source: str

    @property
    def cipher(self):
        return b"AES-256-CBC" if len(self.aes) == 32 else b"AES-128-CBC"


def parse_key(data, source):
    if len(data) == 80:
        return TicketKey(data[:16], data[16:48], data[48:80], source)
    if len(data) == 48:             # nginx: the AES key before the HMAC secret
        return TicketKey(data[:16], data[32:48], data[16:32], source)
    raise ValueError(f"{len(data)} bytes")


def read_key_files(paths):
    """The keys, first (encrypting) first; ConfigError naming each bad file."""
    keys, problems = [], []
    for i, path in enumerate(paths):
        where = f"tls.ticket_key_files[{i}]: {path}"
        try:
            data = read_regular(path, 80)   # (a FIFO would hang check and the reload)
        except FileNotFoundError:
            problems.append(f"{where} does not exist (make one with {HOW_TO_MAKE})")
            continue
        except OSError as exc:
            problems.append(f"{where}: cannot read: {exc.strerror}")
            continue
        try:
            keys.append(parse_key(data, path))
        except ValueError:
            size = "more than 80" if len(data) > 80 else str(len(data))
            problems.append(f"{where}: {size} bytes; a ticket key file holds exactly 48 or 80 "
                            f"bytes ({HOW_TO_MAKE})")
    names = [k.name for k in keys]
    for key in keys:
        if names.count(key.name) > 1 and key is keys[names.index(key.name)]:
            problems.append(f"tls.ticket_key_files: {key.source} and another file share the "
                            f"key name {key.name.hex()} (the same key twice?)")
    if problems:
        raise ConfigError(problems)
    return keys


def key_file_warnings(paths):
    """What is wrong with who may read or write the key files: whoever reads a key can
    decrypt the TLS 1.2 sessions its tickets carry (their master secret is in them), and
    whoever writes one can make the gateway seal tickets with a key they know. ``openssl
    rand 80 > FILE`` under the usual umask makes a file every user of the host can read."""
    warnings = []
    for i, path in enumerate(paths):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue                # read_key_files names a missing or unreadable one
        if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
            who = "read" if mode & stat.S_IROTH else "written"
            warnings.append(f"tls.ticket_key_files[{i}]: {path} may be {who} by users "
                            f"other than its owner (mode {mode:04o}): anyone who reads it can "
                            f"decrypt the TLS 1.2 sessions of tickets it sealed, anyone who "
                            f"writes it can make the key; chmod 0600, or 0640 for the "
                            f"gateway's group (gwserver tls new-ticket-key writes 0600)")
        where = open_directory(path)
        if where is not None:
            directory, mode, owner = where
            who = f"is owned by {user_name(owner)}, neither root nor this user" \
                if owner is not None else \
                f"may be written by users other than its owner (mode {mode:04o})"
            fix = f"chown root {directory}" if owner is not None else f"chmod go-w {directory}"
            warnings.append(f"tls.ticket_key_files[{i}]: {path}: the directory {directory} "
                            f"{who}: they can rename a key of their own over the file, "
                            f"whatever its mode; {fix}")
    return warnings


def open_directory(path):
    """(directory, mode, owner) of the first directory a lookup of the key file reads a name
    in that a user other than root and this one may write, or None: by its mode (group or
    other write, without the sticky bit; owner None), or as its owner (their uid). Whoever
    writes a directory replaces what is in it: a 0600 key in a 0777 directory, or named
    through a link kept in one (a link to a link too), was the key of whoever put one there
    last."""
    mine = (0, os.geteuid())
    for directory in dict.fromkeys(lookup_directories(path)):
        try:
            st = os.stat(directory)
        except OSError:
            return None             # read_key_files names a path that leads nowhere
        mode = st.st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            return directory, stat.S_IMODE(mode), None
        if st.st_uid not in mine:
            return directory, stat.S_IMODE(mode), st.st_uid
    return None


def lookup_directories(path, links=40):
    """Each directory a lookup of ``path`` reads a name in, in order, following each link on
    the way as the kernel does (a link to a link, a linked directory, ".." after one): the
    directories of the path as named and of its final target were not all of them (a link
    from a safe directory to one in a writable directory that led back was missed)."""
    # (os.getcwd() only for a relative path: a master whose directory was removed, a
    # release replaced, raised FileNotFoundError, and a valid configuration was refused)
    names = (path if os.path.isabs(path) else os.path.join(os.getcwd(), path)).split("/")
    directory = "/"
    while names:
        name = names.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            directory = os.path.dirname(directory)
            continue
        yield directory
        here = os.path.join(directory, name)
        try:
            target = os.readlink(here)
        except OSError:
            directory = here        # not a link (or not there: os.stat says so)
            continue
        links -= 1
        if links < 0:
            return                  # a loop: read_key_files names it (ELOOP)
        names[:0] = target.split("/")
        if target.startswith("/"):
            directory = "/"


def user_name(uid):
    """``user NAME (uid N)``, or ``uid N`` for one the host does not name."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


class KeepOwnerError(OSError):
    """The new key file could not take the owner or group of the one it replaces."""


class KeyFileLinkError(OSError):
    """The key file named is a symbolic link: the rename would replace the link, and the
    owner and group lent would be those of whatever file it points to."""


def write_key_file(path):
    """80 random bytes, mode 0600, replacing PATH atomically (rename in its directory). A
    file replaced lends its owner, group and group read bit (docs/tls.md's rotation runs as
    root for a gateway that runs as gwserver: a root:root 0600 key was unreadable to it)."""
    # The directory as the system reads PATH: made absolute by text, "link/../current.key"
    # put the temp file beside the link, not the key (a rename across file systems).
    directory = os.path.realpath(os.path.dirname(path) or os.curdir)
    path = os.path.join(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=".ticket-", dir=directory)   # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            keep_access_of(path, f.fileno())
            f.write(os.urandom(80))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def keep_access_of(path, fd):
    """Give the new file (``fd``) the owner and group of the file at ``path``, if any, and
    its group's read bit: never more (group write, anything for others) than 0640."""
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(old.st_mode):
        # Followed, a link to /etc/shadow (made by whoever may write the directory) gave the
        # new key root:shadow 0640: the owner and group of a file that is not the key's.
        raise KeyFileLinkError(errno.ELOOP, f"is a symbolic link (to {os.readlink(path)}): "
                               f"the new key would replace the link, not a key file; name "
                               f"the key file itself")
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError as exc:
        raise KeepOwnerError(exc.errno, f"the new key cannot take the owner and group of the "
                             f"one it replaces (uid {old.st_uid}, gid {old.st_gid}): "
                             f"{exc.strerror}") from None
    os.fchmod(fd, 0o600 | (old.st_mode & stat.S_IRGRP))


_process_key = None


def process_key():
    """Without key files: one random key for the life of this process. Contexts are built in
    the master (at start and on every reload) and workers inherit it, so a ticket outlives a
    reload, as nginx's own key outlives its `reload`; a restart makes a new one."""
    global _process_key
    if _process_key is None:
        _process_key = parse_key(os.urandom(80), "(made at start)")
    return _process_key


# -- the OpenSSL functions, found in cryptography's library --------------------------------------

SSL_TICKET_CDEF = """
typedef struct { const char *key; unsigned int data_type; void *data; size_t data_size;
                 size_t return_size; } OSSL_PARAM;
"""
OSSL_PARAM_UTF8_STRING, OSSL_PARAM_OCTET_STRING = 4, 5      # openssl/core.h
OSSL_PARAM_UNMODIFIED = 2 ** 64 - 1
CALLBACK = "int(void *, unsigned char *, unsigned char *, void *, void *, int)"
FUNCTIONS = {
    # int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *, int (*cb)(SSL *, unsigned char
    #     key_name[16], unsigned char iv[16], EVP_CIPHER_CTX *, EVP_MAC_CTX *, int enc))
    "SSL_CTX_set_tlsext_ticket_key_evp_cb": f"int(*)(void *, {CALLBACK.replace('(', '(*)(', 1)})",
    "EVP_EncryptInit_ex": "int(*)(void *, void *, void *, unsigned char *, unsigned char *)",
    "EVP_DecryptInit_ex": "int(*)(void *, void *, void *, unsigned char *, unsigned char *)",
    "EVP_MAC_CTX_set_params": "int(*)(void *, OSSL_PARAM *)",
    "SSL_CTX_set_timeout": "long(*)(void *, long)",         # only to prove the addresses
}
ANCHOR = "PyInit__rust"


def elf_functions(path, wanted):
    """st_value of the named functions in an ELF64 little-endian file's .symtab."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x7fELF\x02\x01":
        raise OSError(f"{path} is not an ELF64 little-endian file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    found = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2:                                   # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            name, info, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, pos)
            if info & 0xF != 2 or not value:            # STT_FUNC, defined
                continue
            start = strings + name
            symbol = data[start:data.index(b"\0", start)].decode("ascii", "replace")
            if symbol in wanted:
                found[symbol] = value
    return found


class OpenSSLTicketApi:
    """The ticket-key callback of the OpenSSL inside cryptography (see the module doc)."""

    def __init__(self):
        import cffi
        from cryptography.hazmat.bindings import _rust
        from OpenSSL import SSL
        from OpenSSL._util import ffi as ossl_ffi, lib as ossl_lib
        self.ffi = cffi.FFI()
        self.ffi.cdef(SSL_TICKET_CDEF)
        self._ossl_ffi, self._ossl_lib = ossl_ffi, ossl_lib
        path = _rust.__file__
        symbols = elf_functions(path, {ANCHOR, *FUNCTIONS})
        missing = sorted({ANCHOR, *FUNCTIONS} - set(symbols))
        if missing:
            raise OSError(f"{path} names no {', '.join(missing)} (a stripped build?)")
        anchor = ctypes.cast(getattr(ctypes.CDLL(path), ANCHOR), ctypes.c_void_p).value
        base = anchor - symbols[ANCHOR]
        self.fn = {name: self.ffi.cast(ctype, base + symbols[name])
                   for name, ctype in FUNCTIONS.items()}
        probe = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.fn["SSL_CTX_set_timeout"](self.ctx_pointer(probe), 4242)
        if ossl_lib.SSL_CTX_get_timeout(probe._context) != 4242:
            raise OSError(f"the functions found in {path} are not the ones pyOpenSSL calls")
        self.ciphers = {name: self.pointer(ossl_lib.EVP_get_cipherbyname(name))
                        for name in (b"AES-128-CBC", b"AES-256-CBC")}

    def pointer(self, cdata):
        return self.ffi.cast("void *", int(self._ossl_ffi.cast("uintptr_t", cdata)))

    def ctx_pointer(self, context):
        return self.pointer(context._context)

    def install(self, context, keys):
        """Seal tickets with keys[0], open them with any of keys; returns what must stay
        alive as long as the context (the callback and the buffers it reads)."""
        ffi, fn = self.ffi, self.fn
        sealed = []         # per key: (key, AES key, MAC params, cipher, buffers params use)
        for key in keys:
            aes = ffi.new("unsigned char[]", key.aes)
            buffers = (ffi.new("char[]", b"key"), ffi.new("unsigned char[]", key.hmac),
                       ffi.new("char[]", b"digest"), ffi.new("char[]", b"SHA256"))
            params = ffi.new("OSSL_PARAM[3]", [
                (buffers[0], OSSL_PARAM_OCTET_STRING, buffers[1], len(key.hmac),
                 OSSL_PARAM_UNMODIFIED),
                (buffers[2], OSSL_PARAM_UTF8_STRING, buffers[3], 6, OSSL_PARAM_UNMODIFIED),
                (ffi.NULL, 0, ffi.NULL, 0, 0)])
            sealed.append((key, aes, params, self.ciphers[key.cipher], buffers))
        by_name = {entry[0].name: (i, entry) for i, entry in enumerate(sealed)}

        def callback(ssl, name, iv, cipher_ctx, mac_ctx, encrypt):
            if encrypt:
                key, aes, params, cipher, _ = sealed[0]
                ffi.memmove(name, key.name, NAME_LEN)
                ffi.memmove(iv, os.urandom(IV_LEN), IV_LEN)
                if fn["EVP_EncryptInit_ex"](cipher_ctx, cipher, ffi.NULL, aes, iv) != 1 or \
                        fn["EVP_MAC_CTX_set_params"](mac_ctx, params) != 1:
                    return -1
                return 1
            found = by_name.get(ffi.buffer(name, NAME_LEN)[:])
            if found is None:
                return 0                                # unknown key: a full handshake
            index, (key, aes, params, cipher, _) = found
            if fn["EVP_MAC_CTX_set_params"](mac_ctx, params) != 1 or \
                    fn["EVP_DecryptInit_ex"](cipher_ctx, cipher, ffi.NULL, aes, iv) != 1:
                return -1
            return 2 if index else 1                   # 2: renew it with the current key

        def on_error(exc_type, exc, tb):
            log.error("session-ticket callback failed: %s", exc)

        c_callback = ffi.callback(CALLBACK, callback, error=0, onerror=on_error)
        if fn["SSL_CTX_set_tlsext_ticket_key_evp_cb"](self.ctx_pointer(context),
                                                      c_callback) != 1:
            raise ConfigError("tls: OpenSSL refused the session-ticket key callback")
        return c_callback, sealed


_api = None


def ticket_api():
    """The OpenSSLTicketApi, or the reason there is none (an OSError's text)."""
    global _api
    if _api is None:
        try:
            _api = OpenSSLTicketApi()
        except (OSError, ImportError, AttributeError, ValueError) as exc:
            _api = str(exc) or exc.__class__.__name__
    return _api
