"""What a worker lends to plugins, built after fork and handed to every request as
``ctx.services`` (plugins never build I/O clients themselves, nor find them in globals):

    limit_store   where rate-limit and breaker decisions are made: RedisStore with [redis],
                  else the local store
    local_store   the per-host store (the embedded default and the on_store_error=local fallback)
    metrics       the worker's WorkerMetrics, or None with metrics off
    consumers     core.consumers.Directory: the consumers this worker's table holds
    rollouts      helpers.rollouts.RolloutView: current rollout steps, and the answers counted
    path_rules    [server]'s (escaped_slashes, merge_slashes, path_parameters): what makes a
                  canonical path here, for the connections that read paths and the plugins
                  that make one (rewrite)
"""


STRICT_PATHS = ("reject", True, "reject")


class Services:
    __slots__ = ("limit_store", "local_store", "metrics", "consumers", "rollouts", "path_rules")

    def __init__(self, limit_store=None, local_store=None, metrics=None, consumers=None,
                 rollouts=None, path_rules=STRICT_PATHS):
        self.limit_store = limit_store
        self.local_store = local_store
        self.metrics = metrics
        self.consumers = consumers
        self.rollouts = rollouts
        self.path_rules = path_rules


NONE = Services()       # for contexts made outside a worker (unit tests of pure plugin logic)
