# Declarations for the compiled build of context.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class RequestContext:
    cdef public object method
    cdef public object path
    cdef public object query
    cdef public object headers
    cdef public object header_map
    cdef public object host
    cdef public object host_header
    cdef public object services
    cdef public object client_ip
    cdef public object peer_ip
    cdef public object scheme
    cdef public object request_id
    cdef public object route
    cdef public object params
    cdef public object _vars
    cdef public object ended_by
    cdef public object error
    cdef public object cut
    cdef public object trace
    cdef public object upstream
    cdef public object url
    cdef public object version
    cdef public object keep_alive
    cdef public object upgrade
    cdef public object upgrade_tail
    cdef public object head_done
    cdef public object complete
    cdef public object body
    cdef public object body_size
    cdef public object content_length
    cdef public object chunked
    cdef public object host_count
    cdef public object connection_tokens
    cdef public object upstream_seconds
    cdef public object attempts
    cdef public object sent
    cdef public object target
    cdef public object started
    cdef public object upstream_host_header
    cdef public object consumer
    cdef public object chain
