"""What a plugin sees of a request, and what it may return.

Headers travel as lists of ``(name, value)`` bytes pairs, exactly as the client sent them (case
and order kept, repeats kept); ``header_map`` is a lower-case name -> last value view for lookups.
"""
import json


class Reply:
    """A response the gateway writes itself (a plugin ending the request, or an error)."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status, body=b"", headers=()):
        self.status = status
        self.body = body
        self.headers = list(headers)

    @classmethod
    def json(cls, status, payload, headers=()):
        body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, [("Content-Type", "application/json")] + list(headers))


def _enc(text):
    return text.encode("latin-1") if isinstance(text, str) else text


def set_header(headers, name, value):
    """Replace every ``name`` header in a list of (bytes, bytes) pairs by one with ``value``."""
    remove_header(headers, name)
    headers.append((_enc(name), _enc(value)))


def remove_header(headers, name):
    lower = _enc(name).lower()
    headers[:] = [(k, v) for k, v in headers if k.lower() != lower]


class RequestContext:
    """One request as it moves through the plugin chain to the proxy step."""

    __slots__ = ("method", "path", "query", "headers", "header_map", "host", "client_ip",
                 "scheme", "request_id", "route", "params", "vars", "ended_by", "upstream_path")

    def __init__(self, method, path, query, headers, header_map, host, client_ip, scheme,
                 request_id):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.header_map = header_map
        self.host = host
        self.client_ip = client_ip
        self.scheme = scheme
        self.request_id = request_id
        self.route = None
        self.params = None
        self.vars = {}
        self.ended_by = None
        self.upstream_path = path

    def header(self, name):
        value = self.header_map.get(_enc(name).lower())
        return None if value is None else value.decode("latin-1")

    def set_header(self, name, value):
        set_header(self.headers, name, value)
        self.header_map[_enc(name).lower()] = _enc(value)

    def remove_header(self, name):
        remove_header(self.headers, name)
        self.header_map.pop(_enc(name).lower(), None)


class ResponseHead:
    """The upstream's status and headers, editable by plugins before the client sees them."""

    __slots__ = ("status", "headers")

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers

    def set_header(self, name, value):
        set_header(self.headers, name, value)

    def remove_header(self, name):
        remove_header(self.headers, name)
