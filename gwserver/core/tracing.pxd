# Declarations for the compiled build of tracing.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class TraceContext:
    cdef public object b3
    cdef public object parent_id
    cdef public object sampled
    cdef public object span_id
    cdef public object trace_id
    cdef public object tracestate

