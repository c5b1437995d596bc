"""The gunicorn worker class: gevent's StreamServer with gwserver's own HTTP/1.1 and HTTP/2.

gunicorn's ``GeventWorker`` gives us the master protocol (heartbeat, signals, parent watch,
graceful exit); its WSGI handling is replaced by ``ClientConnection`` (httptools parsing, direct
proxying), measured at several times the stock worker's throughput (docs/benchmarks.md). This
class only speaks gunicorn: listeners, signals, the drain. What requests need is the
``Runtime`` (server/runtime.py), built in ``serve()``, after fork, and handed to every
connection.
"""
import contextlib
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
import warnings

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

from .. import proctitle
from ..client.http1 import ClientConnection, render_error
from ..client.waiting import FirstByteWait, HandshakeWait, serve_counted, wait_first_byte
from ..errors import BadRequest, WorkerExit
from ..net.proxy_protocol import (ProxyHeaderError, ProxyHeaderNotStarted,
                                  proxy_header_refused, read_proxy_header)
from ..net.addresses import listener_addresses
from ..net.sockets import failure_reason, linger, out_of_files, peer_address
from ..processes import pid_alive
from ..core.throttledlog import throttled_log
from .runtime import Runtime

log = logging.getLogger("gwserver.worker")
DRAINING_MODE = stat.S_IRUSR     # of the heartbeat file, once the worker drains
QUICK_FLUSH_SECONDS = 0.5       # a worker stopped at once waits this long for Redis at most
PLAIN_HTTP_ANSWER = render_error(BadRequest("a plain HTTP request was sent to a TLS port: use "
                                            "https://"), keep_alive=False, request_id=None)


@contextlib.contextmanager
def entry_points_read_once():
    """gevent's patch_all asks importlib.metadata for its plugins' entry points at each of
    its 25 events, and each ask reads the metadata of every installed package again: 100 ms
    of a worker's boot (at each start and reload). Within this block they are read once;
    a plugin gevent would find is found the same."""
    from importlib import metadata
    asked = metadata.entry_points
    every = asked()
    metadata.entry_points = lambda **select: every.select(**select) if select else every
    try:
        yield
    finally:
        metadata.entry_points = asked


class AcceptPaused(Exception):
    """An accept that failed for want of a file descriptor, told by ``GatewayServer``:
    gevent's accept loop backs off on it as on any accept error, and the hub, which counts it
    among its NOT_ERRORs, prints no traceback for it."""


class GatewayServer(StreamServer):
    """gevent's StreamServer, with a worker out of file descriptors told in words. Every
    failed accept went to the hub's error printer: a traceback and the server's repr once a
    second per listener for as long as the worker was at its limit, the cause nowhere in
    sight. Now one line when accepts start failing, one when they work again, and one a
    minute between; the connections wait in the listen backlog meanwhile."""

    REMIND_EVERY = 60.0     # seconds between lines while accepts keep failing

    out_of_files_since = None   # (monotonic time) of the episode's first failed accept
    refused = 0                 # accepts failed in this episode
    reminded_at = 0.0

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as error:
            if not out_of_files(error):
                raise
            self.tell_out_of_files(error)
            raise AcceptPaused(str(error)) from error
        if accepted and self.out_of_files_since is not None:
            log.warning("%s: accepting connections again after %.1f s out of file "
                        "descriptors (%d accepts put off)", self.where(),
                        time.monotonic() - self.out_of_files_since, self.refused)
            self.out_of_files_since = None
        return accepted

    def tell_out_of_files(self, error):
        now = time.monotonic()
        if self.out_of_files_since is None:
            self.out_of_files_since, self.refused = now, 0
        elif now - self.reminded_at < self.REMIND_EVERY:
            self.refused += 1
            return
        self.refused += 1
        self.reminded_at = now
        log.warning("%s: cannot accept connections: %s (this worker's open-file limit is %s); "
                    "new clients wait in the listen backlog until descriptors free up: raise "
                    "LimitNOFILE or lower server.worker_connections", self.where(),
                    failure_reason(error), open_file_limit())

    def where(self):
        address = self.address
        return address if isinstance(address, str) else "%s:%s" % tuple(address[:2])


def open_file_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def answer_plain_http(runtime, sock):
    """A plain HTTP request on a TLS listener gets a 400 in clear that says so (nginx's "The
    plain HTTP request was sent to HTTPS port"): a bare close left the client (curl
    http://host:443/) an empty reply or a reset to guess from. The rest of its request is
    read and dropped meanwhile (net.sockets.linger), or the close would reset the answer
    away. The answer fits any fresh socket's buffer: a send that cannot take it is given
    up on, never waited for."""
    try:
        sock._sock.send(PLAIN_HTTP_ANSWER)
    except OSError:
        return
    linger(sock, runtime.client_buf, runtime.deadlines, FirstByteWait(sock))


def read_header_when_sent(runtime, sock, addr, timeout):
    """The PROXY header of a trusted balancer's connection (read_proxy_header), within
    ``timeout``; until its first byte the connection is an idle one (client.waiting). An AWS
    NLB sends the header with the client's first bytes, not at its connect: a client that
    connected through it and sent nothing held a pool slot here for header_timeout,
    counted nowhere, and worker_connections of them locked every new client out, as
    silence on a TLS listener once did. The slot is given back once the header is read:
    the handler that serves the connection takes its own."""
    started = time.monotonic()
    if not wait_first_byte(runtime, sock, timeout):
        raise ProxyHeaderError("sent nothing within server.header_timeout (or its slot went "
                               "to a newcomer)")
    try:
        with gevent.Timeout(max(0.0, started + timeout - time.monotonic()),
                            ProxyHeaderError("no header within server.header_timeout")):
            return read_proxy_header(sock, addr)
    finally:
        runtime.client_closed()


def sync_said(status_path, sync_pid=None):
    """What the live sync process of this runtime_dir says in its status.json: "lost" (etcd
    failed it: what is published, if anything, is all there is), "own" (it published a table
    of its own making, from etcd or its snapshot), or None. With ``sync_pid`` (the one the
    master ran when it forked this worker), only that process's word counts: a status.json
    of a process that has gone, or that a sync process replaced by a reload wrote, says
    nothing."""
    from ..sync.shm import read_json
    status = read_json(status_path)
    if not isinstance(status, dict):
        return None             # (JSON of another shape: not the sync process's word)
    pid = status.get("pid")
    if not isinstance(pid, int) or (sync_pid is not None and pid != sync_pid) or \
            not pid_alive(pid):
        return None
    return "lost" if status.get("lost") else "own" if status.get("own_table") else None


def _only_redis_asyncio_unpatched(warning):
    """True for gevent's warning that ssl was imported before patching when the only
    modules it names as left unpatched are redis.asyncio's (see GatewayWorker.patch)."""
    from gevent.monkey import MonkeyPatchWarning
    text = str(warning.message)
    if not issubclass(warning.category, MonkeyPatchWarning) or "Subclasses" in text or \
            "Modules that had direct imports" not in text:
        return False
    names = re.findall(r"'([\w.]+) \(", text.partition("Modules that had direct imports")[2])
    return bool(names) and all(n.startswith("redis.asyncio.") for n in names)


class GatewayWorker(GeventWorker):
    reopen_wanted = False       # a SIGUSR1 came (handle_usr1)
    servers = ()                # the listeners' StreamServers, once serve() started them
    orphaned = False            # the master died (notify saw another parent)
    quitting = False            # a quick stop (SIGQUIT, SIGINT) is under way (handle_quit)

    def init_process(self):
        # The instance locks came with the fork (they go with the last process of the
        # instance, server/instance.py): keep only those of this worker's configuration.
        lock = getattr(self.app, "instance_lock", None)
        if lock is not None:
            from .instance import lock_paths
            lock.drop_copies(lock_paths(self.app.conf))
        super().init_process()

    def patch(self):
        # With [redis], the master imported redis-py to check the URL, and redis-py imports
        # redis.asyncio, whose connection module holds ssl.SSLContext by name: gevent's
        # patch_all then printed a MonkeyPatchWarning ("may lead to errors, including
        # RecursionError ...") at every worker's start, in the journal of every gateway with
        # [redis]. Workers never use redis.asyncio (the store is redis-py's sync client), so
        # that warning alone is dropped; any other is shown as it was.
        with warnings.catch_warnings(record=True) as caught, entry_points_read_once():
            warnings.simplefilter("always")
            super().patch()
        for warning in caught:
            if not _only_redis_asyncio_unpatched(warning):
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno)

    def init_signals(self):
        super().init_signals()
        # gunicorn resets SIGHUP to its default (terminate) in workers, so `systemctl kill -s HUP`
        # on the whole cgroup would kill them mid-request. Only the master reloads.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # The master blocked the stop signals across fork (GatewayArbiter.spawn_worker): with
        # our handlers in place, deliver any that arrived meanwhile.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGQUIT,
                                                    signal.SIGINT})

    # Every stop signal tells the runtime too: answers from then on say Connection: close,
    # /-/ready says draining and HTTP/2 clients get GOAWAY, whether the worker drains
    # (SIGTERM) or exits at once (SIGQUIT, SIGINT, the master's abort).

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.stop_runtime()

    def handle_quit(self, sig, frame):
        self.stop_runtime()
        # Ctrl-C in a terminal signals the whole process group: the worker gets SIGINT and
        # then the master's SIGQUIT. A second exit raised inside the first one's shutdown
        # and wrote a traceback to the log; one quick exit is enough.
        if self.quitting:
            return
        self.quitting = True
        # gunicorn's gevent worker exits in a greenlet (out of the signal handler, where
        # logging's locks could deadlock); the logs are flushed there first, or the access
        # lines of the last 50 ms and what the log throttle left out would be lost.
        gevent.spawn(self.quit, sig, frame)

    def quit(self, sig, frame):
        """gunicorn's Worker.handle_quit (answers given in its 0.1 s say Connection: close,
        then the exit), with what the worker still holds cut first, each connection's
        greenlet killed, so that the access lines of those requests (the status and bytes
        their clients got) are in the last flush: they were left out, as if never asked."""
        self.alive = False
        self.cfg.worker_int(self)
        gevent.sleep(0.1)
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            held = sum(server.pool.size - server.pool.free_count() for server in self.servers)
            name = signal.Signals(sig).name
            if held:
                log.warning("stopping at once (%s): cutting off remaining connections (%d)",
                            name, held)
            runtime.cut_because = f"the worker stopped at once ({name})"
            for server in self.servers:
                server.stop(timeout=0)
            # The cut requests' limit_conn releases, or their slots stayed taken in Redis
            # for lease_seconds (a reload storm's oldest generation is stopped so). Half a
            # second at most: the master's SIGKILL comes at graceful_timeout (1 s or more),
            # and the logs are flushed after it.
            runtime.send_last_state(QUICK_FLUSH_SECONDS)
            runtime.flush_logs()
        sys.exit(0)

    def handle_abort(self, sig, frame):
        """gunicorn's (the master's SIGABRT for a worker silent past server.timeout), its
        exit a WorkerExit: raised in the greenlet the signal found, a plugin's phase stuck in
        a loop, where a plugin's own sys.exit() is a 500."""
        self.stop_runtime()
        self.alive = False
        self.cfg.worker_abort(self)
        raise WorkerExit(1)

    def handle_usr1(self, sig, frame):
        """The master passes SIGUSR1 on (logrotate's postrotate): the access log is reopened
        at its next flush, outside the signal handler."""
        super().handle_usr1(sig, frame)
        self.reopen_wanted = True       # (before serve() built the runtime, serve() looks)
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.access.reopen_wanted = True

    def notify(self):
        """The heartbeat, and gunicorn's watch on the master, which once it saw another
        parent did sys.exit(0) then and there: a master killed -9 (the OOM killer) took every
        request its workers served with it, cut with no access line. Now the worker drains as
        on a SIGTERM, within graceful_timeout; its listeners and its copies of the instance
        locks go at once, so a master started again meanwhile binds the ports and takes the
        locks as promised (docs/operations.md, 'Several instances on one host')."""
        super(GeventWorker, self).notify()      # (the heartbeat alone: not gunicorn's exit)
        if self.orphaned or self.ppid == os.getppid():
            return
        self.orphaned = True
        log.warning("the master (pid %s) died: draining what this worker serves (up to "
                    "server.graceful_timeout, %gs), then exiting", self.ppid,
                    self.conf.server["graceful_timeout"])
        self.alive = False
        for server in self.servers:
            server.close()              # (a new master may be binding these ports)
        for listener in self.sockets:   # (before serve() made servers of them)
            listener.close()
        lock = getattr(self.app, "instance_lock", None)
        if lock is not None:
            lock.drop_copies({})
        self.metrics_of_its_own()
        self.stop_runtime()

    @staticmethod
    def metrics_of_its_own():
        """An orphan's metrics go to a directory of its own, read by no one: a master started
        meanwhile removes the dead one's (metrics.private_dir; a conf's metrics_dir is made
        anew), and every metric file the worker had not opened yet then failed its request's
        end with a FileNotFoundError. Named as a master's, by this pid: removed at exit, or
        by the next master's start once this worker is gone."""
        from . import metrics
        shared = os.environ.get(metrics.ENV)
        if not shared:
            return
        import atexit
        import shutil
        from ..processes import own_dir
        try:
            # (sweep=False: the dead master's directory is still its siblings', who have
            # not all noticed; a master's start removes it once they are gone)
            own = own_dir(metrics.PRIVATE_PREFIX, os.path.dirname(os.path.abspath(shared)),
                          sweep=False)
        except OSError:
            return
        atexit.register(shutil.rmtree, own, ignore_errors=True)
        os.environ[metrics.ENV] = own

    def stop_runtime(self):
        runtime = getattr(self, "runtime", None)     # None before serve() built it
        if runtime is not None:
            runtime.stop()      # Event.set() only schedules the wake-up: safe in a handler

    def load_wsgi(self):
        self.wsgi = None        # not a WSGI server: requests are handled by ClientConnection

    def run(self):
        if "GWSERVER_PROFILE" in os.environ or "GWSERVER_COUNT_BYTECODES" in os.environ:
            from .profiling import run_measured     # opt-in: the benchmarks' "where"
            return run_measured(self.serve)
        return self.serve()

    def serve(self):
        self.conf = self.app.conf
        self.runtime = runtime = Runtime(self.conf, self.worker_connections,
                                              self.app.tls_server)
        if self.reopen_wanted:
            # A SIGUSR1 while the runtime was built (its access log opened first) found no
            # runtime: the file it opened may be the one logrotate just moved.
            runtime.access.reopen_wanted = True
        if runtime.table_reader is not None:
            self.wait_for_table(runtime)
        runtime.deadlines.start()
        hub = gevent.get_hub()
        hub.NOT_ERROR = (*hub.NOT_ERROR, AcceptPaused)      # GatewayServer logs its own
        self.servers = servers = []
        admin_bind = self.conf.admin["bind"]
        admin_addresses = listener_addresses([admin_bind] if admin_bind else ())
        admin_path = admin_bind[len("unix:"):] if admin_bind.startswith("unix:") else None
        tls_addresses = listener_addresses(self.conf.tls["bind"] if self.conf.tls else ())
        from ..client.h2server import h2c_addresses
        h2c = h2c_addresses(self.conf)
        addresses = {tuple(listener.getsockname()[:2]) for listener in self.sockets
                     if listener.family != socket.AF_UNIX}
        proxied = set()
        for bind in self.conf.server["proxy_protocol"]:
            resolved = listener_addresses([bind])
            if not resolved & addresses:
                # It would serve plain HTTP to anyone, naming clients by their own headers.
                raise RuntimeError(f"server.proxy_protocol: no listener is {bind}; "
                                   f"refusing to serve")
            proxied |= resolved
        for listener in self.sockets:
            listener.setblocking(1)
            if listener.family == socket.AF_UNIX:
                # (its name is its path; two characters of it made no address of any bind)
                address = listener.getsockname()
                is_admin = address == admin_path
            else:
                # Resolved as gunicorn bound it: "localhost:9901" compared as text matched
                # no listener, and the admin port served traffic, the token sent upstream.
                address = tuple(listener.getsockname()[:2])
                is_admin = address in admin_addresses
            handle = self.handle_admin if is_admin else \
                self.handle_tls_client if address in tls_addresses else \
                self.handle_h2c_client if address in h2c else self.handle_client
            if address in proxied:
                handle = self.after_proxy_header(handle)
            server = GatewayServer(listener, spawn=Pool(self.worker_connections), handle=handle)
            if self.cfg.workers > 1:
                server.max_accept = 1   # spread accepts over workers, as gunicorn does
            server.start()
            servers.append(server)
        proctitle.set_title(self.conf.server["proc_name"], "worker")      # serving from now
        while self.alive and runtime.alive:
            self.notify()
            runtime.update_gauges()
            runtime.stopping.wait(1.0)
        runtime.alive = False           # answers from now on say Connection: close
        self.tell_master_draining()
        self.drain(servers)

    TABLE_WAIT = 5.0        # seconds a worker waits for the sync process's first table

    def wait_for_table(self, runtime):
        """etcd mode: listen once the sync process has published a table, or has said it has
        none (etcd down, no snapshot: its status.json says "lost"), within TABLE_WAIT. The master
        lets the old workers go once the new ones heartbeat, which they do once they listen:
        after a reload that moved [etcd] runtime_dir or prefix, the new workers served the
        conf file's routes alone (404 for every etcd route) until the new sync process
        published. No heartbeat meanwhile, so the old ones serve on; half gunicorn's timeout
        (self.timeout) at most, so the master does not take the silence for a hang."""
        from ..sync.shm import STATUS
        reader = runtime.table_reader
        status = os.path.join(reader.runtime_dir, STATUS)
        wait = min(self.TABLE_WAIT, self.timeout)
        deadline = time.monotonic() + wait
        # The sync process of this configuration (None: not known). One a reload started
        # again (a changed [etcd], static items, [plugins] ...) first takes up the table its
        # predecessor published, compiled beside the previous conf file: listening with that,
        # a route moved from the conf file into etcd was a 404 (refused in it for its static
        # id) until the new process published, a second later, and the old workers were let
        # go meanwhile. So its own table is waited for (or its word that etcd failed it).
        sync_pid = getattr(self.app, "sync_pid", None)
        while time.monotonic() < deadline:
            # (one that died meanwhile has nothing more to say: what is published serves)
            waited = sync_pid if sync_pid is not None and pid_alive(sync_pid) else None
            said = sync_said(status, waited)        # before the counter: what it published
            if reader.changed():
                runtime.refresh_table()
            if said == "lost" or (reader.generation and (said or waited is None)):
                return
            time.sleep(0.05)
        if reader.generation:
            log.warning("the sync process in %s has not published a table of its own after "
                        "%.1f s: serving the one published before it (generation %d) until "
                        "it does", reader.runtime_dir, wait, reader.generation)
        else:
            log.warning("no route table from the sync process in %s after %.1f s: serving "
                        "the conf file's routes until one comes", reader.runtime_dir, wait)

    def tell_master_draining(self):
        """Mark the heartbeat file read-only: a worker that stops on its own (max_requests)
        is replaced at once, not once it has drained (a long download can take all of
        graceful_timeout, with one worker less meanwhile). The master reads the mode with
        the mtime it already reads (GatewayArbiter.draining_on_its_own); gunicorn itself
        once beat its heartbeat with fchmod."""
        try:
            os.fchmod(self.tmp.fileno(), DRAINING_MODE)
        except OSError:
            pass

    def drain(self, servers):
        """Stop accepting and let every connection finish, within graceful_timeout.

        Idle keep-alive connections are not cut: a client may be sending its next request at
        that very moment, and would see a reset. Each gets one more request, answered with
        ``Connection: close``, or reaches its ordinary keep-alive timeout.
        """
        for server in servers:
            server.close()
        # The conf's value: gunicorn's cfg holds it rounded up to whole seconds (the master's
        # kill comes after that, and 3 s more), and a graceful_timeout of 0.5 drained for 1 s
        # and was logged as "(1s)", a value nobody set
        graceful_timeout = self.conf.server["graceful_timeout"]
        deadline = time.monotonic() + graceful_timeout
        while time.monotonic() < deadline:
            if all(server.pool.free_count() == server.pool.size for server in servers):
                break
            self.notify()
            gevent.sleep(0.05)
        else:
            held = sum(server.pool.size - server.pool.free_count() for server in servers)
            log.warning("graceful timeout (%gs): cutting off remaining connections (%d)",
                        graceful_timeout, held)
            why = "the master died" if self.orphaned else "the worker stopped"
            self.runtime.cut_because = (f"{why} and server.graceful_timeout "
                                        f"({graceful_timeout:g}s) ran out")
            for server in servers:
                server.stop(timeout=1)
        self.runtime.close()

    def handle_admin(self, sock, addr):
        from .admin import AdminConnection
        try:
            AdminConnection(self.runtime, sock, addr).serve()
        except Exception:
            log.exception("unhandled error on the admin listener")
            sock.close()

    def after_proxy_header(self, handle):
        """A PROXY protocol listener: from a trusted balancer, the header (within
        header_timeout) names the client ``handle`` then serves; anything else is closed."""
        runtime = self.runtime
        trusted = runtime.trusted_proxies
        timeout = self.conf.server["header_timeout"]

        def handle_proxied(sock, addr):
            peer = peer_address(addr)
            kind = "proxy-protocol untrusted"
            try:
                if not trusted.trusts(peer):
                    raise ProxyHeaderError(f"{peer} is not in server.trusted_proxies")
                kind = "proxy-protocol header"
                client = read_header_when_sent(runtime, sock, addr, timeout)
            except (ProxyHeaderError, OSError) as exc:
                # A balancer's plain TCP health check connects and closes: not worth a line.
                quiet = isinstance(exc, ProxyHeaderNotStarted)
                throttled_log.log(log, logging.DEBUG if quiet else logging.INFO, kind,
                                  "PROXY protocol connection from %s refused: %s", peer, exc)
                sock.close()
                return
            handle(sock, client)
        return handle_proxied

    def handle_tls_client(self, sock, addr):
        """TLS listener: handshake (bounded by handshake_timeout), then HTTP/1.1 as usual."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # before the handshake
        timeout = self.conf.tls["handshake_timeout"]
        started = time.monotonic()
        # Until its ClientHello begins, the connection is an idle one (client.waiting).
        if not wait_first_byte(self.runtime, sock, timeout):
            sock.close()
            return
        # Until it ends, the handshake may be closed for a newcomer as a slow head is
        handshake = HandshakeWait(sock, addr[0] if addr else "?")
        self.runtime.head_readers[handshake] = time.monotonic()
        try:
            tls = self.runtime.tls_server.wrap(sock)
            tls.proxy_refused = proxy_header_refused(addr)
            with gevent.Timeout(max(0.0, started + timeout - time.monotonic())):
                tls.do_handshake()
        except (OSError, gevent.Timeout) as exc:
            from ..client.tls import ClosedBeforeHello, PlainHTTPRequest
            if handshake.timeout_reason:
                exc = handshake.timeout_reason
            elif isinstance(exc, gevent.Timeout):
                # (its own text is the seconds left after the first byte: "failed: 1.49 seconds")
                exc = f"no handshake within tls.handshake_timeout ({timeout:g} s)"
            quiet = isinstance(exc, ClosedBeforeHello)      # (its own key: no line taken)
            throttled_log.log(log, logging.DEBUG if quiet else logging.INFO,
                              "tls closed" if quiet else "tls handshake",
                              "TLS handshake with %s failed: %s", addr[0] if addr else "?",
                              exc or "timed out")
            if isinstance(exc, PlainHTTPRequest):
                answer_plain_http(self.runtime, sock)
            sock.close()
            self.runtime.client_closed()
            return
        except BaseException:
            self.runtime.client_closed()
            raise
        finally:
            self.runtime.head_readers.pop(handshake, None)
        try:
            if tls.alpn == b"h2":
                from ..client.h2server import H2ServerConnection
                serve_counted(H2ServerConnection, self.runtime, tls, addr, scheme="https")
            else:
                serve_counted(ClientConnection, self.runtime, tls, addr, scheme="https")
        except Exception as exc:    # a bug in one connection must never take the worker down
            throttled_log.log(log, logging.ERROR, "unhandled connection error",
                              "unhandled error serving %s", addr, exc_info=exc)
            sock.close()

    def handle_h2c_client(self, sock, addr):
        """A plain listener with h2c on: the HTTP/2 preface or HTTP/1.1 (client.h2server)."""
        from ..client.h2server import serve_h2c_or_http1
        try:
            serve_h2c_or_http1(self.runtime, sock, addr)
        except Exception as exc:    # a bug in one connection must never take the worker down
            throttled_log.log(log, logging.ERROR, "unhandled connection error",
                              "unhandled error serving %s", addr, exc_info=exc)
            sock.close()

    def handle_client(self, sock, addr):
        try:
            ClientConnection(self.runtime, sock, addr).serve()
        except Exception as exc:    # a bug in one connection must never take the worker down
            throttled_log.log(log, logging.ERROR, "unhandled connection error",
                              "unhandled error serving %s", addr, exc_info=exc)
            try:
                sock.close()
            except OSError:
                pass
