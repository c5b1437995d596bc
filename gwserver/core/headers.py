"""Which headers belong to one hop and which the gateway writes itself: one list for both
directions and both upstream protocols (HTTP/1.1 and HTTP/2), so they cannot drift.
"""
import re
from http import HTTPStatus

# Every registered status (206, 307, 409, 422, ... too), with RFC 9110's newer phrases.
REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
REASONS.update({413: b"Content Too Large", 422: b"Unprocessable Content"})

# RFC 9110 7.6.1, plus the proxy-* pair that belongs to this hop too. Those a Connection header
# names are dropped as well (wherever a message is read).
HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"])

# Only an auth plugin says who the consumer is, on any route: a client's copies are dropped as
# the request is read, and core.consumers.identify adds the gateway's.
CONSUMER_SET = frozenset([b"x-consumer-id", b"x-consumer-groups"])
# Request headers the gateway writes itself: kept in header_map for plugins, not forwarded
# as the client sent them.
GATEWAY_SET = frozenset([b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                         b"x-forwarded-host", b"x-request-id", b"via", b"expect"]) | CONSUMER_SET
NOT_FORWARDED = HOP_BY_HOP | GATEWAY_SET
# The largest Content-Length taken (nginx, Go and Tomcat stop at the same): llhttp takes up
# to 2^64 - 1, and an upstream whose parser wraps or saturates at 63 bits would frame the
# body differently from the gateway, reading its bytes as requests no plugin saw.
MAX_CONTENT_LENGTH = 2 ** 63 - 1
# Statuses whose answer never has a body (RFC 9110 6.4.1, 15.3.5, 15.4.5), whatever its
# Content-Length says; 1xx too, tested apart (status < 200). The framing both ways, and what
# plugins may do to an answer, follow it: a fault's abort.status = 204 or a limit_conn status
# = 304 with its JSON body sent after the head was read by an HTTP/1.1 client as the start of
# the next answer on the connection (and reset the HTTP/2 stream).
NO_BODY_STATUSES = frozenset([204, 304])
# A 205 is framed as any other answer, but has no content (RFC 9110 15.3.6: the server MUST
# NOT generate any): the gateway's own answer of one goes with "Content-Length: 0".
RESET_CONTENT = 205
# Of those, what only the gateway or a trusted proxy in front may say: from anyone else they
# are not even kept for plugins and route conditions (a forged X-Consumer-Groups would match a
# route's header condition; a forged X-Forwarded-For would pick a rate limit's bucket).
UNTRUSTED_UNSEEN = frozenset([b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"])
# Headers a proxy names the client in (either real_ip_header): a limit, a split or a hash key
# on one takes the client the gateway finds there (RequestContext.value_of, rate_limit's
# limit_key), as key "ip" does. As sent, the list's left part is the client's own words
# behind a trusted proxy (a fresh key for each address it prepends), and from anyone else
# the header is dropped (every client keyless: one bucket that one client could spend).
CLIENT_NAMED_IN = frozenset([b"x-forwarded-for", b"forwarded"])
# The headers that name the client as a proxy in front would: a load balancer trusted for
# X-Forwarded-For (or Forwarded) that does not write them passes a client's through unread,
# and "X-Real-IP: 6.6.6.6" (or True-Client-IP, X-Client-IP: IP allow-lists and libraries
# such as request-ip read them) was the client to an upstream that reads it. One that came
# says the client the walk found (client.http1.check_target). A limit, a split or a hash key
# on one that is not there takes the client the gateway found (RequestContext.value_of,
# rate_limit's limit_key): dropped from every client but a trusted proxy, the header was
# absent from all of them, one bucket that one client could spend.
CLIENT_NAMING = {b"x-real-ip": b"X-Real-IP", b"x-client-ip": b"X-Client-IP",
                 b"client-ip": b"Client-IP", b"fastly-client-ip": b"Fastly-Client-IP",
                 b"true-client-ip": b"True-Client-IP", b"cf-connecting-ip": b"CF-Connecting-IP",
                 b"x-cluster-client-ip": b"X-Cluster-Client-IP",
                 b"x-forwarded": b"X-Forwarded", b"forwarded-for": b"Forwarded-For",
                 b"x-0-client-ip": b"X-0-Client-IP",
                 b"x-appengine-user-ip": b"X-AppEngine-User-IP",
                 b"fly-client-ip": b"Fly-Client-IP", b"do-connecting-ip": b"DO-Connecting-IP",
                 b"x-azure-clientip": b"X-Azure-ClientIP",
                 b"x-azure-socketip": b"X-Azure-SocketIP",
                 b"x-envoy-external-address": b"X-Envoy-External-Address",
                 b"x-proxyuser-ip": b"X-ProxyUser-IP"}
# What the upstream side writes itself (or never sends on): dropped from the request's headers
# as it goes upstream, whatever put them there. The consumer's pairs are the gateway's own.
WRITTEN_UPSTREAM = NOT_FORWARDED - CONSUMER_SET

# Headers that name another path or method than the request line's: an upstream that reads
# them (IIS and Laminas X-Original-URL, Symfony, Laravel and Express method overrides) serves
# a request the gateway never routed or judged. Dropped from everyone, a trusted proxy too: a
# load balancer trusted for the client's address passes a client's copy through unread, and
# one that writes them names a path or method other than the one it sent the gateway.
STEERING_SET = frozenset([b"x-original-url", b"x-rewrite-url", b"x-http-method-override",
                          b"x-http-method", b"x-method-override"])
# Headers that say who the client is, as a proxy in front would: from anyone but a trusted
# proxy they are forgeries. They steer frameworks' proxy middleware (werkzeug's ProxyFix,
# Spring's ForwardedHeaderFilter) and IP allow-lists.
_PROXY_SAYS = frozenset([
    b"x-real-ip", b"forwarded", b"x-forwarded-prefix",
    b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-scheme", b"x-forwarded-ssl",
    b"front-end-https", b"x-host", b"x-original-host", b"x-client-ip", b"true-client-ip",
    b"cf-connecting-ip", b"x-cluster-client-ip",
    # Rails' remote_ip and the PHP getUserIP snippet read Client-IP (HTTP_CLIENT_IP), the
    # snippet before X-Forwarded-For; request-ip reads Fastly-Client-IP
    b"client-ip", b"fastly-client-ip",
    # and more spellings of the client's address that request-ip reads before the socket's
    # (X-Forwarded and Forwarded-For: django-ipware and the PHP snippet too): a client's
    # "X-Forwarded: 6.6.6.6" was the client to such an upstream
    b"x-forwarded", b"forwarded-for", b"x-0-client-ip", b"x-appengine-user-ip",
    # and the edges' own names for it, which apps behind them read: Fly.io's, DigitalOcean's
    # (request-ip reads it), Azure Front Door's two, Envoy's external address, Google's
    b"fly-client-ip", b"do-connecting-ip", b"x-azure-clientip", b"x-azure-socketip",
    b"x-envoy-external-address", b"x-proxyuser-ip",
    # other spellings of a scheme and a prefix: Tornado's xheaders read X-Scheme first, the
    # Flask ReverseProxied recipe X-Scheme and X-Script-Name (its SCRIPT_NAME, the prefix of
    # every url_for link), gunicorn's secure_scheme_headers X-Forwarded-Protocol
    b"x-scheme", b"x-script-name", b"x-forwarded-protocol",
    # the fault plugin's tag: a forged one would make a real failure look injected
    b"x-fault-injected"])
# Who the user is, as an authenticating proxy in front says it and upstreams take it on trust:
# oauth2-proxy's X-Forwarded-* and X-Auth-Request-* pairs, Envoy's client certificate
# (XFCC, which Envoy itself sanitises from clients), Grafana's auth-proxy header, REMOTE_USER
# spellings and their siblings (Authelia's Remote-Groups, Kubernetes' X-Remote-Group: a
# client's Remote-Groups: admins passed while its Remote-User was dropped), Google IAP's,
# Cloudflare Access's, authentik's and Vouch's. From a client, X-Forwarded-User: admin was
# anyone's admin to such an upstream.
IDENTITY_SET = frozenset([
    b"x-forwarded-user", b"x-forwarded-email", b"x-forwarded-preferred-username",
    b"x-forwarded-groups", b"x-forwarded-access-token", b"x-forwarded-client-cert",
    b"x-auth-request-user", b"x-auth-request-email", b"x-auth-request-preferred-username",
    b"x-auth-request-groups", b"x-auth-request-access-token", b"x-webauth-user",
    b"x-remote-user", b"x-remote-group", b"remote-user", b"remote-groups", b"remote-email",
    b"remote-name", b"x-goog-authenticated-user-email", b"x-goog-authenticated-user-id",
    b"cf-access-authenticated-user-email", b"x-authentik-username", b"x-authentik-groups",
    b"x-authentik-email", b"x-authentik-name", b"x-authentik-uid", b"x-vouch-user",
    # The consumer headers of the gateways gwserver's consumers follow (Kong's, APISIX's),
    # beside the X-Consumer-ID pair it writes itself: an upstream moved from behind Kong
    # takes X-Consumer-Username on trust, and a client's was forwarded as it came.
    b"x-consumer-username", b"x-consumer-custom-id", b"x-credential-identifier",
    b"x-credential-username", b"x-anonymous-consumer", b"x-authenticated-userid",
    b"x-authenticated-scope", b"x-authenticated-groups",
    # The client certificate as the TLS terminators in front say it, XFCC's siblings: nginx's
    # and HAProxy's usual X-SSL-Client-*, ingress-nginx's and Keycloak's ssl-client-* (and
    # Apache's SSL_CLIENT_* by the underscore rule), Traefik's passTLSClientCert, AWS ALB's
    # mTLS headers, Azure's X-ARR-ClientCert, Google's and Cloudflare's, and the standard
    # ones, RFC 9440's Client-Cert and Client-Cert-Chain (which it says a terminator MUST
    # remove from clients). The gateway asks no client for a certificate: over its own TLS
    # listener a client's "X-SSL-Client-Verify: SUCCESS" reached an upstream that takes it
    # on trust.
    b"client-cert", b"client-cert-chain",
    b"x-ssl-client-cert", b"x-ssl-client-verify", b"x-ssl-client-s-dn", b"x-ssl-client-i-dn",
    b"x-ssl-client-dn", b"x-ssl-client-cn", b"x-ssl-client-serial", b"x-ssl-client-sha1",
    b"x-ssl-client-fingerprint", b"x-ssl-issuer", b"x-ssl-cert", b"ssl-client-cert",
    b"ssl-client-verify", b"ssl-client-s-dn", b"ssl-client-i-dn", b"ssl-client-subject-dn",
    b"ssl-client-issuer-dn", b"x-client-cert", b"x-client-verify", b"x-client-dn",
    b"x-client-cert-present", b"x-client-cert-chain-verified", b"x-client-cert-hash",
    b"x-client-cert-spiffe", b"x-client-cert-serial-number", b"x-forwarded-tls-client-cert",
    b"x-forwarded-tls-client-cert-info", b"x-amzn-mtls-clientcert",
    b"x-amzn-mtls-clientcert-serial-number", b"x-amzn-mtls-clientcert-issuer",
    b"x-amzn-mtls-clientcert-subject", b"x-amzn-mtls-clientcert-validity",
    b"x-amzn-mtls-clientcert-leaf", b"x-arr-clientcert", b"cf-client-cert-der-base64",
    b"cf-client-cert-sha256"])
PROXY_SET = _PROXY_SAYS | IDENTITY_SET | STEERING_SET
# Of those, the ones a proxy that speaks X-Forwarded-* writes (beside -For, -Proto and -Host):
# behind a trusted proxy that writes Forwarded instead, a client's copies it passed through
# unread. (Forwarded itself is the client's behind a proxy that writes X-Forwarded-For.) Not
# the identity ones: an authenticating proxy writes them whichever it speaks.
# Their other spellings too (a client's passed as sent, "Front-End-Https: on" beside a
# Forwarded that said proto=http): X-Scheme and X-Script-Name (-Scheme's and -Prefix's:
# Tornado reads X-Scheme before X-Forwarded-Proto), Front-End-Https (-Ssl's), X-Host and
# X-Original-Host (-Host's).
X_FORWARDED_MORE = frozenset([
    b"x-scheme", b"x-script-name", b"front-end-https", b"x-host", b"x-original-host",
    *(name for name in _PROXY_SAYS if name.startswith(b"x-forwarded-"))])

# Digests of an answer's bytes (RFC 9530 Content-Digest and Repr-Digest, RFC 3230 Digest,
# RFC 1864 Content-MD5), in its head or its trailers: none holds once a body filter (gzip)
# has changed the bytes, and a client that checks one refuses the answer as corrupt.
BODY_DIGESTS = frozenset([b"content-digest", b"repr-digest", b"digest", b"content-md5"])

# Fields a trailer section may not carry (RFC 9110 6.5.1): framing, routing and this hop's.
# An HTTP/2 upstream's are dropped; llhttp refuses them from HTTP/1.1 upstreams (a 502 or a
# cut answer), and an HTTP/2 client's stream could not carry a Content-Length in its trailers.
TRAILER_FORBIDDEN = HOP_BY_HOP | {b"content-length", b"host", b"trailer"}

# Response headers the gateway looks at before relaying: hop-by-hop ones, Via (extended),
# Content-Length (framing) and X-Request-ID (the gateway writes its own: an upstream's would
# reach the client as a second one); every other line passes through untouched.
RESPONSE_SPECIAL = HOP_BY_HOP | {b"via", b"content-length", b"x-request-id"}
# ... and those a plugin may not edit in an answer: the same.
RESPONSE_RESERVED = RESPONSE_SPECIAL


def length_over_max(value):
    """Is a response's Content-Length (digits, zeros before them allowed: llhttp takes up
    to 2^64 - 1, h2 any number) over MAX_CONTENT_LENGTH? Relayed, an HTTP/2 client (nghttp2)
    reset the stream while the access log said 200, and clients that stop at 63 bits could
    not read it: nginx and Go refuse such an answer, as the gateway refuses such a request.
    Not digits: False (the parser's to refuse)."""
    if len(value) < 19:                 # (every answer's: nothing to convert)
        return False
    digits = value.lstrip(b"0")         # (int() refuses over 4300 digits: zeros count)
    return digits.isdigit() and (len(digits) > 19 or int(digits) > MAX_CONTENT_LENGTH)


def check_editable(names, reserved, where):
    """ValueError for the first of ``names`` (str) a plugin config may not set or remove:
    one in ``reserved`` (lower-case bytes) is the gateway's to write (framing, Host, the
    forwarded headers, the consumer's identity)."""
    for name in names:
        if name.lower().encode("latin-1") in reserved:
            raise ValueError(f"{where}: {name} is written by the gateway itself and cannot "
                             f"be edited here")



# RFC 9110 5.5/5.6.2: a field name is a token; a value is visible characters, SP and HTAB
# (obs-text allowed), never another control character: CR or LF would add a header, and
# llhttp (our HTTP/2 response framer, most clients) refuses \x01-\x1f and \x7f outright.
# The character sets are kept apart so HTTP/2's checks (lower-case names, one search for a
# bad byte) are built from the same definition.
TOKEN_LOWER_CHARS = r"!#$%&'*+\-.^_`|~0-9a-z"
VALUE_CHARS = r"\t\x20-\x7e\x80-\xff"
FIELD_NAME = f"[{TOKEN_LOWER_CHARS}A-Z]+"
FIELD_VALUE = f"[{VALUE_CHARS}]*"
_NAME = re.compile(FIELD_NAME.encode())
_VALUE = re.compile(FIELD_VALUE)
_VALUE_BYTES = re.compile(FIELD_VALUE.encode("latin-1"))


def is_field_name(name):
    """Whether ``name`` (bytes) is a token, as a header's name must be."""
    return _NAME.fullmatch(name) is not None


def is_field_value(value):
    """Whether ``value`` (str or bytes) may be sent as a header's value."""
    return (_VALUE_BYTES if isinstance(value, bytes) else _VALUE).fullmatch(value) is not None


def first_bad_field(pairs):
    """The first (name, value) bytes pair that is not a header field HTTP allows, or None:
    what an HTTP/2 upstream sends is checked as llhttp checks an HTTP/1.1 upstream's head."""
    for pair in pairs:
        if not is_field_name(pair[0]) or not is_field_value(pair[1]):
            return pair
    return None


def via_chain(received, own):
    """The Via value for the next hop: what came in, then this gateway (``own``: the version
    of the protocol the message came in, and ``server.via``, the name it gives itself:
    b"1.1 gwserver", b"2 gwserver")."""
    return received + b", " + own if received else own


# A request that has passed through a gateway of this name this many times already is in a
# loop (an upstream target that is the gateway itself, by any address: a route or a service
# instance in etcd pointing back at a listener, or two gateways pointing at each other). It is
# answered 508 instead of being forwarded once more: every hop holds a connection and a
# greenlet until the innermost one fails, so a loop used to fill worker_connections and stall
# every route of the gateway until the read timeout. Chains of a few gateways of one name
# (an edge gwserver in front of an internal one) stay well below it.
MAX_OWN_HOPS = 8


def own_hops(received, name):
    """How many members of a received Via value (``received-protocol received-by``, RFC 9110
    7.6.3) name ``name`` as the intermediary: the hops this request made through gateways
    that call themselves so."""
    if not received or name not in received:
        return 0
    count = 0
    for member in received.split(b","):
        parts = member.split()
        if len(parts) >= 2 and parts[1] == name:
            count += 1
    return count
