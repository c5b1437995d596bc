"""Secrets out of what the gateway shows: ``gwserver check --dump`` and the admin views.

A value is masked when its key names a secret (the admin token, jwt secrets, the etcd
password, ...), and a URL keeps everything but the password of its user part (a Redis URL's
``redis://:pw@host`` shows as ``redis://:***@host``), as nginx -T does not but Kong's admin API
and APISIX's do for their credentials.
"""
import re

MASK = "***"
SECRET_KEYS = frozenset(["token", "password", "secret", "client_secret", "private_key",
                         "api_key"])
URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)[^/@]*(?P<tail>@)", re.I)


def redact(value, key=None):
    """A copy of ``value`` (dicts, lists, scalars) with secrets masked; anything else that is
    not plain data (compiled patterns, keys, sets) becomes a list or its ``str``."""
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [redact(v, key) for v in items]
    if key in SECRET_KEYS and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
