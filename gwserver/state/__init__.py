"""Shared state: rate-limit, breaker and connection stores (per host or in Redis), passive health
shared between workers, rollout state.
"""
