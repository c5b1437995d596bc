"""Declarative validation for the conf file, routes, upstreams and plugin configs.

A ``Schema`` is a list of ``Field``s. ``Schema.validate(obj, path)`` returns a new dict with
defaults filled, or raises ``ConfigError`` listing *every* problem as ``full.path: reason, got X``
(gunicorn's config.py declares each setting once; so do we, and docs come from the same list).

A check is a callable ``value -> normalised value`` that raises ``Invalid`` with a reason.
"""
import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from ..redact import mask_url, mask_userinfo
from .headers import FIELD_NAME, NOT_FORWARDED, is_field_value

REQUIRED = object()


class Invalid(ValueError):
    """A value failed a check; ``problems`` is a list of (sub-path, reason) pairs."""

    def __init__(self, reason, subpath=""):
        super().__init__(reason)
        self.problems = [(subpath, reason)]

    @classmethod
    def many(cls, problems):
        exc = cls("")
        exc.problems = problems
        return exc


def show(value):
    """How a bad value is quoted in an error message (a URL's user and password masked)."""
    if isinstance(value, str) and ("@" in value or "://" in value):
        value = mask_url(value)     # before quoting: a password's quote or space is its own
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:      # an int past Python's 4300-digit limit for text
            text = f"<{type(value).__name__} too large to show>"
    except RecursionError:      # arrays in arrays past the recursion limit (json took them)
        text = f"<{type(value).__name__} nested too deep to show>"
    if "@" in text:
        # (``redis+sentinel://:pw@a,b/m``: an error reaches `check`, the log and
        # /admin/config's rejected items)
        text = mask_userinfo(text)
    return text if len(text) <= 80 else text[:77] + "..."


def join(path, sub):
    if not sub:
        return path
    if sub.startswith("["):
        return path + sub
    return f"{path}.{sub}" if path else sub


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self):
        return self.default is REQUIRED

    def default_value(self):
        """The default; a callable default (list, dict) makes a fresh one each time, and so
        does a literal ``[]`` or ``{}``: one value shared by every route would let a plugin
        that appends to its conf change every other route's."""
        default = self.default
        if callable(default):
            return default()
        return copy.deepcopy(default) if isinstance(default, (list, dict, set)) else default


class Schema:
    """An object with declared fields; unknown keys are errors, never silently ignored."""

    def __init__(self, *fields, doc=""):
        self.fields = {f.name: f for f in fields}
        self.doc = doc

    def __call__(self, value):
        """A schema is also a check, so schemas nest."""
        if not isinstance(value, dict):
            raise Invalid(f"must be a table/object, got {show(value)}")
        out, problems = {}, []
        for key in value:
            if key not in self.fields:
                known = ", ".join(self.fields)
                problems.append((str(key), f"unknown key (known: {known})"))
        for name, field in self.fields.items():
            # An explicit null for an optional field means "absent" (JSON writers emit them).
            if name not in value or (value[name] is None and field.default is None):
                if field.required:
                    problems.append((name, "is required"))
                    continue
                try:
                    out[name] = _filled_default(field)
                except Invalid as exc:
                    problems.extend((join(name, sub), reason) for sub, reason in exc.problems)
                continue
            try:
                out[name] = field.check(value[name])
            except Invalid as exc:
                problems.extend((join(name, sub), reason) for sub, reason in exc.problems)
        if problems:
            raise Invalid.many(problems)
        return out

    def validate(self, value, path=""):
        try:
            return self(value)
        except Invalid as exc:
            raise ConfigError([": ".join(part for part in (path, sub) if part) + f": {reason}"
                               for sub, reason in exc.problems]) from None

    def partial(self, value, path=""):
        """(value, problems, names of the bad fields): every field that is bad is named and
        set to its default, so a checker can go on and find the problems further on in the
        same pass (``gwserver check`` names them all at once). The value is None when that
        cannot be done: not an object, or a required field bad or missing."""
        try:
            return self(value), [], set()
        except Invalid as exc:
            problems = [": ".join(part for part in (path, sub) if part) + f": {reason}"
                        for sub, reason in exc.problems]
            bad = {re.split(r"[.\[]", sub, maxsplit=1)[0] for sub, _ in exc.problems}
        if not isinstance(value, dict):
            return None, problems, bad
        out = {}
        for name, field in self.fields.items():
            try:
                if name in value and value[name] is not None:
                    out[name] = field.check(value[name])
                    continue
            except Invalid:
                pass
            if field.required:
                return None, problems, bad
            try:
                out[name] = _filled_default(field)
            except Invalid:
                out[name] = field.default_value()
        return out, problems, bad

    def defaults(self):
        return {name: f.default_value() for name, f in self.fields.items() if not f.required}


def _filled_default(field):
    """``field``'s default; a table's (a nested Schema's ``dict``) with its own fields'
    defaults filled, as a table the route writes is: left ``{}``, a plugin's
    ``conf["opts"]["ttl"]`` was a KeyError on every route that left ``opts`` out."""
    value = field.default_value()
    if isinstance(field.check, Schema) and isinstance(value, dict):
        value = field.check(value)
    return value


# -- checks ---------------------------------------------------------------------------------

MAX_INTEGER = 2 ** 62


def integer(minimum=None, maximum=None, what=None, refuse=None):
    """A check of integers from ``minimum`` to ``maximum`` (None: unbounded). Its message names
    the bounds unless ``what`` does: "must be an integer >= 64, got 0", not "an integer".
    ``refuse`` maps a value to why it is refused (a meaning another tool gives it, say)."""
    said = what is not None and f"{minimum}" in what and f"{maximum}" in what  # its bounds
    what = what or ("a positive integer" if minimum == 1 else
                    "a non-negative integer" if minimum == 0 else "an integer")
    if not said and maximum is not None:
        what += f" between {minimum} and {maximum}"
    elif not said and minimum not in (None, 0, 1):      # 0 and 1: "non-negative", "positive"
        what += f" >= {minimum}"
    refuse = refuse or {}

    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be {what}, got {show(value)}")
        if value in refuse:
            raise Invalid(f"must be {what}, got {show(value)} ({refuse[value]})")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise Invalid(f"must be {what}, got {show(value)}")
        if abs(value) > MAX_INTEGER:        # no count, size or time of ours comes near it
            raise Invalid(f"must be {what} of a sensible size, got {show(value)}")
        return value
    return check


def number(minimum=0.0, exclusive=False, maximum=None):
    what = "a positive number" if exclusive and minimum == 0 else f"a number >= {minimum}"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be {what}, got {show(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise Invalid(f"must be {what} of a sensible size, got {show(value)}") from None
        if not math.isfinite(value):        # nan passes every comparison; inf is no timeout
            raise Invalid(f"must be a finite number, got {show(value)}")
        if value < minimum or (exclusive and value == minimum) or \
                (maximum is not None and value > maximum):
            raise Invalid(f"must be {what}" + (f" and <= {maximum}" if maximum else "")
                          + f", got {show(value)}")
        return value
    return check


def fraction(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise Invalid(f"must be a number from 0 to 1, got {show(value)}")


def status_code(value):
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    raise Invalid(f"must be an HTTP status from 100 to 599, got {show(value)}")


def header_in_key(value):
    """Refuse a "header:NAME" or "cookie:NAME" key whose NAME is no header (cookie) name: no
    request sends it, so every request would key alike (one target, one group, one limit);
    outside latin-1 it could not even be encoded. Any other value is left to the caller's
    own check."""
    kind, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    if kind in ("header", "cookie") and name and not re.fullmatch(FIELD_NAME, name):
        what = "an HTTP header" if kind == "header" else "a cookie"
        raise Invalid(f"must name {what} (a token: letters, digits, "
                      f"!#$%&'*+-.^_`|~), got {show(value)}")


def request_key(value):
    """What a sticky choice hashes: "ip", or "header:", "cookie:", "claim:", "query:" NAME
    (read with RequestContext.value_of)."""
    if value == "ip":
        return value
    header_in_key(value)
    kind, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    if kind in ("header", "cookie", "claim", "query") and name:
        return value
    raise Invalid(f'must be "ip", "header:NAME", "cookie:NAME", "claim:NAME" or "query:NAME", '
                  f"got {show(value)}")


def boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {show(value)}")
    return value


def string(pattern=None, what="a string", allow_empty=False):
    regex = re.compile(pattern) if pattern else None

    def check(value):
        if not isinstance(value, str) or (not allow_empty and not value):
            raise Invalid(f"must be {what}, got {show(value)}")
        if regex and value and not regex.fullmatch(value):
            raise Invalid(f"must be {what}, got {show(value)}")
        return value
    return check


def never_quoted(check):
    """``check`` for a setting that is a secret (a token, a password): its errors never quote
    the value, they name its type. They reach `check`, the log when a reload is refused and,
    from etcd, /admin/config's rejected items."""
    def checked(value):
        try:
            return check(value)
        except Invalid as exc:
            kind = _KINDS.get(type(value), "value")
            raise Invalid(f"{_unquoted(str(exc))}, got a {kind} (not shown: a secret)") \
                from None
    return checked


def _unquoted(message):
    """What a check said of a value, without the value: its words before the first ", got "
    (the value quoted after them may hold one too: cut at the last, "pass, got it" showed
    "pass"), or none of them when the message has no such shape (it may quote the value)."""
    reason, got, _ = message.partition(", got ")
    return reason if got else "is not valid"


_KINDS = {str: "string", int: "number", float: "number", bool: "boolean", list: "list",
          dict: "table"}


def one_of(*choices):
    def check(value):
        if value not in choices:
            raise Invalid(f"must be one of {', '.join(map(show, choices))}, got {show(value)}")
        return value
    return check


def list_of(item_check, min_items=0, what=None):
    def check(value):
        if not isinstance(value, list):
            raise Invalid(f"must be a list, got {show(value)}")
        if len(value) < min_items:
            raise Invalid(f"must have at least {min_items} item(s)"
                          + (f" ({what})" if what else ""))
        out, problems = [], []
        for i, item in enumerate(value):
            try:
                out.append(item_check(item))
            except Invalid as exc:
                problems.extend((join(f"[{i}]", sub), r) for sub, r in exc.problems)
        if problems:
            raise Invalid.many(problems)
        return out
    return check


def map_of(value_check, key_check=None):
    def check(value):
        if not isinstance(value, dict):
            raise Invalid(f"must be a table/object, got {show(value)}")
        out, problems = {}, []
        for key, item in value.items():
            try:
                if key_check:
                    key_check(key)
                out[key] = value_check(item)
            except Invalid as exc:
                problems.extend((join(str(key), sub), r) for sub, r in exc.problems)
        if problems:
            raise Invalid.many(problems)
        return out
    return check


header_name = string(FIELD_NAME, "an HTTP header name")      # RFC 9110 token


def request_header_name(value):
    """A request header a plugin may set for the upstream: not one the gateway writes itself
    (a second Host or Content-Length upstream is a desync, an X-Consumer-ID an identity)."""
    name = header_name(value)
    if name.lower().encode("latin-1") in NOT_FORWARDED:
        raise Invalid(f"{name} is written by the gateway itself (Host, framing, hop-by-hop, "
                      f"X-Forwarded-*, Via, X-Request-ID, X-Consumer-*) and cannot be set here")
    return name


def header_value(value):
    if not isinstance(value, str):
        # Its type only: an Authorization written as a list (["Bearer ..."], a header of
        # several values) was quoted whole, the credential in it (see below)
        raise Invalid(f"must be a header value (text), got a "
                      f"{_KINDS.get(type(value), 'value')} (not shown: it may be a secret)")
    if not is_field_value(value):
        # Never quoted: a header value the config sets is often a credential for the
        # upstream (read from a file, with its newline), and this message goes to
        # `gwserver check`, the log and /admin/config.
        at, char = next((i, c) for i, c in enumerate(value) if not is_field_value(c))
        raise Invalid(f"must be a header value (latin-1 text without CR, LF, NUL or other "
                      f"control characters but tab), got {len(value)} characters with "
                      f"{ascii(char)} at offset {at}")
    return value


# A file or directory path: absolute, on one line, and without NUL, which no system call
# takes (TOML's "\u0000" is valid; os.open would raise "embedded null byte": no setting), or
# a lone surrogate (JSON's "\ud800"), which no file name encodes to.
absolute_path = string(r"/[^\x00\n\ud800-\udfff]*", "an absolute path")
absolute_path_or_empty = string(r"(/[^\x00\n\ud800-\udfff]*)?", "an absolute path or empty",
                                allow_empty=True)
file_path = string(r"[^\x00\ud800-\udfff]+", "a file path")        # relative too


def compile_pattern(text):
    """``text`` compiled by re, or ValueError with the reason: a repeat past 2**32
    (OverflowError) or groups nested past the recursion limit are no pattern either, and must
    be refused by their field, not left to "a value could not be checked"."""
    try:
        return re.compile(text)
    except (re.error, OverflowError) as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("groups nested too deep") from None


def backtrack_warnings(patterns, what, searched=False):
    """The warnings (a plugin's ``warnings`` hook) for those of ``patterns``, (where,
    pattern) pairs, that can backtrack exponentially, or polynomially (``split_runs``), on a
    client's near-miss ``what``. ``searched``: re.search'ed (else fullmatch'ed)."""
    warnings = []
    for where, pattern in patterns:
        if backtracks(pattern):
            warnings.append(f"{where} {show(pattern)} repeats a part of varying length: a "
                            f"client's near-miss {what} can hold a worker for seconds to "
                            f"minutes (make the repeat possessive, ++ *+, or the part fixed)")
        elif (runs := split_runs(pattern, searched)) >= 2:
            search = " (an unanchored search is one)" if searched and not _anchored(pattern) \
                else ""
            warnings.append(f"{where} {show(pattern)} has {runs} runs in a row that can take "
                            f"the same characters{search}, then a part that can fail: a "
                            f"client's near-miss {what} is tried split every way, ~n^{runs} "
                            f"steps (0.3 s for 8 KB with two, minutes with three; make each "
                            f"run stop at the part after it, [^-]* before a -)")
    return warnings


# A bounded run this long splits a near miss as an unbounded one does within its bound
# (split_runs): ^/a/(.{0,1000})-(.{0,1000})-(.{0,1000})\.json$ took 0.3 s on 600 dashes,
# minutes on 3 KB, unwarned; {0,255} three times in a row costs ~0.1 s at most
LONG_RUN = 256

# Characters a run's class is sampled at (split_runs): what a path or an Origin holds
_SAMPLE = [*range(32, 127), 0xE9]


def split_runs(pattern, searched=False):
    """The longest chain of unbounded (or LONG_RUN) runs of one character class (``.*``) in
    a row, each able to take characters the one before takes, that a part after them can
    fail: re tries every split of a near miss among them, ~n^k steps for k runs
    (``^/a/(.*)-(.*)-(.*)\\.json$`` on a path of 1,000 dashes: 1.4 s; of 8,000, minutes). A
    run is cut off from those after it by a character it cannot take (``([^/]*)/``: it ends
    at the slash, one way). A pattern re.search'es unanchored starts with a run of any
    character (the search's start positions). 0 or 1: linear."""
    from re import _constants as c, _parser
    try:
        tree = _parser.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return 0

    def flat(items):
        for op, av in items:
            if op is c.SUBPATTERN:
                yield from flat(av[-1])
            else:
                yield op, av

    # re.I (the pattern's, or a group's): the parse tree names one case of a letter, and
    # ``[a-z]*`` takes the "E" after it too (a run narrowed to that "E" was cut off)
    def ignores_case(items):
        for op, av in items:
            if op is c.SUBPATTERN and av[1] & c.SRE_FLAG_IGNORECASE:
                return True
            inner = {c.SUBPATTERN: lambda: [av[-1]], c.MAX_REPEAT: lambda: [av[2]],
                     c.MIN_REPEAT: lambda: [av[2]], c.POSSESSIVE_REPEAT: lambda: [av[2]],
                     c.BRANCH: lambda: av[1], c.ATOMIC_GROUP: lambda: [av]}.get(op)
            if inner and any(ignores_case(part) for part in inner()):
                return True
        return False
    folded = bool(tree.state.flags & c.SRE_FLAG_IGNORECASE) or ignores_case(tree)

    def chars(item):
        return frozenset(d for d in _SAMPLE if _may_match(item, d, c) or
                         folded and _may_match(item, ord(chr(d).swapcase()[0]), c))

    def one_char(op, av):
        return op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN)

    # (characters, split characters, chain length) of the runs not cut off yet. A run ends
    # where the part right after it starts: a later run chains on only if it can take those
    # (``(.*)-(\d+)\.html``: the digits after each dash are another stretch, one way each).
    # Only that first part narrows them; a run is cut off by one it cannot take itself
    # (``(.*)/edit/(.*)``: the first run takes the "e" too, and the second chains on)
    runs = []
    if searched and not _anchored(pattern):
        runs.append((frozenset(_SAMPLE), None, 1))
    worst = 0

    def may_fail(item=None):
        """A part that can fail after the runs so far; a character (``item``) cuts off the
        runs that cannot take it, and is where those it follows right away split."""
        nonlocal worst, runs
        worst = max([worst, *(n for _, _, n in runs)])
        taken = frozenset(_SAMPLE) if item is None else chars(item)
        runs = [(cs, cs & taken if ends is None else ends, n) for cs, ends, n in runs
                if item is None or cs & taken]

    for op, av in flat(tree):
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, body = av
            body = list(flat(body))
            single = len(body) == 1 and one_char(*body[0])
            if low > 0:
                may_fail(body[0] if single else None)      # its first characters
            # (a possessive run gives nothing back, yet scans each time the runs before it
            # move: counted as one)
            if high >= LONG_RUN and single:     # (c.MAXREPEAT: unbounded)
                taken = chars(body[0])
                chain = max((n for cs, ends, n in runs if (cs if ends is None else ends) & taken),
                            default=0)
                runs.append((taken, None, 1 + chain))
        elif one_char(op, av):
            may_fail((op, av))
        elif op in (c.BRANCH, c.GROUPREF, c.GROUPREF_EXISTS, c.ATOMIC_GROUP):
            may_fail()
    return worst


def _anchored(pattern):
    # after its inline flags: (?i)^/api/ is anchored, and no search's start positions
    return re.sub(r"^(\(\?[aiLmsux]+\))+", "", pattern).startswith(("^", "\\A"))


def backtracks(pattern):
    """Whether ``pattern`` repeats a part whose own length varies (``(a+)+``, ``(\\w+\\s?)*``,
    ``(.*,){9}``): on a near miss ``re`` tries every way of splitting the text among the
    repeats, exponentially many, and a worker that matches a client's path or Origin header
    against it serves nobody else meanwhile (34 characters took a worker past its timeout).
    Possessive repeats (``++``) and atomic groups (``(?>...)``) never backtrack. A heuristic
    ("star height" over 1), as re2 and linters use; a repeated part that is one character and
    a run of what cannot be that character (``([a-z0-9-]+\\.)*``, ``(?:/[^/]+)+``, the usual
    subdomains and path segments) splits one way, and is not named."""
    from re import _constants as c, _parser         # the parse tree re.compile uses

    def walk(items, repeated):
        for op, av in items:
            if op in (c.MAX_REPEAT, c.MIN_REPEAT):
                low, high, body = av
                if repeated and low != high or \
                        walk(body, repeated or high > 1 and not _delimited(body, c)):
                    return True
            elif op is c.SUBPATTERN and walk(av[-1], repeated):
                return True
            elif op is c.BRANCH and any(walk(branch, repeated) for branch in av[1]):
                return True
            elif op in (c.ASSERT, c.ASSERT_NOT) and walk(av[1], repeated):
                return True
            elif op is c.GROUPREF_EXISTS and any(walk(b, repeated) for b in av[1:] if b):
                return True
        return False
    try:
        return walk(_parser.parse(pattern), False)
    except (re.error, OverflowError, RecursionError):
        return False                # refused by the pattern's own check


_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
               "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}


def _delimited(body, c):
    """Whether a repeated ``body`` is a character D and a run (before or after it) of one
    character class without D: each repeat then ends (or starts) at a D, one way only. D is
    no letter, which IGNORECASE would let the class match in its other case."""
    items = list(body)
    if len(items) == 1 and items[0][0] is c.SUBPATTERN:
        items = list(items[0][1][-1])
    if len(items) != 2:
        return False
    for (op, d), (run_op, run) in (items, items[::-1]):
        if op is c.LITERAL and chr(d).lower() == chr(d).upper() and \
                run_op in (c.MAX_REPEAT, c.MIN_REPEAT) and len(run[2]) == 1 and \
                not _may_match(run[2][0], d, c):
            return True
    return False


def _may_match(item, d, c):
    """Whether the one-character ``item`` of a parse tree may match character ``d``."""
    op, av = item
    if op is c.LITERAL:
        return av == d
    if op is c.NOT_LITERAL:
        return av != d
    if op is not c.IN:
        return True                 # ANY, or what is no one character: assume it may
    negate, found = False, False
    for op, av in av:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            found = found or av == d
        elif op is c.RANGE:
            found = found or av[0] <= d <= av[1]
        elif op is c.CATEGORY and str(av) in _CATEGORIES:
            found = found or re.fullmatch(_CATEGORIES[str(av)], chr(d)) is not None
        else:
            return True
    return found != negate
