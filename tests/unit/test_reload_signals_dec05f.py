"""The master's signal batches (Dec 05 f): a SIGHUP storm is no storm of reloads."""
import queue
import signal
import time

from gwserver.server.app import GatewayArbiter

RELOAD_SPACING = 1.0       # (gwserver.server.app.RELOAD_SPACING)


def master():
    arbiter = GatewayArbiter.__new__(GatewayArbiter)
    arbiter.SIG_QUEUE = queue.SimpleQueue()
    return arbiter


def send(arbiter, *signals):
    for sig in signals:
        arbiter.SIG_QUEUE.put_nowait(sig)


def test_the_sighups_of_one_batch_are_one_reload_after_the_others():
    arbiter = master()
    send(arbiter, signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP, signal.SIGHUP)
    assert arbiter.wait_for_signals(0.01) == [signal.SIGUSR1, signal.SIGHUP]


def test_sighups_within_the_spacing_are_held_then_one_reload_when_it_ends():
    arbiter = master()
    send(arbiter, signal.SIGHUP)
    assert arbiter.wait_for_signals(0.01) == [signal.SIGHUP]
    began = time.monotonic()
    send(arbiter, signal.SIGHUP)
    assert arbiter.wait_for_signals(0.01) == []             # held, not lost
    send(arbiter, signal.SIGHUP, signal.SIGTTIN)
    assert arbiter.wait_for_signals(0.01) == [signal.SIGTTIN]
    # The wait ends when the held reload is due, not a whole timeout later
    assert arbiter.wait_for_signals(5.0) == [signal.SIGHUP]
    assert RELOAD_SPACING - 0.2 <= time.monotonic() - began < RELOAD_SPACING + 0.5
    assert arbiter.wait_for_signals(0.01) == []             # once for all of them


def test_a_stop_in_the_batch_comes_before_the_reload():
    arbiter = master()
    send(arbiter, signal.SIGHUP, signal.SIGTERM)
    assert arbiter.wait_for_signals(0.01) == [signal.SIGTERM, signal.SIGHUP]


def test_replacements_that_die_before_they_serve_let_no_old_worker_go(caplog):
    """A conf that passes every check yet no worker can start with (a fault only a worker
    meets): the replacements died as they started, the wait counted the old workers in
    their place, and the master stopped them: no worker served at all."""
    from types import SimpleNamespace
    arbiter = GatewayArbiter.__new__(GatewayArbiter)
    arbiter.cfg = SimpleNamespace(timeout=30)
    arbiter._num_workers, arbiter.worker_generation, arbiter.stop_asked = 1, 2, False

    def worker(age, generation, beat):
        return SimpleNamespace(age=age, generation=generation, born_mtime=1.0,
                               tmp=SimpleNamespace(last_update=lambda: beat))
    arbiter.WORKERS = {10: worker(1, 1, 5.0), 11: worker(2, 2, 1.0)}     # 11: not serving yet
    arbiter.reap_workers = lambda: arbiter.WORKERS.pop(11, None)         # ... and dead
    started = time.monotonic()
    assert arbiter.wait_for_replacements() is False
    assert time.monotonic() - started < 1.0
    assert any("workers of generation 2 die before they serve" in r.getMessage()
               for r in caplog.records)
    # and once one serves, they go
    arbiter.WORKERS[12] = worker(3, 2, 7.0)
    assert arbiter.wait_for_replacements() is True
