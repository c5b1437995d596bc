"""One cookie's value as every common upstream reads it, for limits keyed on ``cookie:NAME``.

Upstreams disagree on the Cookie header (each line below was checked against the parser):

- Go net/http: split at ";", the name trimmed, the first copy; quotes of a quoted value
  dropped; a value with '"' or '\\' is no cookie.
- PHP: split at ";", the name and value percent-decoded (the name also "+" as " ", cut at
  NUL, leading white space dropped, " " and "." read as "_"), the first copy.
- Node's cookie package (Express), Rack: the value percent-decoded (Rack "+" as " ").
- Python's SimpleCookie: a cookie also ends at white space (``a=1 sid=S`` holds sid), a
  quoted value ends at its closing quote and has backslash escapes (``"\\123"`` is "S"),
  the last copy; Django and Werkzeug unescape quoted values the same way.

A limit must count what the upstream reads, so a client cannot spell one session anew per
request (``%61bc``, ``"\\141bc"``, ``x=1 sid=abc`` after a junk sid) for a fresh bucket. The
value is read as the most decoding of them reads it (merging spellings only ever shares a
bucket), and a header where they would read different values of the cookie is refused.
"""
import functools
import re

from ..errors import BadRequest

# Python's \\s in ASCII mode and JavaScript's trim() within latin-1; "," splits cookies in
# RFC 2965 parsers (Jetty, Tomcat's legacy one).
_SPACE = b" \t\x0b\x0c\xa0"
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_UNSLASH = re.compile(rb"\\([0-3][0-7]{2}|.)", re.S)
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_PLAIN = re.compile(rb"[^" + re.escape(_SPACE) + rb'",\\]*')


def _decoded(raw):
    """%XX decoded, then "+" read as " " (Rack), so every spelling of one value is one."""
    return _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), raw).replace(b"+", b" ")


def _php_name(raw):
    name = _decoded(raw).split(b"\0")[0].lstrip(b" \t\n\r\x0b\x0c")
    return name.replace(b" ", b"_").replace(b".", b"_")


def _value(name, raw):
    """One copy's value: a token or one quoted string (unescaped), then percent-decoded."""
    raw = raw.strip(_SPACE)
    quoted = _QUOTED.fullmatch(raw)
    if quoted:
        raw = _UNSLASH.sub(lambda m: bytes([int(m.group(1), 8)]) if len(m.group(1)) == 3
                           else m.group(1), quoted.group(1))
    elif not _PLAIN.fullmatch(raw):
        raise BadRequest(f"the cookie {name.decode('latin-1')} has a value that upstreams "
                         f"read differently; a limit keyed on it needs one value")
    return _decoded(raw)


@functools.lru_cache(maxsize=256)
def _patterns(name):
    """Per cookie name, once: where another pair hides it, and the name as PHP reads it."""
    return (re.compile(rb"[" + re.escape(_SPACE) + rb",]" + re.escape(name) + rb"[ \t]*="),
            _php_name(name))


def one_cookie(header, name):
    """Cookie ``name``'s value in the Cookie ``header`` (bytes) as upstreams read it, or None.
    BadRequest where upstreams would read different values: two copies that differ (Go and
    PHP read the first, Python the last), the name hidden in another pair where Python or an
    RFC 2965 parser finds it, a value that is no token or quoted string."""
    if header is None:
        return None
    hidden, php = _patterns(name)
    found = None
    for pair in header.split(b";"):
        key, equals, value = pair.partition(b"=")
        key = key.strip(_SPACE)
        if hidden.search(pair.strip(_SPACE)):
            raise BadRequest(f"the cookie {name.decode('latin-1')} is hidden in another "
                             f"cookie; a limit keyed on it needs one value")
        if not equals or (key != name and _php_name(key) != php):
            continue
        value = _value(name, value)
        if found is not None and value != found:
            raise BadRequest(f"the cookie {name.decode('latin-1')} comes more than once; a "
                             f"limit keyed on it needs one value")
        found = value
    return found
