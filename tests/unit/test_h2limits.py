"""core.h2limits: which sends are silly, and how they are paced."""
from gwserver.core.h2limits import (SILLY_SENDS_PER_SECOND, SMALL_DATA, WindowPacer, silly,
                                    tiny_update)


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
