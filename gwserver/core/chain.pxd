# Declarations for the compiled build of chain.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class Chain:
    cdef public object access_steps
    cdef public object claims_steps
    cdef public object finish_steps
    cdef public object identifiers
    cdef public object identifies
    cdef public object names
    cdef public object reply_steps
    cdef public object response_steps
    cdef public object steps
    cdef public object third_party

