# Declarations for the compiled build of http1.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cimport cython
from ..core.context cimport RequestContext
from ..server.runtime cimport Runtime
from ..net.deadlines cimport WriteDeadline

cdef class ClientConnection:
    cdef public RequestContext current
    cdef public object answer_timeout
    cdef public object body_read
    cdef public object body_sent
    cdef public object body_timeout
    cdef public object body_waited
    cdef public object buf
    cdef public object client_ip
    cdef public Py_ssize_t field_limit
    cdef public Py_ssize_t fields_limit
    cdef public Py_ssize_t head_fields
    cdef public Py_ssize_t head_size
    cdef public object head_status
    cdef public object keepalive_enabled
    cdef public object last_host
    cdef public object last_host_parts
    cdef public object limits
    cdef public object parser
    cdef public object path_rules
    cdef public object queue
    cdef public object raw_body_left
    cdef public object raw_chunked
    cdef public Py_ssize_t requests
    cdef public Runtime runtime
    cdef public object scheme
    cdef public object settings
    cdef public object sock
    cdef public object timed_out
    cdef public object timeout_reason
    cdef public object trusted_peer
    cdef public object trusted_x_forwarded
    cdef public object underscores
    cdef public object unparsed
    cdef public object upgraded
    cdef public object view
    cdef public object wait_started
    cdef public WriteDeadline writing

    cpdef on_header(self, bytes name, bytes value)
    @cython.locals(req=RequestContext, hmap=dict)
    cpdef on_headers_complete(self)
    @cython.locals(req=RequestContext)
    cpdef on_url(self, url)
    cpdef handle(self, RequestContext req)
    cpdef write(self, data)
    cpdef write_head(self, status, data)
    cpdef recv(self, wait_first=*)
    cpdef feed(self, n)
    cpdef count_unparsed(self, n)
