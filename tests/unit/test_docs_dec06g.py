"""The docs this session changed, read as a new operator (the pass of 2026-12-06, helper v7).
Each test failed before its fix.

1. ``gwserver_upstream_retries_total``'s help (and so docs/operations.md's metrics table)
   said "Retries on another target", while it counts the retries the policy asked for,
   made or not: ``budget_exhausted`` and ``timed_out`` are retries denied, and ``retried``
   ones go to the same target when no other is left. An operator summing the counter for
   "retries made" counted the denied ones too.
2. The retry policy's ``timeout`` said two things: docs/health.md "nor one whose backoff
   would end after it", docs/routes.md (generated from the schema) "no retry starts, its
   backoff waited", which reads as the backoff being waited before the timeout is looked
   at, the very defect test_review_attack_dec06c.py fixed.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_retries_metric_says_it_counts_retries_denied_too():
    from gwserver.server import metrics
    help_text = metrics.RETRIES.help
    assert "Retries on another target" not in help_text
    for outcome in ("retried", "budget_exhausted", "timed_out"):
        assert outcome in help_text
    assert "not made" in help_text
    assert "Retries on another target" not in (ROOT / "docs" / "operations.md").read_text()


def test_the_retry_timeout_s_backoff_rule_reads_the_same_on_both_pages():
    rule = "nor one whose backoff would end after it"
    assert rule in (ROOT / "docs" / "health.md").read_text()
    routes = (ROOT / "docs" / "routes.md").read_text()
    row = next(line for line in routes.splitlines() if line.startswith("| `timeout` | unset |"))
    assert rule in row and "its backoff waited" not in row
