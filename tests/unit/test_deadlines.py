"""The ticker's deadlines: never earlier than the time armed for."""
from gwserver.net import deadlines as deadlines_module
from gwserver.net.deadlines import Deadlines


class Owner:
    def __init__(self):
        self.expired = False

    def expire(self):
        self.expired = True


def test_a_deadline_counts_from_when_it_is_armed_not_from_the_last_tick(monkeypatch):
    # The cached clock is as old as the last tick: up to the interval, and more when the
    # worker's loop was busy (a CI run under load fired a 1 s client_body_timeout at 0.89 s).
    clock = [1000.0]
    monkeypatch.setattr(deadlines_module.time, "monotonic", lambda: clock[0])
    deadlines = Deadlines(interval=0.05)    # ticked last at 1000.0
    clock[0] = 1000.3                      # the loop was busy for 0.3 s
    owner = Owner()
    deadlines.arm(owner, 1.0)
    clock[0] = 1001.2                      # 0.9 s after arming
    deadlines.tick()
    assert not owner.expired
    clock[0] = 1001.3
    deadlines.tick()
    assert owner.expired
