# Declarations for the compiled build of router.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class _Node:
    cdef public object catchall
    cdef public object catchall_name
    cdef public object exact
    cdef public object param
    cdef public object param_name
    cdef public object param_owner
    cdef public object param_users
    cdef public object prefix
    cdef public object static

cdef class Router:
    cdef public object _matches
    cdef public object _placed
    cdef public object _root
    cdef public object claim_routes
    cdef public object conditional
    cdef public object routes

