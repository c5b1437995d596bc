"""Secrets out of what the gateway shows: ``gwserver check --dump`` and the admin views.

A value is masked when its key names a secret (the admin token, jwt secrets, the etcd
password, ...) or a header that carries one (Authorization, X-Api-Key, Cookie), and a URL
keeps everything but the password of its user part (a Redis URL's ``redis://:pw@host`` shows
as ``redis://:***@host``; a user without a password, a token, goes whole), as nginx -T does
not but Kong's admin API and APISIX's do for their credentials.
"""
import functools
import re
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, unquote_plus

MASK = "***"
SECRET_KEYS = frozenset(["token", "password", "secret", "client_secret", "private_key",
                         "api_key"])
# Header names whose values are credentials (a headers plugin that sets Authorization for
# the upstream, a route matching on X-Api-Key): masked by name, as keys above are. "-key" at
# the end and "auth" anywhere take the vendors' own (Cloudflare's X-Auth-Key, Azure's
# Ocp-Apim-Subscription-Key and X-Functions-Key); config fields are spelled with "_".
# "accesskey" and "assertion" take those spelt as one word (AccessKey) and signed tokens
# passed on by name (Google IAP's X-Goog-Iap-Jwt-Assertion, OAuth's client assertion).
SECRET_HEADER = re.compile(r"auth|token|secret|passw|api[-_]?key|access[-_]?key|-key$|cookie|"
                           r"credential|session|signature|assertion|jwt", re.I)
# A URL's user part runs to the last "@" of its authority (before any "/", "?" or "#"), where
# urlparse (redis-py) splits it: a password may hold "@", quotes or a space. Masked to the
# first "@" only, "redis://:hunter@2@host" showed "2".
URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)[^/?#]*(?P<tail>@)", re.I)
# The whole user part of a URL that is a value of its own, to that last "@".
URL_VALUE_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#]*@", re.I)
# The whole user part of a URL anywhere in a text (an error quoting a value, a log line):
# "https://token@collector" holds a secret without a colon; to the last "@" before white
# space (a quoted value is masked before it is quoted: schema.show).
URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.I)
# A user part that holds a "/", "?" or "#" unencoded ("https://us/er:pass@host"): urlparse
# reads it as host and path, the operator as a user and password (a redis URL's is read by
# redis_url_parts). Anything shaped "x:y" before the last "@" (before white space) goes,
# an "@" before the "/" too ("redis+sentinel://:ab@cd/ef@h1,h2/m": password "ab@cd/ef").
URL_LAX_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?=[^\s/?#]*[/?#][^\s]*@)"
                              r"(?=[^\s@]*:)[^\s]*@", re.I)
# The options redis-py reads from a URL's query. A query made of them alone is no piece of
# a password: its values may hold an "@" (ssl_ca_certs=/run/credentials/gw@main.service/ca.pem,
# client_name=gw@host1, password=p@ss) that the lax reading took for the user part's end,
# refused the URL and masked its host.
REDIS_URL_OPTIONS = frozenset([
    "db", "username", "password", "client_name", "lib_name", "lib_version", "protocol",
    "encoding", "encoding_errors", "decode_responses", "health_check_interval", "timeout",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size",
    "retry_on_timeout", "retry_on_error", "max_connections", "legacy_responses",
    "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile",
    "ssl_password", "ssl_cert_reqs", "ssl_check_hostname", "ssl_ciphers", "ssl_min_version",
    "ssl_validate_ocsp", "ssl_validate_ocsp_stapled", "ssl_include_verify_flags",
    "ssl_exclude_verify_flags"])
# A query parameter of a URL: redis-py takes any (?password=...) as a connection option.
URL_QUERY_PARAM = re.compile(r"([?&;])([^=&#\s]+)=([^&#\s]*)")


def _spelt_any_way(name):
    """A pattern of ``name`` as redis-py reads it: each character as is or %-encoded."""
    return "".join(f"(?:{re.escape(c)}|%(?i:{ord(c):02x}))" for c in name)


# One of redis-py's options, however spelt ("pass%77ord"), and its "=".
REDIS_OPTION_NEXT = "(?:" + "|".join(_spelt_any_way(name) for name in sorted(
    REDIS_URL_OPTIONS, key=len, reverse=True)) + ")="
# A parameter of a redis URL, to its "=", and its value: a secret's (?password=) runs on over
# a space, an "&" none of redis-py's options follows and a "#" ("?password=Tr0ub4dor&3#horse"):
# redis-py's password stops at them (the rest is dropped, or a fragment it ignores), the
# operator's does not, and masked to the "&", the rest of it showed; ended at any "&name=",
# "?password=Tr0ub&4=x" showed "4=x" (an option redis-py refuses: the password goes on to
# it). Another's value ends at the next "name=" or "#", whatever follows is read again:
# after a ";" or "?" too, "?client_name=gw;password=pw" (a separator to the operator, part
# of the name to redis-py) showed the password whole in check --dump.
REDIS_PARAM = re.compile(r"([?&;])([^=&#\s]+)=")
REDIS_SECRET_VALUE = rf"(?:[^&#]|&(?!{REDIS_OPTION_NEXT}))*(?:#.*)?"


@functools.cache
def redis_secret_value():
    """REDIS_SECRET_VALUE compiled, at its first use: its 34 options spelt every way take
    ~27 ms to compile, which every process (the master, each helper, each CLI command) paid
    at import for a pattern only a redis URL with a query needs."""
    return re.compile(REDIS_SECRET_VALUE, re.S)
REDIS_PLAIN_VALUE = re.compile(r"(?:[^&#;?]|[&;?](?![^=&#;?]+=))*")
URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s]*", re.I)


def redact(value, key=None, every_text=False):
    """A copy of ``value`` (dicts, lists, scalars) with secrets masked; anything else that is
    not plain data (compiled patterns, keys, sets) becomes a list or its ``str``.
    ``every_text``: every string masked (a refused config echoed in its error: a header value
    under a name no rule knows may be a credential; the shape and numbers still show)."""
    if isinstance(value, dict):
        return {str(k): redact(v, str(k), every_text) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and all(is_pair(item) for item in value):
        # (name, value) header pairs, as compiled configs hold them
        return [[redact(name), redact(v, redact(name), every_text)] for name, v in value]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [redact(v, key, every_text) for v in items]
    if value not in (None, "") and (key in SECRET_KEYS or isinstance(value, (str, bytes)) and (
            every_text or key is not None and SECRET_HEADER.search(key))):
        return MASK
    if isinstance(value, str):
        masked = URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", value)
        # a user part without a password is a token given as the user ("https://token@"):
        # the whole of it goes
        if masked == value:
            masked = URL_VALUE_USERINFO.sub(rf"\1{MASK}@", value, 1)
        return _lax_parts(masked) if "://" in masked else masked
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def is_pair(item):
    return isinstance(item, (list, tuple)) and len(item) == 2 and \
        all(isinstance(part, (str, bytes)) for part in item)


def mask_userinfo(text):
    """``text`` with the user part of every URL in it masked: ``https://***@host``."""
    # the lax reading first: masked to its first "@", a user part loses the ":" it is
    # told by, and "redis+sentinel://***@cd/ef@h1" kept the rest of "ab@cd/ef"
    if "://" in text:
        text = URL_IN_TEXT.sub(lambda url: _lax_parts(url.group()), text)
    return URL_USERINFO.sub(rf"\1{MASK}@", text)


def mask_url(value):
    """``value``, a URL, with its whole user part masked: ``https://***@host``."""
    if "://" in value:
        value = _lax_parts(value)       # first, as in mask_userinfo
    return URL_VALUE_USERINFO.sub(rf"\1{MASK}@", value, count=1)


def _lax_parts(url):
    """``url`` (user part masked as RFC 3986 reads it) without what other readers take for
    a secret: a user part holding "/", "?" or "#" unencoded (to the last "@", when "x:y"
    comes before it), and the values of query parameters named as secrets (password, token,
    ...; redis-py takes ``?password=`` as the AUTH password)."""
    if "@" in url:
        if url.partition("://")[0].lower() in REDIS_SCHEMES:
            url = _lax_redis_user_part(url)
        else:
            url = URL_LAX_USERINFO.sub(rf"\1{MASK}@", url, count=1)
    if "=" in url:
        redis = url.partition("://")[0].lower() in REDIS_SCHEMES
        url = _masked_redis_query(url) if redis else URL_QUERY_PARAM.sub(_masked_param, url)
    return url


def _masked_param(match):
    if match.group(3) and _secret_param(match.group(2)):
        return f"{match.group(1)}{match.group(2)}={MASK}"
    return match.group()


def _secret_param(name):
    # redis-py decodes an option's name (parse_qs): "pass%77ord=" is its password too
    decoded = unquote_plus(name) if "%" in name or "+" in name else name
    return decoded.lower() in SECRET_KEYS or SECRET_HEADER.search(decoded) is not None


def _masked_redis_query(url):
    """``url``, a redis URL, with its secret parameters' values masked (REDIS_PARAM)."""
    pieces, at = [], 0
    while (param := REDIS_PARAM.search(url, at)) is not None:
        secret = _secret_param(param.group(2))
        value = (redis_secret_value() if secret else REDIS_PLAIN_VALUE).match(url, param.end())
        pieces += [url[at:param.end()], MASK if secret and value.group() else value.group()]
        at = value.end()
    return "".join(pieces) + url[at:]


def split_options_query(url):
    """``url`` -> (what comes before its query, the query from its "?"), when that query
    is made of redis-py's options alone (REDIS_URL_OPTIONS: an "@" in one of their values
    ends no user part); else (url, ""). A "?" of a password's comes first: the next one
    is tried."""
    at = url.find("?")
    while at >= 0:
        if _options_only(url[at + 1:]) and _ends_in_hosts(url[:at]) and \
                not _may_end_a_user_part(url, at):
            return url[:at], url[at:]
        at = url.find("?", at + 1)
    return url, ""


def _options_only(query):
    """Is ``query`` made of redis-py's options alone, each with its "=", their names read
    as redis-py reads them (percent-decoded)?"""
    return all(unquote_plus(name) in REDIS_URL_OPTIONS and sep
               for name, sep, _ in (pair.partition("=") for pair in query.split("&")))


# A host and its port in a URL's authority: a name, an address or [an IPv6 one], ":digits";
# or nothing (unix://). No port without a host: ":12345" is a password's shape.
URL_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%\w-]*\]|[^:\[\]]+)(:[0-9]*)?|")


def _ends_in_hosts(head):
    """Does ``head``, a URL up to a "?", end its authority in hosts and ports (after its
    user part, if any)? A "?" in a user part does not: "redis://:pw?db=1@host/0" and
    "redis://default:Zx9?client_name=q@redis..." are passwords holding "?db=" and
    "?client_name=", shown whole when that "?" was taken for the query's (redis-py reads
    "pw" as a port, and refuses it)."""
    authority = re.split(r"[/?#]", head.partition("://")[2], maxsplit=1)[0]
    return _hosts_ok(authority.rpartition("@")[2])


def _hosts_ok(hosts):
    return all(URL_HOST_PORT.fullmatch(host) for host in hosts.split(","))


# What follows a user part's "@" in each kind of redis URL: hosts, then the path each takes
# (and, in a text, what may follow a URL: a quote, a bracket)
_HOSTS, _AFTER = r"([^/?#'\"<>(){}]+)", r"([?#'\"<>(){}].*)?"
REDIS_URL_REST = {"redis": re.compile(_HOSTS + r"(/[0-9]*)?" + _AFTER, re.S),
                  "redis+sentinel": re.compile(_HOSTS + r"/[^/?#]+(/[0-9]*)?" + _AFTER, re.S),
                  "redis+cluster": re.compile(_HOSTS + r"/?" + _AFTER, re.S)}
REDIS_URL_REST["rediss"] = REDIS_URL_REST["redis"]


def _may_end_a_user_part(url, at):
    """Could an "@" in the query from ``at`` end a user part that holds that "?": no "@"
    or "/" before it, and after the query's last "@" hosts and a path as the URL's kind
    has them? "redis://:12345?client_name=q@10.0.0.7:6379/0" is a password of digits and
    "?client_name=q" to the operator, port 12345 of localhost to redis-py; "redis://tok?
    db=1@host/0", a token. Not "rediss://10.0.0.7:6380?ssl_ca_certs=/run/gw@main/ca.pem",
    whose "@main/ca.pem" is no host and db."""
    scheme, _, before = url[:at].partition("://")
    last = url.rfind("@", at)
    if "@" in before or "/" in before or last < 0:
        return False
    rest, scheme = url[last + 1:], scheme.lower()
    if scheme == "unix":
        return rest.startswith("/")
    shape = REDIS_URL_REST.get(scheme)
    found = shape.fullmatch(rest) if shape is not None else None
    return found is not None and _hosts_ok(found.group(1))


class RedisUrl(NamedTuple):
    """A redis URL as the gateway reads it, each part as written: the one reading of
    ``gwserver check`` (which refuses a URL redis-py reads otherwise) and of the masks."""
    scheme: str
    userinfo: str | None    # to the "@" that ends it; None: no user part
    hosts: str              # "host:port" items, "," between them ("" for unix://)
    path: str               # from its "/" (unix://: the socket's path)
    query: str              # after its "?"
    fragment: str

    @property
    def username(self):
        user = None if self.userinfo is None else self.userinfo.partition(":")[0]
        return unquote(user) if user else None

    @property
    def password(self):
        password = None if self.userinfo is None else self.userinfo.partition(":")[2]
        return unquote(password) if password else None

    def options(self):
        """{name: value} as redis-py takes them: decoded, the first of a name, blank ones
        left out."""
        options = {}
        for name, value in parse_qsl(self.query):
            options.setdefault(name, value)
        return options


def redis_url_parts(url):
    """``url`` (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://) ->
    RedisUrl. Its user part runs to the last "@" (a unix:// URL's: the last one a "/"
    follows; its path may hold one), not counting one in a query of redis-py's options
    (split_options_query) of a URL of one host, so a user part holding "@", "/", "?" or "#" is read as whoever
    wrote it meant it; redis-py's reading is RFC 3986's (urlsplit)."""
    scheme, _, rest = url.partition("://")
    head, options = (url, "") if _nodes_after_last_at(scheme, url) else \
        split_options_query(url)
    rest = head[len(scheme) + 3:]
    if scheme.lower() != "unix":
        end = rest.rfind("@")
    elif "@/" in rest:
        end = rest.rfind("@/")
    else:
        end = re.split(r"[/?#]", rest, maxsplit=1)[0].rfind("@")
    userinfo = rest[:end] if end >= 0 else None
    tail, _, fragment = (rest[end + 1:] + options).partition("#")
    hosts = re.split(r"[/?]", tail, maxsplit=1)[0]
    path, _, query = tail[len(hosts):].partition("?")
    return RedisUrl(scheme, userinfo, hosts, path, query, fragment)


# host:port nodes, as a URL of several hosts names them after its user part
MULTI_HOST_NODES = re.compile(r"[^,/@?#\s]+:[0-9]+(?:,[^,/@?#\s]+:[0-9]+)*(?![0-9])")


def _nodes_after_last_at(scheme, url):
    """Is ``url`` one of several hosts (redis+sentinel, redis+cluster) with host:port nodes
    after its last "@"? Such a URL takes no query (settings refuses one), so a "?" before
    that "@" is the password's (":pw@x?db=0@h1:26379/m"): read as the start of a query, the
    password showed from it on, and the refusal quoted its tail as a host."""
    return scheme.lower() in ("redis+sentinel", "redis+cluster") and \
        MULTI_HOST_NODES.match(url.rpartition("@")[2]) is not None


def redis_py_reading(url):
    """``url`` as redis-py splits it (RFC 3986, urlsplit), in RedisUrl's parts."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    return RedisUrl(url.partition("://")[0], userinfo if at else None, hosts, parts.path,
                    parts.query, parts.fragment)


REDIS_SCHEMES = frozenset(["redis", "rediss", "unix", "redis+sentinel", "redis+cluster"])


def _lax_redis_user_part(url):
    """``url``, a redis URL, with the user part the gateway reads in it masked whole when
    RFC 3986's reading (masked already) sees less of it."""
    parts = redis_url_parts(url)
    try:
        rfc = redis_py_reading(url).userinfo
    except ValueError:          # urlsplit's "Invalid IPv6 URL": no reading of its own
        rfc = None
    if parts.userinfo is None or parts.userinfo == rfc:
        return url
    return f"{parts.scheme}://{MASK}@{url[len(parts.scheme) + len(parts.userinfo) + 4:]}"
