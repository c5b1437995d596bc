"""Socket primitives both sides share: non-blocking send/recv on gevent, and the deadline ticker."""
