"""The worker's boot reads the installed packages' entry points once for gevent's patch_all:
the same answers as importlib.metadata's own, and the function put back after."""
from importlib import metadata

from gwserver.server.worker import entry_points_read_once


def test_entry_points_read_once_answers_as_importlib_does_and_is_put_back():
    asked = metadata.entry_points
    expected = {group: sorted(ep.name for ep in metadata.entry_points(group=group))
                for group in ("console_scripts", "gevent.plugins.monkey.will_patch_all")}
    with entry_points_read_once():
        assert metadata.entry_points is not asked
        got = {group: sorted(ep.name for ep in metadata.entry_points(group=group))
               for group in expected}
        assert len(metadata.entry_points()) == len(asked())
    assert got == expected and "gwserver" in got["console_scripts"]
    assert metadata.entry_points is asked


def test_entry_points_are_put_back_when_the_patch_raises():
    asked = metadata.entry_points
    try:
        with entry_points_read_once():
            raise KeyError("patch failed")
    except KeyError:
        pass
    assert metadata.entry_points is asked
