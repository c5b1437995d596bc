"""Thin I/O edges: the gunicorn app and worker, client and upstream HTTP/1.1, pools, deadlines."""
