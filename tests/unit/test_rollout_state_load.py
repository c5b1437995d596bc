"""core.rollout.load_state (attack pass 2026-12-05, h8): every state the code writes loads
back as it was, and a stored value that is no state is a DamagedState, never another error
(the rollouts CLI and the controller's tick died of those)."""
import json

import pytest

from gwserver.core import rollout as core
from gwserver.terminal import printable


def states():
    state = core.start({"steps": [0.5, 10, 50, 100]}, "r1", 1_765_000_000.123)
    yield state
    for event, reason in (("advance", "gates held"), ("pause", "look"), ("resume", ""),
                          ("rollback", "gate failed"), ("resume", ""), ("advance", "x"),
                          ("abort", "stop"), ("promote", "ship it"), ("abort", "undo")):
        state = core.transition(state, event, state.since + 60, reason)
        yield state


@pytest.mark.parametrize("state", list(states()), ids=lambda s: f"{s.status}-{s.epoch}")
def test_every_state_the_code_writes_loads_back(state):
    assert core.load_state(state.to_json().encode()) == state


GOOD = json.loads(core.start({"steps": [10, 100]}, "r1", 1_765_000_000.0).to_json())


@pytest.mark.parametrize("raw", [
    b"", b"garbage", b"[]", b"null", b'"text"', b"[" * 5000 + b"]" * 5000,
    json.dumps({**GOOD, "extra": 1}), json.dumps({**GOOD, "steps": "10"}),
    json.dumps({**GOOD, "steps": []}), json.dumps({**GOOD, "steps": [10, 101]}),
    json.dumps({**GOOD, "step": 2}), json.dumps({**GOOD, "step": -1}),
    json.dumps({**GOOD, "status": "exploded"}), json.dumps({**GOOD, "id": 7}),
    json.dumps({**GOOD, "epoch": "1"}), json.dumps({**GOOD, "history": [1]}),
    json.dumps({**GOOD, "history": [{**GOOD["history"][0], "at": 1e300}]}),
    json.dumps({k: v for k, v in GOOD.items() if k != "since"}),
])
def test_a_stored_value_that_is_no_state_is_a_damaged_state(raw):
    with pytest.raises(core.DamagedState):
        core.load_state(raw if isinstance(raw, bytes) else raw.encode())


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    assert printable("a\x1b]0;t\x07\nb\tc\x7f\x9bé→") == \
        "a\\x1b]0;t\\x07\\x0ab\\x09c\\x7f\\x9bé→"
    assert printable(7) == "7"
