"""gwserver.files: what the gateway trusts of the files and directories it is named."""
import os
import stat

from gwserver.files import foreign_dir


def test_a_state_dir_another_user_could_have_made_is_not_trusted(tmp_path):
    """An unprivileged run's default state dir is under /tmp: another local user could
    make it first, then change the host state and the reload verdicts read there."""
    mine = tmp_path / "gw" / "state"
    mine.mkdir(parents=True)
    assert foreign_dir(str(mine)) is None
    (tmp_path / "gw").chmod(0o777)                          # parent writable by everyone
    assert foreign_dir(str(mine)) == f"{tmp_path / 'gw'} is writable by every user"
    (tmp_path / "gw").chmod(0o777 | stat.S_ISVTX)           # as /tmp: sticky, so fine
    assert foreign_dir(str(mine)) is None
    if os.geteuid() == 0:                                   # only root can give it away
        os.chown(mine, 65534, 65534)
        assert foreign_dir(str(mine)) == \
            f"{mine} belongs to uid 65534, not this user (0) or root"
