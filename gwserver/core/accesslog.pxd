# Declarations for the compiled build of accesslog.py (docs/architecture.md, "The compiled
# build"). The .py is the code, and runs as it is without a build; this file only gives each
# attribute a slot and the hot functions their argument types. Every attribute the .py
# assigns is declared here (tests/unit/test_compiled.py checks it).
from .context cimport RequestContext

cpdef capture_default(RequestContext req, status, sent, upstream, elapsed_ms)
