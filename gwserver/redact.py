"""Secrets out of what the gateway shows: ``gwserver check --dump`` and the admin views.

A value is masked when its key names a secret (the admin token, jwt secrets, the etcd
password, ...) or a header that carries one (Authorization, X-Api-Key, Cookie), and a URL
keeps everything but the password of its user part (a Redis URL's ``redis://:pw@host`` shows
as ``redis://:***@host``; a user without a password, a token, goes whole), as nginx -T does
not but Kong's admin API and APISIX's do for their credentials.
"""
import re

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
# A user part that holds a "/", "?" or "#" unencoded ("redis://us/er:pass@host"): urlparse
# reads it as host and path, the gateway's redis+sentinel:// parser and the operator as a
# user and password. Anything shaped "x:y" before the last "@" (before white space) goes,
# an "@" before the "/" too ("redis+sentinel://:ab@cd/ef@h1,h2/m": password "ab@cd/ef").
URL_LAX_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?=[^\s/?#]*[/?#][^\s]*@)"
                              r"(?=[^\s@]*:)[^\s]*@", re.I)
# The same for a unix:// URL, whose path may hold an "@" (/run/redis@main/redis.sock): its
# lax user part ends at the last "@" a "/" follows ("unix://us/er:pw@/tmp/redis.sock").
URL_LAX_UNIX_USERINFO = re.compile(r"\b(unix://)(?=[^\s/?#]*[/?#][^\s]*@/)"
                                   r"(?=[^\s@]*:)[^\s]*@(?=/)", re.I)
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
URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s]*", re.I)


def redact(value, key=None, every_text=False):
    """A copy of ``value`` (dicts, lists, scalars) with secrets masked; anything else that is
    not plain data (compiled patterns, keys, sets) becomes a list or its ``str``.
    ``every_text``: every string masked (a refused config echoed in its error: a header value
    under a name no rule knows may be a credential; the shape and numbers still show)."""
    if isinstance(value, dict):
        return {str(k): redact(v, str(k), every_text) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and all(_is_pair(item) for item in value):
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


def _is_pair(item):
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
        head, query = split_options_query(url)
        lax = URL_LAX_UNIX_USERINFO if head[:7].lower() == "unix://" else URL_LAX_USERINFO
        url = lax.sub(rf"\1{MASK}@", head, count=1) + query
    if "=" in url:
        url = URL_QUERY_PARAM.sub(_masked_param, url)
    return url


def _masked_param(match):
    name = match.group(2)
    if match.group(3) and (name.lower() in SECRET_KEYS or SECRET_HEADER.search(name)):
        return f"{match.group(1)}{name}={MASK}"
    return match.group()


def split_options_query(url):
    """``url`` -> (what comes before its query, the query from its "?"), when that query
    is made of redis-py's options alone (REDIS_URL_OPTIONS: an "@" in one of their values
    ends no user part); else (url, ""). A "?" of a password's comes first: the next one
    is tried."""
    at = url.find("?")
    while at >= 0:
        pairs = url[at + 1:].split("&")
        if all(name in REDIS_URL_OPTIONS and sep
               for name, sep, _ in (pair.partition("=") for pair in pairs)) and \
                _ends_in_hosts(url[:at]):
            return url[:at], url[at:]
        at = url.find("?", at + 1)
    return url, ""


# A host and its port in a URL's authority: a name, an address or [an IPv6 one], ":digits"
URL_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%\w-]*\]|[^:\[\]]*)(:[0-9]*)?")


def _ends_in_hosts(head):
    """Does ``head``, a URL up to a "?", end its authority in hosts and ports (after its
    user part, if any)? A "?" in a user part does not: "redis://:pw?db=1@host/0" and
    "redis://default:Zx9?client_name=q@redis..." are passwords holding "?db=" and
    "?client_name=", shown whole when that "?" was taken for the query's (redis-py reads
    "pw" as a port, and refuses it)."""
    authority = re.split(r"[/?#]", head.partition("://")[2], maxsplit=1)[0]
    return all(URL_HOST_PORT.fullmatch(host) for host in
               authority.rpartition("@")[2].split(","))
