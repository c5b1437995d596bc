"""core.h2limits: which sends are silly, and how they are paced."""
from gwserver.core.h2limits import SILLY_SENDS_PER_SECOND, SMALL_DATA, WindowPacer, silly


def test_a_send_is_silly_only_when_the_window_made_it_small():
    assert silly(1, 1000) and silly(SMALL_DATA - 1, SMALL_DATA)
    assert not silly(0, 1000)                       # nothing to send: a wait, not a send
    assert not silly(SMALL_DATA, 100_000)           # a window worth a frame
    assert not silly(100, 100) and not silly(500, 60)   # a small message, whole


def test_past_the_budget_a_sender_waits_for_the_second_to_end():
    pacer = WindowPacer()
    assert all(pacer.pause(10.0 + i / 1000) == 0.0 for i in range(SILLY_SENDS_PER_SECOND))
    assert abs(pacer.pause(10.5) - 0.5) < 1e-9
    assert pacer.pause(11.0) == 0.0                 # a new second
