"""A reload that fails in a way no check foresaw leaves the master's conf as it found it
(Dec 11): the conf stayed half applied, and the next worker forked served it."""
from types import SimpleNamespace

import pytest

from gwserver.server import app as app_module
from gwserver.server.app import GatewayArbiter


class Unforeseen(Exception):
    pass


def arbiter_with(conf, new_conf, monkeypatch):
    application = SimpleNamespace(conf=conf, tls_server="old tls", cfg="old cfg")

    def reload():               # gunicorn's do_load_config applied it, then rebind failed
        application.conf, application.tls_server, application.cfg = \
            new_conf, "new tls", "new cfg"
    application.reload = reload
    arbiter = GatewayArbiter.__new__(GatewayArbiter)
    arbiter.app, arbiter.LISTENERS, arbiter.log = application, [], None
    monkeypatch.setattr(app_module, "configure_logging", lambda level: None)
    return arbiter


def test_an_unforeseen_error_puts_the_previous_conf_back(monkeypatch):
    old, new = SimpleNamespace(log={"level": "info"}), SimpleNamespace(log={"level": "debug"})
    arbiter = arbiter_with(old, new, monkeypatch)

    def rebind(*args):
        raise Unforeseen("listen(): Python int too large to convert to C int")
    monkeypatch.setattr(app_module, "rebind", rebind)
    monkeypatch.setattr(app_module, "listener_roles", lambda conf: [])
    with pytest.raises(Unforeseen):             # handle_hup logs it, with its traceback
        arbiter.reload()
    assert arbiter.app.conf is old
    assert (arbiter.app.tls_server, arbiter.app.cfg) == ("old tls", "old cfg")


def test_a_refused_listener_puts_it_back_as_before(monkeypatch):
    old, new = SimpleNamespace(log={"level": "info"}), SimpleNamespace(log={"level": "debug"})
    arbiter = arbiter_with(old, new, monkeypatch)

    def rebind(*args):
        raise app_module.ListenerError("cannot listen on 127.0.0.1:1: Permission denied")
    monkeypatch.setattr(app_module, "rebind", rebind)
    monkeypatch.setattr(app_module, "listener_roles", lambda conf: [])
    assert arbiter.reload() is False
    assert arbiter.app.conf is old and arbiter.refused_because.startswith("cannot listen")


def test_what_a_failed_rebind_bound_is_let_go_whatever_the_error(monkeypatch, tmp_path):
    """An error no check foresaw in rebind() (a listen() past a C int once) left the
    listeners it had bound open for the master's life, their ports and socket files held."""
    import logging
    import socket

    from gunicorn.config import Config

    from gwserver.server import listeners

    path = str(tmp_path / "gw.sock")
    real = listeners.socket_type

    def failing_second(address, roles):
        if address == ("127.0.0.1", 1):
            raise Unforeseen("no check foresaw this")
        return real(address, roles)
    monkeypatch.setattr(listeners, "socket_type", failing_second)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    roles = {("127.0.0.1", port): "server", path: "server", ("127.0.0.1", 1): "admin"}
    with pytest.raises(Unforeseen):
        listeners.rebind([], roles, Config(), logging.getLogger("test"))
    with socket.socket() as again:          # the port is free again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
    assert not (tmp_path / "gw.sock").exists()
