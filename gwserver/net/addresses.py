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
        host, _, port = bind.rpartition(":")
        host, port = host.strip("[]") or "0.0.0.0", int(port)
        try:
            out.add((str(ipaddress.ip_address(host)), port))
        except ValueError:
            out.update((info[4][0], port) for info in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM))
    return out
