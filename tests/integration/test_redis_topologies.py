"""Rate limits and breakers on Redis Cluster and Redis Sentinel, including a failover."""
import subprocess
import time

from ..conftest import gateway_conf, route, wait_until


def get(gw, path, headers=None):
    resp, _ = gw.request("GET", path, headers=headers)
    return resp.status


def test_cluster_limits_and_breakers_are_exact_across_workers(launcher, upstream):
    ports, url = launcher.redis_cluster()
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 3, "per": 3600, "burst": 3, "key": "header:X-Key"}}),
        route("br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "min_requests": 4, "open_for": 60, "max_open_for": 60}})],
        workers=2, redis={"url": url, "timeout": 0.5}))
    keys = [f"user-{i}" for i in range(12)]          # spread over the three masters' slots
    for key in keys:
        assert [get(gw, "/lim", {"X-Key": key}) for _ in range(5)] == [200] * 3 + [429] * 2
    counts = [int(subprocess.run(["redis-cli", "-p", str(p), "dbsize"], capture_output=True,
                                 text=True).stdout) for p in ports]
    assert sum(counts) == len(keys) and sum(1 for c in counts if c) >= 2
    for _ in range(4):
        assert get(gw, "/br/status/500") == 500
        time.sleep(0.05)
    assert get(gw, "/br/echo") == 503


def test_sentinel_failover_keeps_serving_and_limits_resume_on_the_new_master(launcher,
                                                                              upstream):
    master, replica, sentinel = launcher.redis_sentinel()
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/gwmaster"
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 1000, "per": 3600, "burst": 1000, "key": "route",
                       "on_store_error": "local"}})], workers=2, redis={"url": url}))

    def stored_tokens(port):
        out = subprocess.run(["redis-cli", "-p", str(port), "hget", "gw:rl:lim:route:", "t"],
                             capture_output=True, text=True).stdout.strip()
        return float(out) if out else None

    def promoted():
        return subprocess.run(["redis-cli", "-p", str(sentinel.port), "sentinel",
                               "get-master-addr-by-name", "gwmaster"], capture_output=True,
                              text=True).stdout.split()[1]

    assert [get(gw, "/lim") for _ in range(10)] == [200] * 10
    # 1000 tokens - 10 (+ refill at 1000/hour, < 1 token in a test)
    wait_until(lambda: 990 <= (stored_tokens(replica.port) or 0) < 991, timeout=5)
    master.kill()
    master.wait()
    started, statuses = time.monotonic(), []
    while time.monotonic() - started < 20:              # through the failover: never an error
        began = time.monotonic()
        statuses.append(get(gw, "/lim"))
        assert time.monotonic() - began < 1.0           # and never a stall on the dead master
        if promoted() == str(replica.port) and len(statuses) > 20:
            break                                       # Sentinel names the replica master
        time.sleep(0.05)
    assert set(statuses) == {200}
    assert promoted() == str(replica.port)
    # decisions go to the new master again: its bucket keeps counting down from 990
    wait_until(lambda: get(gw, "/lim") == 200 and (stored_tokens(replica.port) or 990) < 980,
               timeout=10)
    assert "redis is answering again" in gw.log()


def test_a_password_from_a_file_authenticates_to_redis(launcher, upstream, tmp_path):
    """[redis] password_file (a systemd credential) keeps the password out of the url."""
    from ..conftest import free_port
    port = free_port()
    directory = tmp_path / "redis-auth"
    directory.mkdir()
    launcher._redis_server(port, directory, "--requirepass", "r3dis-pw")
    secret = tmp_path / "redis-password"
    secret.write_text("r3dis-pw\n")
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 3, "per": 3600, "burst": 3, "key": "route", "on_store_error": "deny"}})],
        workers=2, redis={"url": f"redis://127.0.0.1:{port}/0", "password_file": str(secret)}))
    assert [get(gw, "/lim") for _ in range(5)] == [200] * 3 + [429] * 2
    size = subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "r3dis-pw",
                           "dbsize"], capture_output=True, text=True).stdout
    assert int(size) == 1                       # the limit's key: the decisions were Redis's
    assert "r3dis-pw" not in gw.log()


def test_limits_on_a_redis_unix_socket_are_exact(launcher, upstream, tmp_path):
    """unix:// (docs/ratelimit.md): the store's own connection works over a Unix socket as
    over TCP; the decisions are Redis's (its key is there), none fell back."""
    from ..conftest import free_port
    port = free_port()
    directory = tmp_path / "redis-unix"
    directory.mkdir()
    sock = directory / "redis.sock"
    launcher._redis_server(port, directory, "--unixsocket", str(sock), "--unixsocketperm", "700")
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 3, "per": 3600, "burst": 3, "key": "route", "on_store_error": "deny"}})],
        workers=2, redis={"url": f"unix://{sock}?db=0", "timeout": 0.5}))
    assert [get(gw, "/lim") for _ in range(5)] == [200] * 3 + [429] * 2
    size = subprocess.run(["redis-cli", "-s", str(sock), "dbsize"], capture_output=True,
                          text=True).stdout
    assert int(size) == 1


def test_limits_on_a_redis_over_tls_are_exact(launcher, upstream, tmp_path):
    """rediss:// with the CA named in the url (docs/ratelimit.md): the store's own connection
    is redis-py's TLS connection; the decisions are Redis's, none fell back."""
    from ..conftest import free_port
    from ..pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("redis")
    port, tls_port = free_port(), free_port()
    directory = tmp_path / "redis-tls"
    directory.mkdir()
    launcher._redis_server(port, directory, "--tls-port", str(tls_port), "--tls-cert-file",
                           str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                           str(ca.cert_path), "--tls-auth-clients", "no")
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 3, "per": 3600, "burst": 3, "key": "route", "on_store_error": "deny"}})],
        workers=2, redis={"url": f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca.cert_path}",
                          "timeout": 0.5}))
    assert [get(gw, "/lim") for _ in range(5)] == [200] * 3 + [429] * 2
    size = subprocess.run(["redis-cli", "-p", str(port), "dbsize"], capture_output=True,
                          text=True).stdout
    assert int(size) == 1
