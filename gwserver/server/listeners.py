"""The master's listening sockets across a reload: kept, added and retired, never re-created.

gunicorn's reload closes every listener and binds them all again whenever ``bind`` changed.
Old workers still hold the old sockets while they drain, so re-binding an unchanged address
fails (EADDRINUSE), gunicorn retries five times and ``sys.exit``s the master: an outage that
waits for the next reload. nginx and HAProxy instead keep the sockets whose address did not
change, bind the new ones first, and keep the old set if a bind fails. So do we:

1. a listener whose address is still wanted is kept (same socket, same accept queue);
2. every new address is bound before anything is closed;
3. a bind that fails closes what this attempt bound and raises ``ListenerError`` naming the
   listener (server, tls or admin) and its address: the caller keeps the old set and conf;
4. only then are the listeners no longer wanted returned, for the caller to close.

Workers tell listeners apart by address (``GatewayWorker.serve``), so a socket kept while its
role changes (say, the admin port becomes a server port) is served in its new role by the
workers of the new configuration.
"""
import os
import socket

from gunicorn import sock, util
from gunicorn.util import is_ipv6, parse_address

ROLES = ("server", "tls", "admin")


class ListenerError(Exception):
    """A listener of the new configuration could not be bound."""


def listener_roles(conf):
    """{gunicorn address: "server" | "tls" | "admin"} in the order gunicorn is given them."""
    binds = {"server": conf.server["bind"], "tls": conf.tls["bind"] if conf.tls else (),
             "admin": [conf.admin["bind"]] if conf.admin["bind"] else ()}
    roles = {}
    for role in ROLES:
        for bind in binds[role]:
            roles.setdefault(parse_address(bind), role)
    return roles


def describe(address):
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{address}" if isinstance(address, str) else f"fd://{address}"


def _matches(listener, address):
    """Configured as ``address`` (a name such as localhost stays a name), or bound to it
    (sockets inherited from systemd carry their bound address only)."""
    if listener.cfg_addr == address:
        return True
    if not isinstance(address, tuple) or listener.sock is None:
        return False
    try:
        return tuple(listener.sock.getsockname()[:2]) == address
    except OSError:
        return False


SCHEMES = {"server": "http", "tls": "https", "admin": "http"}


def name_listener(listener, role):
    """Give a gunicorn listener its role: ``str()`` (what gunicorn's "Listening at" line and
    ours print) becomes ``server http://...``, ``tls https://...``, ``admin http://...``
    instead of ``http://`` for all three."""
    cls = type(listener)
    if getattr(cls, "role", None) != role:
        base = cls.__bases__[0] if hasattr(cls, "role") else cls
        named = type(base.__name__, (base,), {
            "role": role,
            "__str__": lambda self: f"{self.role} {SCHEMES[self.role]}://"
                                    f"{describe(self.cfg_addr).removeprefix('unix:')}"
            if not isinstance(self.cfg_addr, str) else f"{self.role} unix:{self.cfg_addr}"})
        listener.__class__ = named
    return listener


def bind_all(roles, cfg, log, attempts=5):
    """Master, at start: every listener, named by role; a bind that fails after ``attempts``
    (1 s apart, as gunicorn does: the previous master may still be letting go of the port)
    raises ListenerError naming the listener's role and address."""
    for attempt in range(attempts):
        try:
            listeners, _ = rebind([], roles, cfg, log)
            return listeners
        except ListenerError as exc:
            if attempt == attempts - 1 or "in use" not in str(exc):
                raise
            log.warning("%s; retrying in 1 s", exc)
            import time
            time.sleep(1)


class V6OnlySocket(sock.TCP6Socket):
    """``[::]:P`` beside an IPv4 address on port P (nginx's ``listen 80; listen [::]:80;``):
    IPv6 only, as nginx's ``ipv6only=on`` default does, or its dual-stack bind would take
    the IPv4 port too and the IPv4 listener could not be bound."""

    def set_options(self, sock_, bound=False):
        if not bound:
            sock_.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return super().set_options(sock_, bound)


# A unix: listener's socket: its user's and group's alone. gunicorn binds it under its umask
# setting, 0 by default: mode 0777, and every local user could connect, each a trusted proxy
# where trusted_proxies (or identity_proxies) holds "unix:", free to name any client or user.
UNIX_SOCKET_MODE = 0o660


class GroupUnixSocket(sock.UnixSocket):
    """gunicorn's unix socket, made UNIX_SOCKET_MODE (the bind, not a chmod after it: no
    moment in which another user could connect)."""

    def bind(self, sock_):
        old_umask = os.umask(0o777 & ~UNIX_SOCKET_MODE)
        try:
            sock_.bind(self.cfg_addr)
        finally:
            os.umask(old_umask)
        if not self.cfg_addr.startswith("\0"):
            util.chown(self.cfg_addr, self.conf.uid, self.conf.gid)
            self.file_id = _file_id(self.cfg_addr)


def socket_type(address, addresses):
    """gunicorn's socket class for ``address``; V6OnlySocket for the IPv6 wildcard when
    ``addresses`` (every address to listen on) holds an IPv4 one on the same port."""
    cls = sock._sock_type(address)
    if cls is sock.UnixSocket:
        return GroupUnixSocket
    if cls is sock.TCP6Socket and address[0] in ("::", "::0") and any(
            isinstance(other, tuple) and other[1] == address[1] and not is_ipv6(other[0])
            for other in addresses):
        return V6OnlySocket
    return cls


def _v6_only(listener):
    """For a kept IPv6 wildcard listener: is it bound IPv6-only? None for any other."""
    sock_ = listener.sock
    if sock_ is None or sock_.family != socket.AF_INET6:
        return None
    try:
        if sock_.getsockname()[0] != "::":
            return None
        return bool(sock_.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    except OSError:
        return None


def _split_changed(kept, address, roles):
    """Why ``kept`` (the IPv6 wildcard on ``address``) cannot serve the new configuration:
    bound dual-stack where an IPv4 address now shares its port, or IPv6-only where none does
    any more (IPv4 clients would be refused). None when it can. Only a restart re-binds it:
    re-bound in place, it would refuse connections meanwhile."""
    v6_only = _v6_only(kept)
    if v6_only is None:
        return None
    wanted = socket_type(address, roles) is V6OnlySocket
    if v6_only == wanted:
        return None
    if wanted:
        return (f"the listener on {describe(address)}, bound dual-stack, holds IPv4 port "
                f"{address[1]} too: restart to listen on both")
    return (f"the listener on {describe(address)} is bound IPv6-only (an IPv4 address shared "
            f"its port): alone it would refuse IPv4 clients; restart to bind it dual-stack")


def rebind(current, roles, cfg, log):
    """(listeners for ``roles`` in their order, listeners to retire); see the module doc."""
    remaining = list(current)
    wanted, fresh, kept_ones = [], [], []
    try:
        for address, role in roles.items():
            kept = next((lnr for lnr in remaining if _matches(lnr, address)), None)
            if kept is not None:
                problem = _split_changed(kept, address, roles)
                if problem is not None:
                    raise ListenerError(f"cannot keep the {role} address "
                                        f"{describe(address)}: {problem}")
                remaining.remove(kept)
                kept_ones.append(kept)
                wanted.append(name_listener(kept, role))
                continue
            try:
                listener = socket_type(address, roles)(address, cfg, log)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror \
                    else str(exc)
                raise ListenerError(f"cannot listen on the {role} address "
                                    f"{describe(address)}: {reason}") from exc
            fresh.append(listener)
            wanted.append(name_listener(listener, role))
    except BaseException:
        # A refused (or failed) reload changes nothing: what it bound is let go, a unix
        # socket's file too (left, it refused every connect until the next start), whatever
        # the error (one no check foresaw held its ports for the master's life)
        for lnr in fresh:
            close_listener(lnr)
        raise
    for kept in kept_ones:
        # server.backlog: listen() again on a listening socket sets the new limit (Linux),
        # its queue and connections untouched; only once every bind succeeded (a refused
        # reload changes nothing). Where it is denied (SELinux on an inherited socket, as
        # gunicorn's sock.py warns), the old limit stays.
        try:
            kept.sock.listen(cfg.backlog)
        except (OSError, AttributeError, OverflowError) as exc:
            log.warning("%s keeps its backlog: listen(%d) failed: %s", kept, cfg.backlog, exc)
    return wanted, remaining


def close_listener(listener):
    """Close a listener of the master's; a unix: one's socket file goes too, as gunicorn
    removes them at a stop (workers' copies of the socket do not need the name). Only the
    file it bound itself, still there: a fresh listener of the same reload may have bound
    the same file by another name (/var/run for /run, a symlinked folder), gunicorn removing
    this one's first, and unlinked, that listener refused every connect until the next
    start. A socket inherited from systemd keeps its file, as gunicorn leaves it."""
    listener.close()
    address = listener.cfg_addr
    bound = getattr(listener, "file_id", None)
    if bound is not None and _file_id(address) == bound:
        try:
            os.unlink(address)
        except OSError:
            pass            # gone already, or its folder is not the master's to write


def _file_id(path):
    """(device, inode) of the file at ``path``, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
