"""Helper processes the master keeps alive across reloads: active health checks, rollouts, OCSP
stapling.
"""
