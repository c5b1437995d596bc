"""Config sync: the etcd client, the one-per-host watcher, and the shared-memory table workers
read.
"""
