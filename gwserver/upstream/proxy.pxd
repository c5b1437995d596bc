# Declarations for the compiled build of proxy.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cimport cython
from ..core.context cimport RequestContext
from ..server.runtime cimport Runtime
from ..net.deadlines cimport Deadlines

cdef class Exchange:
    cdef public object block
    cdef public object chunked
    cdef public object chunks
    cdef public object complete
    cdef public object conn
    cdef public object content_length
    cdef public object final
    cdef public object got_bytes
    cdef public object head_done
    cdef public object head_raw
    cdef public object informational
    cdef public object keep_alive
    cdef public object parser
    cdef public object plain
    cdef public object reason
    cdef public object request_cut
    cdef public object sock
    cdef public object started
    cdef public object status
    cdef public object timed_out
    cdef public object version
    cdef public object via

cdef class Proxy:
    cdef public Runtime runtime
    cdef public Deadlines deadlines
    cdef public object _balancers
    cdef public object _budgets
    cdef public object budget_min_per_second
    cdef public object budget_percent
    cdef public object buf
    cdef public object h2
    cdef public object max_head
    cdef public object outstanding
    cdef public object pool_timeout
    cdef public object pools
    cdef public object refused
    cdef public object share
    cdef public object special_line
    cdef public object view

    cpdef forward(self, client, RequestContext req, keep_alive)
    cpdef attempt(self, client, RequestContext req, Exchange ex, target, body_held, policy)
    cpdef respond(self, client, RequestContext req, Exchange ex, keep_alive)
    cpdef request_head(self, RequestContext req, target)
    cpdef recv_feed(self, Exchange ex, timeout, wait_first=*)
    cpdef read_head(self, Exchange ex, read_timeout, per_try_timeout=*)
    cpdef response_head(self, RequestContext req, Exchange ex, keep_alive)
    cpdef relay_response(self, client, RequestContext req, Exchange ex, route, keep_alive)
    cpdef choose(self, upstream, tried, RequestContext req, now)
