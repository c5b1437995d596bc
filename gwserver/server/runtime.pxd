# Declarations for the compiled build of runtime.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
from ..core.context cimport RequestContext
from ..net.deadlines cimport Deadlines

cdef class AccessLog:
    cdef public object _clock_second
    cdef public object _clock_text
    cdef public object _clock_tick
    cdef public object _tick_text
    cdef public object count_lost
    cdef public object enabled
    cdef public object failing
    cdef public object fd
    cdef public object fields
    cdef public object json
    cdef public object lost
    cdef public object path
    cdef public object pending
    cdef public object reopen_wanted

    cpdef request(self, RequestContext req, status, sent, upstream, start)

cdef class Runtime:
    cdef public object access
    cdef public object admin_auth_failures
    cdef public object alive
    cdef public object body_readers
    cdef public object client_buf
    cdef public object client_view
    cdef public object conf
    cdef public Deadlines deadlines
    cdef public object emit_b3
    cdef public object handled
    cdef public object health
    cdef public object http2_listeners
    cdef public object idle_clients
    cdef public object in_flight
    cdef public object max_requests
    cdef public object metrics
    cdef public object min_body_rate
    cdef public object open_clients
    cdef public object passive
    cdef public object pools_checked
    cdef public object pools_pruned_at
    cdef public object proxy
    cdef public object request_id_prefix
    cdef public object request_ids
    cdef public object router
    cdef public object send_timeout
    cdef public object services
    cdef public object settings
    cdef public object span_exporter
    cdef public object stopping
    cdef public object table
    cdef public object table_reader
    cdef public object tls_server
    cdef public object trace_ids
    cdef public object trace_response_header
    cdef public object tracing
    cdef public object trusted_proxies
    cdef public object upstream_buf
    cdef public object upstream_view
    cdef public object via
    cdef public object worker_connections

