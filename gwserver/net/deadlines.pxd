# Declarations for the compiled build of deadlines.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class WriteDeadline:
    cdef public object expire

cdef class Deadlines:
    cdef public dict _armed
    cdef public object _on_tick
    cdef public object _ticker
    cdef public object interval
    cdef public double now

    cpdef arm(self, owner, double seconds)
    cpdef disarm(self, owner)

