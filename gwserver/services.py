"""What a worker lends to plugins after fork (plugins never build I/O clients themselves).

    limit_store   where rate-limit decisions are made: RedisStore with [redis], else local
    local_store   the per-host store (embedded default and the on_store_error=local fallback)
    metrics       the worker's WorkerMetrics, or None

The worker sets these in GatewayWorker.setup_after_fork; tests may set them directly.
"""
limit_store = None
local_store = None
metrics = None
