"""The breaker's state machine with a controlled clock, as tables of steps."""
import pytest

from gwserver.core.breaker import CLOSED, HALF_OPEN, OPEN, initial_state, step
from gwserver.core.chain import build_chain, upstream_plugins
from gwserver.errors import ConfigError
from gwserver.plugins import load_registry

CONF = {"error_rate": 0.5, "window": 10.0, "min_requests": 4, "open_for": 5.0,
        "max_open_for": 12.0, "half_open_probes": 2}


class Machine:
    """Drives step() like a store: admits remember their epoch, outcomes report it."""

    def __init__(self, conf=CONF):
        self.conf, self.state, self.entered = conf, initial_state(), []

    def admit(self, now, n=1):
        self.state, admitted, transitions = step(self.state, self.conf, now, (), n)
        self.entered += transitions
        return admitted, self.state["epoch"]

    def record(self, now, epoch, ok=0, failed=0):
        self.state, _, transitions = step(self.state, self.conf, now, [(epoch, ok, failed)])
        self.entered += transitions


# (failures, successes) reported in the closed state -> the state after them
@pytest.mark.parametrize("ok, failed, expected", [
    (0, 3, CLOSED),         # 3 failures: below min_requests
    (0, 4, OPEN),           # 4 of 4 failed
    (2, 2, OPEN),           # 50% reaches error_rate 0.5
    (3, 2, CLOSED),         # 40%
    (10, 9, CLOSED),        # 47%
    (10, 10, OPEN),
])
def test_closed_trips_on_error_rate_with_min_requests(ok, failed, expected):
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(1, epoch, ok, failed)
    assert machine.state["state"] == expected


def test_failures_leave_the_window():
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(0, epoch, 0, 3)
    machine.record(11, epoch, 1, 0)       # the 3 failures are over 10 s old: 0 of 1 failed
    assert machine.state["state"] == CLOSED
    machine.record(12, epoch, 0, 3)       # 3 of 4 failed within the window
    assert machine.state["state"] == OPEN


def test_open_refuses_then_half_open_admits_exactly_the_probes():
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(0, epoch, 0, 4)
    assert machine.admit(1, 10)[0] == 0                 # open: nobody passes
    assert machine.admit(4.9, 1)[0] == 0
    admitted, probe_epoch = machine.admit(5.0, 10)      # open_for elapsed: 2 probes of 10
    assert (admitted, machine.state["state"]) == (2, HALF_OPEN)
    assert machine.admit(5.1, 3)[0] == 0                # probes already granted
    machine.record(5.2, probe_epoch, ok=1)
    assert machine.state["state"] == HALF_OPEN
    machine.record(5.3, probe_epoch, ok=1)
    assert machine.state["state"] == CLOSED
    assert machine.admit(5.4, 50)[0] == 50
    assert machine.entered == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_probe_reopens_for_longer_up_to_the_cap():
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(0, epoch, 0, 4)                      # trip 1: open 5 s
    now, expected_open = 0.0, [5.0, 10.0, 12.0, 12.0]   # doubling, capped by max_open_for
    for seconds in expected_open:
        assert machine.state["until"] == pytest.approx(now + seconds)
        now = machine.state["until"]
        _, probe_epoch = machine.admit(now)
        machine.record(now, probe_epoch, failed=1)
    assert machine.state["trips"] == 5


def test_answers_from_before_a_state_change_do_not_count():
    machine = Machine()
    _, old_epoch = machine.admit(0, 20)                 # 20 requests in flight when it trips
    machine.record(0, old_epoch, 0, 4)
    _, probe_epoch = machine.admit(5)
    machine.record(5.1, old_epoch, ok=10)               # late answers of the closed era
    assert machine.state["state"] == HALF_OPEN
    machine.record(5.2, old_epoch, failed=10)
    assert machine.state["state"] == HALF_OPEN
    machine.record(5.3, probe_epoch, ok=2)
    assert machine.state["state"] == CLOSED


def test_lost_probes_are_granted_again_after_the_probe_timeout():
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(0, epoch, 0, 4)
    assert machine.admit(5, 2)[0] == 2                  # both probes' workers die
    assert machine.admit(14.9)[0] == 0
    assert machine.admit(15.0, 5)[0] == 2               # probe_timeout = max(window, open_for)


def test_closing_resets_the_trip_count():
    machine = Machine()
    _, epoch = machine.admit(0)
    machine.record(0, epoch, 0, 4)
    _, probe_epoch = machine.admit(5, 2)
    machine.record(5, probe_epoch, ok=2)
    assert machine.state["trips"] == 0
    _, epoch = machine.admit(6)
    machine.record(6, epoch, 0, 4)
    assert machine.state["until"] == pytest.approx(11)  # open_for again, not doubled


@pytest.mark.parametrize("conf, problem", [
    ({"error_rate": 0}, "error_rate: must be a positive number"),
    ({"error_rate": 1.5}, "error_rate: must be a positive number and <= 1"),
    ({"min_requests": 0}, "min_requests"),
    ({"half_open_probes": 0}, "half_open_probes"),
    ({"failure_statuses": [500, 700]}, "failure_statuses[1]: must be an HTTP status"),
    ({"open_for": 30, "max_open_for": 10}, "max_open_for (10.0) is below open_for (30.0)"),
    ({"scope": "host"}, "scope"),
    ({"windw": 3}, "windw"),
])
def test_schema_names_the_problem(conf, problem):
    with pytest.raises(ConfigError) as caught:
        build_chain("route r", {"breaker": conf}, None, load_registry())
    assert problem in str(caught.value)


def test_upstream_plugins_take_upstream_scope_and_only_allowed_plugins():
    registry = load_registry()
    (plugin, conf), = upstream_plugins("upstream u", {"breaker": {"min_requests": 3}}, registry)
    assert (plugin.NAME, conf["scope"], conf["min_requests"]) == ("breaker", "upstream", 3)
    with pytest.raises(ConfigError, match="plugins.headers: cannot be set on an upstream"):
        upstream_plugins("upstream u", {"headers": {}}, registry)
    # a route's own breaker replaces its upstream's
    steps = upstream_plugins("upstream u", {"breaker": True}, registry)
    chain = build_chain("route r", {"breaker": {"open_for": 1}}, None, registry, steps)
    assert [c["scope"] for _, c in chain.steps] == ["route"]
    assert [c["scope"] for _, c in build_chain("route r", {}, None, registry, steps).steps] \
        == ["upstream"]
