"""The attack pass of 2026-12-05, helper h3 (the integration tests are in
tests/integration/test_review_attack_dec05h.py): `gwserver reload --timeout` takes no
negative or NaN time; it signalled the master and then said at once that it had no verdict
"in -1 s", exit 1, of a reload the master applied."""
import pytest

from gwserver.cli import main


@pytest.mark.parametrize("timeout", ["-1", "nan", "-0.5"])
def test_gwserver_reload_refuses_a_timeout_below_zero_before_it_signals(timeout, capsys,
                                                                         monkeypatch):
    import gwserver.reload_cli as reload_cli
    monkeypatch.setattr(reload_cli, "reload", lambda *a, **k: pytest.fail("signalled"))
    with pytest.raises(SystemExit) as stop:
        main(["reload", "-c", "/etc/gwserver/gwserver.toml", "--pid", "1", "--timeout",
              timeout])
    assert stop.value.code == 2
    assert "--timeout: must be 0 or more seconds" in capsys.readouterr().err
