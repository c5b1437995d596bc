"""core.h2limits: which sends are silly, and how they are paced."""
from gwserver.core.h2limits import (SILLY_SENDS_PER_SECOND, SMALL_DATA, WindowPacer,
                                    fed_from_window, silly, tiny_update)


def test_an_update_is_tiny_against_the_peers_own_windows():
    assert tiny_update(1, 65535) and tiny_update(SMALL_DATA - 1, 1 << 20)
    assert not tiny_update(SMALL_DATA, 65535)           # a frame's worth
    assert not tiny_update(512, 1023)   # nghttp -w 10: 1 KiB windows, opened half at a time
    assert tiny_update(254, 1023) and not tiny_update(255, 1023)
    assert tiny_update(1, 1) and not tiny_update(16, 1)  # declared tiny windows: 16 bytes


def test_a_send_is_silly_when_a_tiny_update_made_the_window_small():
    assert silly(1, 1000, True) and silly(SMALL_DATA - 1, SMALL_DATA, True)
    assert not silly(1, 1000, False)        # the remainder of a window opened in big steps
    assert not silly(0, 1000, True)         # nothing to send: a wait, not a send
    assert not silly(SMALL_DATA, 100_000, True)
    assert not silly(100, 100, True)        # a small message, whole


def test_past_the_budget_a_sender_waits_for_the_second_to_end():
    pacer = WindowPacer()
    assert all(pacer.pause(10.0 + i / 1000) == 0.0 for i in range(SILLY_SENDS_PER_SECOND))
    assert abs(pacer.pause(10.5) - 0.5) < 1e-9
    assert pacer.pause(11.0) == 0.0                 # a new second


class Window:
    def __init__(self, size):
        self.outbound_flow_control_window = size


class Conn:
    def __init__(self, window, streams):
        self.outbound_flow_control_window = window
        self.streams = {sid: Window(size) for sid, size in streams.items()}


class Waiter:
    def __init__(self, pending):
        self.pending = pending


def test_the_window_feeds_the_oldest_waiters_it_can():
    starved = {1: Waiter(100), 3: Waiter(5000), 5: Waiter(10), 7: Waiter(10)}
    fed = fed_from_window(Conn(1, {1: 65535, 3: 65535, 5: 65535, 7: 65535}), starved)
    assert [w.pending for w in fed] == [100] and list(starved) == [3, 5, 7]
    fed = fed_from_window(Conn(5005, {3: 65535, 5: 65535, 7: 65535}), starved)
    assert [w.pending for w in fed] == [5000, 10] and list(starved) == [7]


def test_a_waiter_whose_stream_is_gone_or_shut_takes_nothing():
    starved = {1: Waiter(100), 3: Waiter(100), 5: Waiter(100)}
    fed = fed_from_window(Conn(50, {3: 0, 5: 65535}), starved)     # 1 gone, 3 shut
    assert len(fed) == 3 and not starved
