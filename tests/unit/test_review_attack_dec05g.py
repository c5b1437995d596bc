"""Review pass (Dec 05 g), pure code: what tests/integration/test_review_attack_dec05g.py
shows against real processes, at its edges.

- The step clock a rollouts helper keeps across its restarts (rollouts-seen.json) is read
  back only within the boot that wrote it (the monotonic clock starts over at each), and
  never a time still to come.
- A redis url's user part is masked in redis-py's words, whatever piece of it they quote
  (test_reload_attack_dec05f shows the other parts are quoted as before).
"""
import json
import os
import time

import pytest

from gwserver.core.schema import Invalid
from gwserver.helpers import rollouts
from gwserver.settings import redis_url


def test_the_step_clock_is_read_back_only_from_this_boot(tmp_path, monkeypatch):
    monkeypatch.setattr(rollouts, "boot_id", lambda: "boot-a")
    now = time.monotonic()
    rollouts.save_seen(str(tmp_path), {"shop": ("r1:1", now - 5.0), "soon": ("r2:1", now + 60)})
    seen = rollouts.load_seen(str(tmp_path))
    assert seen == {"shop": ("r1:1", now - 5.0)}        # a time to come is no time seen
    monkeypatch.setattr(rollouts, "boot_id", lambda: "boot-b")
    assert rollouts.load_seen(str(tmp_path)) == {}
    with open(os.path.join(tmp_path, rollouts.SEEN_FILE), "w") as f:
        json.dump({"boot": "boot-b", "routes": {"shop": "damaged"}}, f)
    assert rollouts.load_seen(str(tmp_path)) == {}


@pytest.mark.parametrize("url", ["redis://:s3cr3t/x@127.0.0.1:6379/0",
                                 "redis://app:s3cr3t#x@127.0.0.1:6379",
                                 "rediss://:s3cr3t?x@127.0.0.1:6380/0"])
def test_a_redis_url_refusal_never_quotes_its_password(url):
    with pytest.raises(Invalid) as info:
        redis_url(url)
    assert "s3cr3t" not in str(info.value)
    assert "must be percent-encoded (%2F, %3F, %23)" in str(info.value)
