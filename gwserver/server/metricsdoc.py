"""``python -m gwserver.server.metricsdoc [--write]``: the metrics table of docs/operations.md,
made from the catalogue in metrics.py (printed, or written into the file). Its own module:
metrics.py is compiled (docs/architecture.md), and a compiled module cannot run with -m."""
import sys

from .metrics import main

if __name__ == "__main__":
    sys.exit(main())
