"""The processes: the gunicorn app and master hooks, the worker, listeners, the admin API, metrics
and trace export.
"""
