"""``gzip``: compress answers for clients that accept it (nginx's gzip module, APISIX's gzip).

    plugins.gzip = {types = ["application/json", "text/*"], min_length = 1024, level = 5}

An answer is compressed when the request's ``Accept-Encoding`` takes gzip (q > 0; as the
client sent it, whatever headers or rewrite told the upstream: ``identity`` there, to get plain
answers to compress, compressed nothing), its type is listed (``text/*`` matches every text
type), it is not already encoded, it is at least ``min_length`` bytes when its length is
known, it is not a 206 or an answer without a body
(a 204, 205 or 304), and it does not say ``Cache-Control: no-transform``. The body streams
through zlib piece by piece (the gateway reframes it as chunked): a large answer is never held
whole, a client that does not read stalls the upstream read instead of filling memory, and
each piece goes out compressed as it arrives (a sync flush), so an event stream is not held
back. A compressed
answer loses ``Accept-Ranges``: ranges of the upstream's bytes are not ranges of gzip's. A
HEAD gets the head the GET would (Content-Encoding, the weak ETag), without a length. ``Vary:
Accept-Encoding`` is added to every answer of a listed type, compressed or not, and to every
304 (as its 200 would say), so caches keep the two apart; a strong ``ETag`` becomes weak,
as the bytes differ, and so does the strong one of a 304 that answers ``If-None-Match``
with the weak one to a client that takes gzip. The upstream's digests of its bytes
(Content-Digest, Repr-Digest, Digest, Content-MD5) are dropped from a compressed answer.
``Vary`` and ``Cache-Control`` are read from all their lines (a list may be split over
several).
"""
import zlib

from ..core.headers import BODY_DIGESTS, NO_BODY_STATUSES
from ..core.schema import Field, Schema, boolean, integer, list_of, string

NAME = "gzip"
PRIORITY = 600          # last among response phases that edit headers: it sees their result

SCHEMA = Schema(
    Field("types", list_of(string(r"[a-z0-9.+-]+/([a-z0-9.+-]+|\*)", "a media type or type/*"),
                           min_items=1),
          lambda: ["text/html", "text/plain", "text/css", "text/xml", "application/json",
                   "application/javascript", "application/xml", "image/svg+xml"],
          "media types compressed (type/* for all subtypes)"),
    Field("min_length", integer(0), 1024,
          "answers with a Content-Length below this are sent as they are"),
    Field("level", integer(1, 9, "an integer from 1 to 9"), 5, "zlib compression level"),
    Field("vary", boolean, True,
          "add Vary: Accept-Encoding to answers of a listed type and to 304s"),
    doc="Compress answers with gzip for clients that accept it.",
)

# Not compressed: answers without a body; a 205 (RFC 9110 15.3.6: no content; compressing
# its empty body gave it 20 bytes of gzip); a 206 (ranges of the upstream's bytes).
NO_BODY = NO_BODY_STATUSES | {205, 206}


def prepare(conf):
    types = conf["types"]
    return {**conf, "exact": frozenset(t for t in types if not t.endswith("/*")),
            "families": tuple(t[:-1] for t in types if t.endswith("/*"))}


def accepts_gzip(value):
    """Does an Accept-Encoding value take gzip (RFC 9110 12.5.3: gzip or *, q > 0)?"""
    star = None
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, number = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q > 0
    return bool(star)


def add_vary(head):
    """Vary: Accept-Encoding, with every name the upstream's Vary lines hold (a list may
    come on several lines: the last alone dropped "Cookie" for a cache keyed on the rest)."""
    vary = head.header_list("vary")
    names = [name.strip() for name in (vary or "").split(",") if name.strip()]
    lower = {name.lower() for name in names}
    if "accept-encoding" not in lower and "*" not in lower:
        head.set_header("Vary", ", ".join(names + ["Accept-Encoding"]))


def revalidated(conf, ctx, head):
    """A 304 says the ETag the 200 would have said (RFC 9110 15.4.5). A client revalidating
    the weak tag this plugin made of the upstream's strong one gets the upstream's 304 with
    the strong one: a cache refreshing its headers from it would hold gzip bytes under the
    plain bytes' strong validator (and splice an If-Range's 206 of plain bytes into them)."""
    etag = head.header("etag")
    if etag is None or etag.startswith("W/"):
        return
    # A client that does not take gzip gets the plain bytes and their strong tag: a cache
    # holding both variants asks with both tags, and a weak one here had it serve the gzip
    # bytes (the stored answer of that tag) to this client.
    accept = ctx.sent_header("accept-encoding")
    if accept is None or not accepts_gzip(accept):
        return
    asked = ctx.sent_header("if-none-match")
    if asked is not None and "W/" + etag in asked:
        head.set_header("ETag", "W/" + etag)


def listed(conf, media):
    return media in conf["exact"] or media.startswith(conf["families"])


def response(conf, ctx, head):
    if head.status == 304:
        # A 304 says the Vary its 200 would (RFC 9110 15.4.5), to every client: one that
        # does not take gzip got none, and a cache refreshing the stored 200 from it mixed
        # the variants. A 304 seldom names its type: one that names an unlisted type is left.
        media = (head.header("content-type") or "").partition(";")[0].strip().lower()
        if conf["vary"] and (not media or listed(conf, media)):
            add_vary(head)
        revalidated(conf, ctx, head)
        return
    if head.status in NO_BODY or head.status < 200:
        return
    media = (head.header("content-type") or "").partition(";")[0].strip().lower()
    if not listed(conf, media):
        return
    if conf["vary"]:
        add_vary(head)
    accept = ctx.sent_header("accept-encoding")
    if accept is None or not accepts_gzip(accept):
        return
    if head.header("content-encoding") is not None or \
            "no-transform" in (head.header_list("cache-control") or "").lower():
        return
    length = head.header("content-length")
    if length is not None and length.isdigit() and int(length) < conf["min_length"]:
        return
    etag = head.header("etag")
    if etag is not None and not etag.startswith("W/"):
        head.set_header("ETag", "W/" + etag)
    head.set_header("Content-Encoding", "gzip")
    # The upstream's digests are of its bytes, not of these (a representation's coding is
    # part of it): a client that checks one refused every compressed answer as corrupt.
    if any(k.lower() in BODY_DIGESTS for k, _ in head.headers):
        head.headers = [(k, v) for k, v in head.headers if k.lower() not in BODY_DIGESTS]
    # Byte ranges of the upstream's bytes are not ranges of these: a client resuming this
    # download with Range would splice raw bytes into gzip (nginx clears it too).
    head.remove_header("Accept-Ranges")
    if ctx.method == "HEAD":
        # the head a GET would get (its ETag, its encoding), and no length: that of the
        # compressed body is not known before it is compressed
        head.remove_header("Content-Length")
        return
    compressor = zlib.compressobj(conf["level"], zlib.DEFLATED, 31)     # 31: gzip framing

    def compress(data, last):
        if last:
            return compressor.compress(data) + compressor.flush()
        if not data:
            return b""
        # The gateway sends each piece as it comes (an event stream, a long poll's lines):
        # zlib would hold a small one until kilobytes follow. A sync flush costs a few
        # bytes a piece, and a piece is at most what one read brought.
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    head.filter_body(compress)
