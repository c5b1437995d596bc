"""A rollout's state key in Redis holding another type (another writer's hash; Dec 11 h):
`gwserver rollouts` lists it DAMAGED, and docs/rollouts.md says the controller's writer starts
that rollout again from its first step. Its compare-and-swap read the key with GET, which
Redis refuses on a hash (WRONGTYPE): every tick failed, and the rollout never began."""
import socket

from ..conftest import wait_until
from .test_rollouts import rollout_conf, rollout_of


def redis_command(redis, *words):
    line = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(1000)


def test_a_state_key_of_another_type_is_started_again(launcher, tmp_path):
    redis = launcher.redis()
    assert redis_command(redis, b"HSET", b"gw:ro:state:shop", b"field", b"value")[:1] == b":"
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, redis=redis, workers=1))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    assert redis_command(redis, b"TYPE", b"gw:ro:state:shop") == b"+string\r\n"
    assert "WRONGTYPE" not in gw.log(), gw.log()[-2000:]
