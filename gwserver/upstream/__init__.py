"""The upstream side: keep-alive pools, target choice and retries, the HTTP/1.1 and HTTP/2 upstream
wire.
"""
