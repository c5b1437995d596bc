"""``jwt``: verify ``Authorization: Bearer`` tokens (PyJWT) and hand their claims on.

    plugins.jwt = {algorithms = ["RS256"], public_key_file = "/etc/gwserver/jwt.pem",
                   issuer = "https://id.example.com", audience = "orders",
                   required_scopes = ["orders:read"], forward_claims = {sub = "X-User-Id"}}

Keys: ``secret``/``secret_file`` for HS256/384/512, ``public_key``/``public_key_file`` (PEM)
or ``jwks_file`` (reloaded when it changes, keys picked by ``kid`` and algorithm; emptied, it
trusts no key) for RS/PS/ES. A config mixes no symmetric and asymmetric algorithms (no
algorithm confusion). ``exp`` is required
unless ``require_exp = false``; ``exp``/``nbf`` are checked with ``leeway`` seconds; ``iss``
and ``aud`` when configured; ``required_claims`` must be present; ``required_scopes`` must all
be in the token's ``scope`` (space-separated) or ``scp`` claim.

Failures: 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` and a description
when a token was sent), 403 with ``error="insufficient_scope"``; JSON bodies, never a stack
trace. On success the claims are in ``ctx.vars["claims"]`` (rate_limit keys on them, routes
match on them); ``forward_claims`` sets upstream headers from claims (a client's own copy of
those headers is always removed; a claim no header carries as it is, one with a control
character or a space at either end or over 1024 characters, sets none), ``strip_token``
removes the Authorization header.

Consumers (docs/consumers.md): with ``consumer_claim = "iss"`` (or ``"sub"``) the claim's value
names the consumer whose ``credentials.jwt = {key = "..."}`` equals it; a token whose claim
names no consumer gets 401, and so does one whose consumer's ``credentials.jwt.kid`` names
another JWKS key than the one that verified it (a partner signing for another). The
consumer's groups and plugins then apply as with key_auth.

Verified tokens are cached per worker for ``cache_seconds`` (never past their ``exp``), so a hot
token is not verified again on every request.
"""
import json
import logging
import os
import re
import time

from ..core import consumers
from ..core.context import Reply, claim_text
from ..core.schema import (Field, Schema, absolute_path, boolean, integer, list_of, map_of,
                           never_quoted, number, one_of, request_header_name, string)
from ..core.throttledlog import throttled_log
from ..files import read_bounded

log = logging.getLogger("gwserver.plugins.jwt")


class _LazyPyJWT:
    """PyJWT, imported on first use. ``import jwt`` imports ``ssl`` (for its JWKS client,
    which we do not use); configs are compiled in the master, and ``ssl`` imported there
    before the workers' gevent patching is what gevent warns about. Verification only ever
    runs in workers, after the patch."""

    def __getattr__(self, name):
        import jwt
        globals()["pyjwt"] = jwt
        return getattr(jwt, name)


pyjwt = _LazyPyJWT()

NAME = "jwt"
PRIORITY = 900          # first: rate_limit (800) keys on claims, routes match on them
IDENTIFIES_CONSUMER = True

SYMMETRIC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")

SCHEMA = Schema(
    Field("algorithms", list_of(one_of(*SYMMETRIC, *ASYMMETRIC), min_items=1),
          lambda: ["RS256"], "accepted signing algorithms"),
    Field("secret", never_quoted(string(what="a secret")), None, "HS* shared secret"),
    Field("secret_file", absolute_path, None, "file holding the secret"),
    Field("public_key", string(what="a PEM public key"), None, "RS/PS/ES public key, PEM"),
    Field("public_key_file", absolute_path, None, "PEM file"),
    Field("jwks_file", absolute_path, None,
          "JWKS file (keys by kid; of keys of two types under one kid, the one of the token's "
          "algorithm; an RSA key without alg serves each RS/PS algorithm of algorithms), "
          "reloaded when it changes: one that does not parse keeps the previous keys, one that "
          "does with no usable key (keys = []) trusts none (at start or a reload, keys = [] is "
          "a config error)"),
    Field("issuer", string(what="an issuer"), None, "required iss"),
    Field("audience", string(what="an audience"), None, "required aud"),
    Field("leeway", number(0), 30.0, "seconds of clock skew allowed on exp and nbf"),
    Field("require_exp", boolean, True, "reject tokens without exp"),
    Field("required_claims", list_of(string(what="a claim name")), list,
          "claims that must be present"),
    Field("required_scopes", list_of(string(r"[!-~]+", "a scope")), list,
          "scopes that must all be granted (scope or scp claim)"),
    Field("forward_claims", map_of(request_header_name,
                                   string(r"[A-Za-z0-9_.:-]+", "a claim name")),
          dict, "claim -> request header set for the upstream, as the token's JSON spells "
          "it (true, false; an object, and a null in a list, as compact JSON) (not one the gateway writes "
          "itself: Host, Content-Length, X-Forwarded-*, X-Consumer-*, ...)"),
    Field("strip_token", boolean, False, "remove Authorization before proxying"),
    Field("cache_seconds", number(0), 30.0, "how long a verified token is remembered; 0: off"),
    Field("cache_size", integer(1), 10000, "verified tokens remembered per worker"),
    Field("consumer_claim", one_of("iss", "sub"), None,
          "the claim whose value names the consumer (credentials.jwt.key); unset: none"),
)

CREDENTIAL = Schema(
    Field("key", string(what="a claim value"), doc="the consumer_claim value naming this "
          "consumer"),
    Field("kid", string(what="a JWKS key id"), None,
          "the kid of the JWKS key that must have signed this consumer's tokens; unset: any "
          "key the route trusts (with a JWKS of several parties' keys, set it: else each "
          "key's holder can sign tokens naming any consumer)"),
)


def credential_lookup(cred):
    return cred["key"]


class TokenRejected(Exception):
    """``description``: what the client is told; ``kind``: the same without what the client
    chose (a kid), what the log's fall-through lines are counted by (_fell_through)."""

    def __init__(self, description, kind=None):
        super().__init__(description)
        self.description = description
        self.kind = kind or description


MAX_KEY_FILE = 1 << 20      # a key, a secret or a JWKS: far less than this


def _read(path, what):
    """A key file's bytes: a regular file of at most MAX_KEY_FILE (a config, from etcd too,
    naming /dev/zero or a FIFO would otherwise read without end, or block, the process that
    checks it). FileRefused is a ValueError: a config error naming the file."""
    return read_bounded(path, MAX_KEY_FILE, f"{what} {path}")


# RFC 7518 3.2: a key of the same size as the hash output (or larger) for HS256/384/512.
HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def warnings(conf):
    """(the plugin hook) An HMAC secret shorter than RFC 7518 3.2 asks for its algorithms:
    an HS* key that short can be brute-forced offline from any one token it signed. A
    consumer_claim over a JWKS of several keys: unless each consumer's credential names its
    key (``kid``), any key's holder can sign tokens naming any consumer."""
    return _short_secret(conf) + _shared_jwks(conf)


def _shared_jwks(conf):
    if conf["consumer_claim"] is None or conf["jwks_file"] is None:
        return []
    try:
        keys = json.loads(_read(conf["jwks_file"], "jwks_file"))["keys"]
    except (OSError, ValueError, KeyError, TypeError):
        return []       # a config error already, named by prepare
    if not isinstance(keys, list) or len(keys) < 2:
        return []
    return [f"consumer_claim = {conf['consumer_claim']!r} with a JWKS of {len(keys)} keys: a "
            f"token signed by any of them may name any consumer, unless each consumer's "
            f"credentials.jwt.kid names the key that signs its tokens"]


def _short_secret(conf):
    wanted = max((HMAC_KEY_BYTES.get(a, 0) for a in conf["algorithms"]), default=0)
    if not wanted or not (conf["secret"] or conf["secret_file"]):
        return []
    if conf["secret"]:
        key, name = conf["secret"].encode(), "secret"
    else:
        try:        # as the Verifier reads it: the file's bytes, stripped
            key, name = _read(conf["secret_file"], "secret_file").strip(), \
                "secret_file's secret"
        except (OSError, ValueError):
            return []       # a config error already, named by prepare
    if len(key) >= wanted:
        return []
    algorithms = ", ".join(a for a in conf["algorithms"] if a in HMAC_KEY_BYTES)
    return [f"{name} is {len(key)} bytes: {algorithms} needs a key of at least {wanted} "
            f"bytes (RFC 7518 3.2); a shorter one can be guessed offline from any token it "
            f"signed (`openssl rand -base64 {wanted}`)"]


RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def _usable_keys(data, algorithms, path):
    """The keys of a JWKS file's bytes that PyJWT can use (PyJWK), maybe none; ValueError for
    bytes that are no JWKS (a file caught half-written: the previous keys stay). A JWKS that
    parses is what the operator says now: one emptied to revoke its last key (a compromised
    one) trusts no key, where the previous keys went on vouching for tokens until a restart."""
    document = json.loads(data)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError('not a JWKS (an object with a "keys" list)')
    usable = []
    for at, jwk in enumerate(keys):
        if not isinstance(jwk, dict):
            continue            # not a JWK (PyJWKSet skips it too)
        # RFC 7517 4.4: "alg" is optional, and PyJWT takes an RSA key without it for RS256
        # alone: a route of PS256 (Open Banking's) or RS512 refused every token. Such a key
        # serves each RSA algorithm the route accepts (an EC key's curve names its own).
        choices = [a for a in algorithms if a in RSA_ALGORITHMS] \
            if jwk.get("kty") == "RSA" and not jwk.get("alg") else []
        for algorithm in choices or [None]:
            try:
                usable.append(pyjwt.PyJWK(jwk, algorithm))
            except (pyjwt.PyJWTError, KeyError, TypeError, ValueError,
                    NotImplementedError) as exc:
                # Skipped, as PyJWKSet skips what PyJWT names unusable: an entry it chokes
                # on ({"kty": "oct"} without "k", an "alg" list, an "alg" of "none", whose
                # algorithm has no JWK form: NotImplementedError) raised past PyJWKSet, a
                # 500 on every request of the route. Its message is not logged: it may quote
                # the JWK, an "oct" one's secret included.
                log.warning("JWKS %s: entry %d (kid %s) is no key this gateway can use, "
                            "skipped (%s)", path, at, repr(jwk.get("kid"))[:64],
                            type(exc).__name__)
                break
    return usable


def _duplicates(keys):
    """(repr of a kid, algorithm) that two keys share: tokens under it are checked with the
    first. (A kid is any JSON value the file holds: a list is no set member.)"""
    seen, twice = set(), []
    for key in keys:
        mark = (repr(key.key_id)[:64], key.algorithm_name)
        if mark in seen and mark not in twice:
            twice.append(mark)
        seen.add(mark)
    return twice


class Verifier:
    """One route's verification: keys, options and this worker's cache of verified tokens."""

    def __init__(self, conf):
        algorithms = conf["algorithms"]
        symmetric = [a for a in algorithms if a in SYMMETRIC]
        if symmetric and len(symmetric) != len(algorithms):
            raise ValueError("algorithms mixes HS* with public-key algorithms; use one kind "
                             "(mixing them allows algorithm confusion)")
        sources = [k for k in ("secret", "secret_file", "public_key", "public_key_file",
                               "jwks_file") if conf[k]]
        if len(sources) != 1:
            raise ValueError(f"set exactly one of secret, secret_file, public_key, "
                             f"public_key_file, jwks_file (got {', '.join(sources) or 'none'})")
        source = sources[0]
        if symmetric != [] and source not in ("secret", "secret_file"):
            raise ValueError(f"{', '.join(symmetric)} needs secret or secret_file, not {source}")
        if not symmetric and source in ("secret", "secret_file"):
            raise ValueError(f"{', '.join(algorithms)} needs a public key or jwks_file, "
                             f"not {source}")
        self.algorithms = algorithms
        self.jwks_path = conf["jwks_file"]
        self.jwks = None
        self.jwks_checked = 0.0
        self.jwks_mtime = None
        if source == "secret":
            self.key = conf["secret"].encode()
        elif source == "secret_file":
            self.key = _read(conf["secret_file"], "secret_file").strip()
        elif source in ("public_key", "public_key_file"):
            pem = conf["public_key"].encode() if source == "public_key" else \
                _read(conf["public_key_file"], "public_key_file")
            self.key = self._load_pem(pem)
        else:
            self.key = None
            self._load_jwks(initial=True)
        options = {"require": (["exp"] if conf["require_exp"] else []) +
                   list(conf["required_claims"])}
        self.decode_args = dict(algorithms=algorithms, issuer=conf["issuer"],
                                audience=conf["audience"], leeway=conf["leeway"],
                                options=options)
        self.cache_seconds = conf["cache_seconds"]
        self.cache_size = conf["cache_size"]
        self.cache = {}

    @staticmethod
    def _load_pem(pem):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from cryptography.exceptions import UnsupportedAlgorithm
        try:
            return load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:     # a curve it has no code for
            raise ValueError(f"public key is not a PEM public key it can use: {exc}") from None

    def _load_jwks(self, initial=False):
        if initial:     # at compile time (in the master): check the file's shape only
            try:
                keys = json.loads(_read(self.jwks_path, "jwks_file"))["keys"]
                if not isinstance(keys, list) or not keys:
                    raise ValueError("no keys")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"jwks_file {self.jwks_path}: not a JWKS with keys "
                                 f"({exc})") from None
            return
        try:
            mtime = os.stat(self.jwks_path).st_mtime_ns
            if mtime == self.jwks_mtime:
                return
            jwks = _usable_keys(_read(self.jwks_path, "jwks_file"), self.algorithms,
                                self.jwks_path)
            previous, self.jwks, self.jwks_mtime = self.jwks, jwks, mtime
            if not jwks:
                log.error("JWKS %s holds no key this gateway can use: every token is refused "
                          "until it does", self.jwks_path)
            for kid, alg in _duplicates(jwks):
                log.error("JWKS %s has two %s keys with kid %s: tokens are checked with the "
                          "first only; give each key a kid of its own", self.jwks_path, alg,
                          kid)
            if previous is not None:
                # what the previous keys verified is verified again under the new ones
                self.cache.clear()
                log.warning("reloaded JWKS %s (%d keys)", self.jwks_path, len(jwks))
        except (OSError, ValueError) as exc:
            if self.jwks is None:
                raise TokenRejected(f"the JWKS file cannot be read ({exc})") from None
            log.error("JWKS %s not reloaded, keeping the previous keys: %s", self.jwks_path, exc)

    def _refresh_jwks(self):
        """Reload the JWKS file if it changed (a stat a second at most). Called before the
        cache is read: a key taken out of the file (a compromised one) must vouch for no
        token from then on, those it vouched for already included."""
        now = time.monotonic()
        if self.jwks is None or now - self.jwks_checked >= 1.0:
            self.jwks_checked = now
            self._load_jwks()

    def key_for(self, token):
        """The key to verify ``token`` with (a JWKS's as check() last refreshed it): the first
        under its kid of its algorithm. RFC 7517 4.5 lets keys of different types share a
        kid (one signer's RSA and EC keys, alternatives): the first key under the kid was
        taken whatever its type, and every token signed with the other was refused. Two
        keys of one type under one kid are not told apart (the first serves; _duplicates)."""
        if self.jwks_path is None:
            return self.key
        header = pyjwt.get_unverified_header(token)
        kid, alg = header.get("kid"), header.get("alg")
        named = [key for key in self.jwks if kid is None or key.key_id == kid]
        if not named:
            # the kid is the client's, unverified: bounded here, made a quoted-string's
            # characters in _unauthorized
            raise TokenRejected(f"no key with kid {str(kid)[:64]!r} in the JWKS",
                                "no key with the token's kid in the JWKS")
        # none of its algorithm: the first, which PyJWT refuses for the algorithm, saying so
        return next((key for key in named if key.algorithm_name == alg), named[0])

    def verify(self, token):
        """-> claims; raises TokenRejected with a description a client may read."""
        return self.check(token)[0]

    def check(self, token):
        """-> (claims, the kid of the JWKS key that verified them, or None without a JWKS);
        raises TokenRejected with a description a client may read."""
        now = time.time()
        if self.jwks_path is not None:
            self._refresh_jwks()
        hit = self.cache.get(token)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        try:
            key = self.key_for(token)       # (a malformed token's header raises here)
            signer = getattr(key, "key_id", None)      # a JWKS key's kid
            claims = pyjwt.decode(token, key, **self.decode_args)
        except pyjwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except pyjwt.ImmatureSignatureError as exc:
            # PyJWT says the same of an iat in the future (past leeway) as of an nbf: name
            # the claim it judged, not nbf for a token that has none
            claim = "iat" if "(iat)" in str(exc) else "nbf"
            raise TokenRejected(f"the token is not valid yet ({claim})") from None
        except pyjwt.InvalidAudienceError:
            if self.decode_args["audience"] is None:    # PyJWT refuses any aud then
                raise TokenRejected("the token names an audience (aud) and the jwt config "
                                    "names none (set audience)") from None
            raise TokenRejected("the token is not for this audience") from None
        except pyjwt.InvalidIssuerError:
            raise TokenRejected("the token is from another issuer") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token lacks the {exc.claim} claim") from None
        except pyjwt.InvalidSignatureError:
            raise TokenRejected("the token's signature does not verify") from None
        except pyjwt.InvalidAlgorithmError:
            raise TokenRejected("the token's algorithm is not accepted") from None
        except pyjwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        except (OverflowError, ValueError, TypeError):
            # a date PyJWT cannot make an integer of (Infinity, which Python's JSON reads):
            # the token's, never the gateway's error
            raise TokenRejected("malformed token") from None
        if self.cache_seconds:
            if len(self.cache) >= self.cache_size:
                for stale in [t for t, (_, _, until) in self.cache.items() if until <= now]:
                    del self.cache[stale]
                if len(self.cache) >= self.cache_size:
                    del self.cache[next(iter(self.cache))]      # the oldest entry
            until = now + self.cache_seconds
            if "exp" in claims:
                try:
                    until = min(until, float(claims["exp"]) + self.decode_args["leeway"])
                except OverflowError:
                    pass        # an exp past what a float holds (10**400): far enough away
            self.cache[token] = (claims, signer, until)
        return claims, signer


def prepare(conf):
    return {**conf, "verifier": Verifier(conf),
            "forward": tuple((claim, header.encode("latin-1"))
                             for claim, header in conf["forward_claims"].items())}


def bearer_token(ctx):
    value = ctx.header_map.get(b"authorization")
    if value is None or value[:7].lower() != b"bearer " or not value[7:].strip():
        return None
    return value[7:].strip().decode("latin-1")


def claims_for(conf, ctx):
    """Verified claims of the request under ``conf`` (cached on the request), or None."""
    return _checked(conf, ctx)[0]


def _checked(conf, ctx):
    """(claims, None), (None, the TokenRejected) or (None, None) without a token."""
    seen = ctx.vars.setdefault("jwt_checked", {})
    verifier = conf["verifier"]
    if id(verifier) not in seen:
        token = bearer_token(ctx)
        result = (None, None)
        if token is not None:
            try:
                result = (verifier.verify(token), None)
            except TokenRejected as exc:
                result = (None, exc)
        seen[id(verifier)] = result
    return seen[id(verifier)]


def claims(conf, ctx, route_id):
    """Plugin hook for ``claims`` routes: the token's verified claims under this config.

    A rejected token makes a ``claims`` route fall through to the next match, which is right
    but puzzling (a token for another audience looks fine to whoever sent it): say why, at
    info once a minute per route and kind of reason in each worker, at debug otherwise."""
    verified, rejected = _checked(conf, ctx)
    if rejected is not None:
        _fell_through(route_id, rejected)
    return verified


_said = {}          # (route id, reason's kind) -> monotonic time it was last logged at info


def _fell_through(route_id, rejected):
    """Counted by the reason's kind: by the reason itself, which names the client's kid, a
    client sending a new kid on each request wrote an info line per request."""
    now = time.monotonic()
    key = (route_id, rejected.kind)
    level = logging.DEBUG
    if now - _said.get(key, -60.0) >= 60.0:
        if len(_said) >= 1000:          # routes come and go (etcd): keep this bounded
            _said.clear()
        _said[key] = now
        level = logging.INFO
    log.log(level, "route %s not matched: its claims conditions need a verified token, and "
            "%s", route_id, _lower_first(rejected.description))


def _lower_first(text):
    return text[:1].lower() + text[1:]


def granted_scopes(claims):
    scopes = claims.get("scope", claims.get("scp", ""))
    if isinstance(scopes, str):
        return set(scopes.split())
    if isinstance(scopes, list):
        return {str(s) for s in scopes}
    return set()


# RFC 6750 3: error_description holds %x20-21 / %x23-5B / %x5D-7E, nothing else: a quote
# would end the parameter (a client's kid adding its own error= or scope=), and a character
# outside latin-1 could not be written in a header at all
_NOT_IN_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _unauthorized(description=None):
    challenge = 'Bearer realm="gwserver"'
    if description:
        challenge += (', error="invalid_token", error_description="'
                      f'{_NOT_IN_DESCRIPTION.sub("?", description)}"')
    return Reply.json(401, {"error": "unauthorized",
                            "message": description or "a bearer token is required"},
                      [("WWW-Authenticate", challenge)])


def _unbindable(conf, ctx, consumer):
    """A consumer bound to a JWKS key (credentials.jwt.kid) named on a route whose jwt has no
    jwks_file: no key of this route has a kid, so no token can name the consumer here. Said
    as such to the client (not "whose key did not sign it": its key did), and to the
    operator, whose conf it is (at most a line a second per route and consumer)."""
    route_id = ctx.route.id if ctx.route is not None else None
    throttled_log.log(log, logging.ERROR, ("jwt unbindable", route_id, consumer.id),
                      "route %s: consumer %s is bound to JWKS key %r (credentials.jwt.kid), "
                      "and this route's jwt verifies with %s, no jwks_file: every token naming "
                      "it is refused here; give the route the JWKS or the consumer no kid",
                      route_id, consumer.id, consumer.credentials[NAME]["kid"],
                      "a secret" if conf["secret"] or conf["secret_file"] else "a public key")
    return _unauthorized(f"the token's {conf['consumer_claim']} names a consumer bound to a "
                         f"JWKS key, and this route has no JWKS to check that key against")


def access(conf, ctx):
    for _, header in conf["forward"]:
        ctx.remove_header(header)               # only the gateway sets these
    if conf["consumer_claim"] is not None:
        consumers.strip_client_copies(ctx)
    token = bearer_token(ctx)
    if token is None:
        return _unauthorized()
    try:
        claims, signer = conf["verifier"].check(token)
    except TokenRejected as exc:
        return _unauthorized(exc.description)
    missing = [s for s in conf["required_scopes"] if s not in granted_scopes(claims)]
    if missing:
        needed = " ".join(conf["required_scopes"])
        return Reply.json(403, {"error": "insufficient_scope", "required": missing,
                                "message": f"the token lacks scope {', '.join(missing)}"},
                          [("WWW-Authenticate", f'Bearer realm="gwserver", '
                                                f'error="insufficient_scope", scope="{needed}"')])
    if conf["consumer_claim"] is not None:
        value = claims.get(conf["consumer_claim"])
        directory = ctx.services.consumers
        consumer = directory.find(NAME, str(value)) \
            if directory is not None and isinstance(value, (str, int)) else None
        if consumer is None:
            return _unauthorized(f"the token's {conf['consumer_claim']} names no consumer")
        bound = consumer.credentials[NAME]["kid"]
        if bound is not None and conf["jwks_file"] is None:
            return _unbindable(conf, ctx, consumer)
        if bound is not None and bound != signer:
            # Tied to its own key: another party's key of the JWKS verified this token
            return _unauthorized(f"the token's {conf['consumer_claim']} names a consumer "
                                 f"whose key did not sign it")
        consumers.identify(ctx, consumer)
    ctx.vars["claims"] = claims
    for claim, header in conf["forward"]:
        value = claims.get(claim)
        if value is not None:
            # As the token's JSON spells it, as route conditions read it (claim_text): str()
            # sent a boolean as Python's True/False, which no upstream reading JSON expects
            value = " ".join(map(claim_text, value)) if isinstance(value, list) else \
                claim_text(value)
            # Sent only as the claim says it: a space at either end is no part of a header's
            # value (RFC 9110 5.5), so the upstream read the sub " admin" (a name its owner
            # chose at the identity provider) as "admin", whom it is not.
            if value.isprintable() and len(value) <= 1024 and value[:1] != " " and \
                    value[-1:] != " ":
                ctx.set_header(header, value.encode("utf-8"))
    if conf["strip_token"]:
        ctx.remove_header("authorization")
    return None
