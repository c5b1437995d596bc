"""A unix: listener's peer has no address: behind a proxy on this host (nginx to
unix:/run/gw.sock), every client was "unix", refused by every ip_restriction, one count for
every limit keyed on the client, with no way to trust that proxy (trusted_proxies took CIDRs
alone). ``trusted_proxies = ["unix:"]`` (nginx's set_real_ip_from unix:) now trusts it, and
`gwserver check` says what an ip_restriction does on a unix: listener without it."""
import json
import socket

from ..conftest import check_conf, gateway_conf, route


def unix_exchange(path, headers=b""):
    """GET /echo over the unix socket ``path`` -> every byte of the answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + headers +
                     b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def unix_get(path, headers=b""):
    head, _, body = unix_exchange(path, headers).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def conf_with(upstream, trusted):
    return gateway_conf([{**route("e", ["/echo"], upstream.url),
                          "plugins": {"ip_restriction": {"allow": ["203.0.113.0/24"]}}}],
                        server={"trusted_proxies": trusted})


def test_a_proxy_on_a_unix_listener_names_its_clients_when_trusted(launcher, upstream, tmp_path):
    sock = tmp_path / "gw.sock"
    gw = launcher.gateway(conf_with(upstream, ["unix:"]), extra_binds=[f"unix:{sock}"])
    status, body = unix_get(sock, b"X-Forwarded-For: 203.0.113.7\r\n")
    assert status == 200, body
    headers = {name.lower(): value for name, value in json.loads(body)["headers"]}
    # (the peer appended as nginx's $proxy_add_x_forwarded_for does: "unix" for a socket)
    assert headers["x-forwarded-for"] == "203.0.113.7, unix", headers
    # another client the proxy names is judged on its own address
    assert unix_get(sock, b"X-Forwarded-For: 198.51.100.1\r\n")[0] == 403
    # the TCP listener's peers are not trusted by "unix:"
    resp, _ = gw.request("GET", "/echo", headers={"X-Forwarded-For": "203.0.113.7"})
    assert resp.status == 403
    # untrusted (only a CIDR), a unix peer names no client, as before
    other = tmp_path / "other.sock"
    launcher.gateway(conf_with(upstream, ["10.0.0.0/8"]), extra_binds=[f"unix:{other}"])
    assert unix_get(other, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 403


def test_check_warns_of_an_ip_restriction_on_an_untrusted_unix_listener(tmp_path, upstream):
    conf = conf_with(upstream, [])
    conf["server"]["bind"] = ["127.0.0.1:8080", "unix:/run/gw.sock"]
    code, out = check_conf(tmp_path, conf)
    assert code == 0, out
    assert 'route e: ip_restriction refuses every request on unix:/run/gw.sock' in out, out
    assert 'add "unix:" to server.trusted_proxies' in out, out
    conf["server"]["trusted_proxies"] = ["unix:"]
    code, out = check_conf(tmp_path, conf)
    assert code == 0 and "ip_restriction refuses" not in out, out
