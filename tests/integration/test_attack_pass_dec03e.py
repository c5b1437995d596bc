"""Attack pass (Dec 03, reloads and restarts that keep the truth), against real processes.
Each defect below is shown by a test that failed on 9af5f3a and passes with its fix.

1. The route table's generation counter (``runtime_dir/generation``) truncated while the
   gateway runs (by hand, a cleanup script): every worker had it mmap'd and died of SIGBUS
   on its next request (the request cut unanswered), the sync process too at its next
   publication, and the workers started in their place could not map it and served the
   conf file's routes alone (404 for every etcd route) until the sync process came back.
"""
import os
import signal

from ..conftest import wait_until
from .test_etcd import _is_worker, all_workers_at, put, runtime_of, serves, serving


def worker_pids(gw):
    return sorted(p for p in gw.worker_pids() if _is_worker(p))


# -- 1. a truncated generation counter --------------------------------------------------------

def test_a_truncated_generation_counter_kills_no_worker_and_drops_no_route(
        launcher, upstream, tmp_path):
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    workers = worker_pids(gw)
    sync = [p for p in gw.worker_pids() if p not in workers]
    counter = os.path.join(runtime_of(gw), "generation")
    os.truncate(counter, 0)
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    assert worker_pids(gw) == workers                 # none died
    os.kill(workers[0], signal.SIGKILL)                 # its replacement starts meanwhile
    wait_until(lambda: len(worker_pids(gw)) == 2 and workers[0] not in worker_pids(gw))
    wait_until(lambda: all_workers_at(gw, 1))
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r2") == 200 and os.path.getsize(counter) == 8
    assert all(p in gw.worker_pids() for p in sync)    # the helpers lived through it too
    assert "is damaged (not 8 bytes)" in gw.log() and "signal 7" not in gw.log()
