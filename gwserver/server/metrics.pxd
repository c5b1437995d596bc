# Declarations for the compiled build of metrics.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
cdef class _Series:
    cdef public object buckets
    cdef public object children
    cdef public object count
    cdef public object pushed
    cdef public object total
    cdef public object up_buckets
    cdef public object up_total

cdef class WorkerMetrics:
    cdef public object _answers
    cdef public object _breakers
    cdef public object _consumers
    cdef public object _faults
    cdef public object _limits
    cdef public object _rates
    cdef public object _redis_up
    cdef public object _series
    cdef public object access_log_lost
    cdef public object breaker
    cdef public object breaker_transitions
    cdef public object connections_opened
    cdef public object consumer_requests
    cdef public object duration
    cdef public object ejections
    cdef public object faults
    cdef public object gateway_answers
    cdef public object generation
    cdef public object in_flight
    cdef public object limits
    cdef public object pool_idle
    cdef public object rates
    cdef public object requests
    cdef public object retries
    cdef public object target_up
    cdef public object upstream_duration

