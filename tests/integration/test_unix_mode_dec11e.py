"""A unix: listener's socket was made mode 0777 (gunicorn's umask setting, 0 by default):
every local user could connect, and where trusted_proxies holds "unix:" each was a trusted
proxy, free to name any client (past ip_restriction). The socket is now 0660, the gateway's
user's and group's; an abstract socket, which has no permissions, is warned of by check when
"unix:" is trusted."""
import os
import stat
import subprocess
import sys
import tempfile

from ..conftest import check_conf
from .test_unix_peers_dec06y import conf_with, unix_get

NOBODY = 65534

# Connect as another user (nobody) and name a client the route allows: the exit status says
# what happened (0 served, 3 refused by the socket's mode).
AS_ANOTHER_USER = r'''
import os, socket, sys
os.setgid(65534); os.setgroups([]); os.setuid(65534)
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(5)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    sys.exit(3)
sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
             b"X-Forwarded-For: 203.0.113.7\r\n\r\n")
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.split(b"\r\n")[0].decode())
sys.exit(0 if b" 200 " in data.split(b"\r\n")[0] else 4)
'''


def test_a_unix_listener_admits_the_gateways_user_and_group_alone(launcher, upstream):
    folder = tempfile.mkdtemp(prefix="gw-unix-")
    try:
        os.chmod(folder, 0o755)             # a folder any user may pass, as /var/lib/... is
        path = os.path.join(folder, "gw.sock")
        launcher.gateway(conf_with(upstream, ["unix:"]), extra_binds=[f"unix:{path}"])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660       # was 0o777
        # the gateway's own user (and group) still connects, and its proxy names the client
        assert unix_get(path, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200
        other = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, path],
                               capture_output=True, text=True, timeout=20)
        assert other.returncode == 3, (other.returncode, other.stdout, other.stderr)
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_check_warns_of_a_trusted_abstract_unix_socket(tmp_path, upstream):
    for trusted in ("trusted_proxies", "identity_proxies"):
        conf = conf_with(upstream, [])
        conf["server"]["bind"] = ["127.0.0.1:8080", "unix:\0gw-abstract"]
        conf["server"][trusted] = ["unix:"]
        code, out = check_conf(tmp_path, conf)
        assert code == 0, out
        assert f'server.{trusted} holds "unix:"' in out and "is an abstract socket" in out, out
    conf = conf_with(upstream, ["unix:"])
    conf["server"]["bind"] = ["127.0.0.1:8080", "unix:/run/gw.sock"]
    code, out = check_conf(tmp_path, conf)
    assert code == 0 and "abstract" not in out, out


def test_a_unix_listener_a_reload_removes_takes_its_socket_file_along(launcher, upstream,
                                                                      tmp_path):
    """Left on disk by the reload (gunicorn's close does not unlink; only its stop does),
    the file answered each connect with a refusal until the next start."""
    from .test_reload_listeners import reload
    path = tmp_path / "gw.sock"
    gw = launcher.gateway(conf_with(upstream, ["unix:"]), extra_binds=[f"unix:{path}"])
    assert unix_get(path, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200

    def drop_unix(conf):
        conf["server"]["bind"] = [b for b in conf["server"]["bind"] if not b.startswith("unix:")]
    reload(gw, drop_unix)
    assert not path.exists()
    resp, _ = gw.request("GET", "/echo")
    assert resp.status == 403                   # served on TCP (no allowed client there)
