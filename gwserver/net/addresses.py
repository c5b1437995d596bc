"""Listener addresses as the kernel names them, without gevent: `gwserver check` (settings)
and the worker compare binds by the one rule here, so a conf that check accepts is one the
worker serves, and the other way round."""
import ipaddress
import socket


def listener_addresses(binds):
    """(ip, port) of each "host:port" bind as its listener's getsockname() says it: an IP in
    its one spelling ("[0:0::1]" is "::1"), a host name resolved, as gunicorn resolved it to
    bind. Compared as text, "localhost:8443" would match no listener, and a TLS or PROXY
    listener would quietly speak plain HTTP."""
    out = set()
    for bind in binds:
        if bind.startswith("unix:"):
            continue
        # (gunicorn takes "tcp://host:port" for host:port too)
        host, _, port = bind.removeprefix("tcp://").rpartition(":")
        host, port = host.strip("[]") or "0.0.0.0", int(port)
        try:
            out.add((str(ipaddress.ip_address(host)), port))
        except ValueError:
            out.update((info[4][0], port) for info in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM))
    return out


def bound_address(bind):
    """(ip, port) the socket of ``bind`` is bound to, or None (a unix socket, a name that
    does not resolve): an IP as written, a host name its first IPv4 address. gunicorn's
    socket for a name is AF_INET and bind() takes the first address the resolver gives:
    "localhost:8080" is 127.0.0.1:8080 only, where /etc/hosts names ::1 localhost too."""
    if bind.startswith("unix:"):
        return None
    host, _, port = bind.removeprefix("tcp://").rpartition(":")
    host, port = host.strip("[]") or "0.0.0.0", int(port)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0], port
    except (OSError, IndexError):
        return None
