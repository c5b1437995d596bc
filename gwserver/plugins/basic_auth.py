"""``basic_auth``: HTTP Basic credentials (RFC 7617) checked against bcrypt hashes.

    plugins.basic_auth = {realm = "orders"}                     # on a route
    [consumers.ops]
    credentials.basic_auth = {username = "ops", password_hash = "$2b$12$..."}

Hashes are bcrypt's (the ``bcrypt`` package; ``gwserver consumers hash-password`` makes one,
and ``gwserver consumers put`` hashes a ``password`` it is given). A bcrypt check costs tens of
milliseconds of CPU by design, so a good check is remembered per worker for ``cache_seconds``
under a keyed fingerprint of user and password (never the password): a valid client pays it
once, not on every request. A changed or removed credential is not served from the cache.

An unknown user costs the same bcrypt check as a known one (no user enumeration by timing):
its password is checked against a consumer's hash of the cost most consumers' hashes have.
401 answers carry ``WWW-Authenticate: Basic realm="..."``; the Authorization header is
removed before proxying unless ``hide_credentials = false``.

Failed checks are budgeted, so wrong passwords cannot keep a worker busy with bcrypt: at most
``max_failures`` per client address (an IPv6 one by its /64) and ``max_failures_per_user``
per user name (known or not) in any ``failure_window`` seconds, counted per host (the
workers' shared store). Past either, the answer is 429 with ``Retry-After`` and bcrypt does
not run. A check takes one
unit of each budget before bcrypt runs and gives it back when it succeeded (so concurrent
guesses cannot overshoot); credentials this worker has already found good (the cache) pass
without touching the budgets, so a valid client keeps working while its address or name is
being guessed at.
"""
import base64
import binascii
import collections
import hashlib
import re

from ..core import consumers
from ..core.consumers import CONSUMER_ID
from ..core.context import Reply
from ..core.schema import Field, Invalid, Schema, boolean, integer, number, string
from . import authlib

NAME = "basic_auth"
PRIORITY = 940          # after key_auth, before jwt and acl
IDENTIFIES_CONSUMER = True
MAX_HEADER = 4096       # bytes of base64; longer is not a user and password

SCHEMA = Schema(
    Field("realm", string(r'[ !#-~]+', "printable ASCII without quotes"), "gwserver",
          "realm named in WWW-Authenticate"),
    Field("hide_credentials", boolean, True, "remove Authorization before proxying"),
    Field("anonymous", string(CONSUMER_ID, "a consumer id"), None,
          "consumer that requests without credentials are taken for (default: 401)"),
    Field("cache_seconds", number(0), 60.0, "how long a good check is remembered per worker"),
    Field("cache_size", integer(1), 10000, "checks remembered per worker"),
    Field("max_failures", integer(0), 10, "failed password checks allowed per client address "
          "per failure_window, counted per host; past it, 429 without a check (0: no limit)"),
    Field("max_failures_per_user", integer(0), 20, "failed password checks allowed per user "
          "name (known or not) per failure_window, counted per host (0: no limit)"),
    Field("failure_window", number(0, exclusive=True), 60.0,
          "seconds over which failed checks are counted"),
)

BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def password_hash(value):
    if not isinstance(value, str) or not BCRYPT.fullmatch(value):
        # never quoted back: it may be a password in clear
        raise Invalid("must be a bcrypt hash ($2b$12$..., `gwserver consumers hash-password` "
                      "makes one); a password is never stored in clear")
    return value


CREDENTIAL = Schema(
    Field("username", string(r"[^:\x00-\x1f\x7f]{1,128}", "a user name without ':'"),
          doc="the user name (unique among consumers)"),
    Field("password_hash", password_hash, doc="bcrypt hash of the password"),
)

# Checked when the user is unknown and no consumer has a basic_auth credential.
_DUMMY = b"$2b$12$aeGnipqgO4MEHsyf0uHh6.cbkBAXuyO4.4DBImN4Hxl4udhjprEY6"
_decoy = (None, _DUMMY)     # (consumer-table generation, the hash an unknown user is checked
                            # against in it)


def decoy_hash(directory):
    """The hash an unknown user's password is checked against, so that it takes as long as
    a wrong password for a real user: a consumer's own, of the bcrypt cost most of them
    have. A fixed cost-12 hash told a made-up name (250 ms) from a real one hashed at 10
    (htpasswd's, PHP's: 60 ms) by the time alone. It never lets anyone in: a password that
    happens to be right for it still names no consumer."""
    global _decoy
    if directory is None:
        return _DUMMY
    generation, stored = _decoy
    if generation != directory.generation:
        hashes = [consumer.credentials[NAME]["hash_b"]
                  for _, consumer in directory.credentials(NAME)]
        costs = collections.Counter(h[4:6] for h in hashes)
        common = costs.most_common(1)[0][0] if costs else None
        stored = next((h for h in hashes if h[4:6] == common), _DUMMY)
        _decoy = directory.generation, stored
    return stored


def _bcrypt():
    import bcrypt
    return bcrypt


MAX_PASSWORD = 72       # bytes bcrypt reads; it refuses a longer one, to hash or to check


def hash_password(password, rounds=12):
    """Raises ValueError for a password bcrypt cannot take (never quoting it)."""
    data = password.encode()
    if len(data) > MAX_PASSWORD:
        raise ValueError(f"a password longer than {MAX_PASSWORD} bytes (UTF-8) cannot be "
                         f"hashed or checked by bcrypt: use a shorter one")
    return _bcrypt().hashpw(data, _bcrypt().gensalt(rounds)).decode()


def seal_credential(cred):
    """What ``gwserver consumers put`` stores for a credential given with a clear password."""
    if isinstance(cred, dict) and isinstance(cred.get("password"), str):
        return {**{k: v for k, v in cred.items() if k != "password"},
                "password_hash": hash_password(cred["password"])}
    return cred


def prepare_credential(cred):
    return {**cred, "hash_b": cred["password_hash"].encode()}


def credential_lookup(cred):
    return cred["username"]


def prepare(conf):
    return {**conf, "challenge": f'Basic realm="{conf["realm"]}", charset="UTF-8"',
            "cache": authlib.CheckedCache(conf["cache_seconds"], conf["cache_size"])}


def parse(value):
    """An Authorization value -> (user, password) bytes, or None if it is not Basic or is
    malformed (bad base64, no ':', too long)."""
    if value is None or value[:6].lower() != b"basic " or len(value) > MAX_HEADER:
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user or any(c < 0x20 or c == 0x7f for c in user):
        return None
    return user, password


def check(directory, user, password, cache, budget=None):
    """The consumer these credentials are good for, None, or a Reply (429) when a budget of
    failed checks is spent. ``budget``: (store, [(store key, limit)], window), or None."""
    mark = authlib.fingerprint(user, password)
    name = user.decode("utf-8", "replace")
    consumer = directory.find(NAME, name) if directory is not None else None
    stored = consumer.credentials[NAME]["hash_b"] if consumer is not None else \
        decoy_hash(directory)
    if cache.get(mark) == stored and consumer is not None:
        return consumer
    taken = ()
    if budget is not None:
        store, budgets, window = budget
        taken, wait = authlib.take_budgets(store, budgets, window)
        if wait is not None:
            return authlib.too_many_failures(wait, "too many failed password checks from this "
                                             "address or for this user name; retry later")
    try:
        # Refused here whatever bcrypt does: bcrypt 5 raises for over 72 bytes, but 4.x
        # (setup.cfg takes >= 4.1) reads the first 72, so the password and anything after
        # it passed.
        good = len(password) <= MAX_PASSWORD and _bcrypt().checkpw(password, stored)
    except ValueError:          # bcrypt 5 refuses passwords over 72 bytes
        good = False
    if not good or consumer is None:
        return None
    if taken:
        authlib.give_back(budget[0], taken, budget[2])
    cache.put(mark, stored)
    return consumer


def budgets(conf, ctx, user):
    """The failed-check budgets a check of ``user`` from this client takes from, per host
    and across routes (keyed by the window, so that routes with different windows never
    share a count)."""
    store = ctx.services.local_store
    if store is None or not (conf["max_failures"] or conf["max_failures_per_user"]):
        return None         # no store: a context made outside a worker (unit tests)
    window = conf["failure_window"]
    user_key = hashlib.blake2b(user, digest_size=12).hexdigest()   # same in every worker
    client = authlib.client_of(ctx)
    return store, [(f"basic_auth:{window:g}:ip:{client}", conf["max_failures"]),
                   (f"basic_auth:{window:g}:user:{user_key}", conf["max_failures_per_user"])], \
        window


def access(conf, ctx):
    consumers.strip_client_copies(ctx)
    value = ctx.header_map.get(b"authorization")
    if value is None:
        return authlib.anonymous_or(conf, ctx, authlib.unauthorized(
            conf["challenge"], "a user name and password are required"), NAME)
    parsed = parse(value)
    if parsed is None:
        refused = authlib.unauthorized(conf["challenge"], "the Authorization header is not "
                                       "Basic credentials", "invalid_credentials")
        scheme = value.split(None, 1)[0].lower() if value.strip() else b""
        if scheme != b"basic":
            # Another scheme (a Bearer token for the route's jwt) is no Basic credential:
            # with an anonymous consumer, that one, and a later auth plugin may name another.
            return authlib.anonymous_or(conf, ctx, refused, NAME)
        return refused
    consumer = check(ctx.services.consumers, *parsed, conf["cache"],
                     budgets(conf, ctx, parsed[0]))
    if consumer is None:
        return authlib.unauthorized(conf["challenge"], "the user name or password is wrong",
                                    "invalid_credentials")
    if isinstance(consumer, Reply):
        return consumer         # 429: a budget of failed checks is spent
    if conf["hide_credentials"]:
        ctx.remove_header(b"authorization")
    consumers.identify(ctx, consumer)
    return None
