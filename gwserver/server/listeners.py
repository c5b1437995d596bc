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
import socket

from gunicorn import sock
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


def socket_type(address, addresses):
    """gunicorn's socket class for ``address``; V6OnlySocket for the IPv6 wildcard when
    ``addresses`` (every address to listen on) holds an IPv4 one on the same port."""
    cls = sock._sock_type(address)
    if cls is sock.TCP6Socket and address[0] in ("::", "::0") and any(
            isinstance(other, tuple) and other[1] == address[1] and not is_ipv6(other[0])
            for other in addresses):
        return V6OnlySocket
    return cls


def _holds_ipv4_port(listener, address):
    """Is ``listener`` a dual-stack IPv6 wildcard on ``address``'s port, an IPv4 address?"""
    if not isinstance(address, tuple) or is_ipv6(address[0]) or listener.sock is None or \
            listener.sock.family != socket.AF_INET6:
        return False
    try:
        host, port = listener.sock.getsockname()[:2]
        return port == address[1] and host == "::" and not listener.sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return False


def rebind(current, roles, cfg, log):
    """(listeners for ``roles`` in their order, listeners to retire); see the module doc."""
    remaining = list(current)
    wanted, fresh = [], []
    for address, role in roles.items():
        kept = next((lnr for lnr in remaining if _matches(lnr, address)), None)
        if kept is not None:
            remaining.remove(kept)
            if kept.sock is not None:
                # server.backlog: listen() again on a listening socket sets the new limit
                # (Linux), the queue and its connections untouched
                kept.sock.listen(cfg.backlog)
            wanted.append(name_listener(kept, role))
            continue
        try:
            listener = socket_type(address, roles)(address, cfg, log)
        except (OSError, ValueError) as exc:
            for lnr in fresh:
                lnr.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            dual = next((lnr for lnr in current if _holds_ipv4_port(lnr, address)), None)
            if dual is not None:
                reason += (f" (the listener on {describe(dual.cfg_addr)}, bound dual-stack, "
                           f"holds IPv4 port {address[1]} too: restart to listen on both)")
            raise ListenerError(f"cannot listen on the {role} address {describe(address)}: "
                                f"{reason}") from exc
        fresh.append(listener)
        wanted.append(name_listener(listener, role))
    return wanted, remaining
