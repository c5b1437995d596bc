"""HPACK (RFC 7541) for the gateway's HTTP/2 clients, cheap in CPU: the blocks it sends, and
the request blocks a client repeats.

The h2 library's encoder (hpack) searches its dynamic table linearly for every field and
Huffman-codes every literal in Python: about 70% of h2's CPU per answer here. This one sends a
field that is in the static table by its index, and every other field as a literal *without*
indexing (name by static index when it has one), raw octets, no Huffman: a dict look-up and a
few byte joins per field. nginx's HTTP/2 module does not use the dynamic table for responses
either; the cost is some bytes per answer, never CPU.

A client repeating a request sends, once its fields are in the dynamic table, the same block of
one-byte indexed fields each time (h2load, browsers polling, gRPC stubs). Such a block reads
the table without changing it, so while the table stays as it was, its decoding is the last
one's: ``CachingDecoder`` keeps those, and forgets them all when a block may have changed the
table (any other block) or its size changes.

``CachingDecoder`` also refuses, before decoding it, a block larger as sent than the decoded
field list may be (``max_header_list_size``): hpack's Huffman decoder takes ~0.35 us an
encoded byte, and a block of its longest codes (30 bits) decodes at 1.5 us a character, so a
1 MiB block (HEADERS and 63 CONTINUATIONs) that decodes under the limit took half a second of
a worker. A real block is never larger as sent than decoded (HPACK counts 32 bytes a field on
top of name and value; a literal's own overhead is a few bytes).

Rules kept:
- Never inserting means no dynamic-table state to get wrong, and any table size the client
  sets is fine; a change of SETTINGS_HEADER_TABLE_SIZE is still acknowledged by a dynamic table
  size update at the start of the next block (RFC 7541 4.2; nghttp2 insists on it): the
  smallest size since the last block and the last one, however many changes came between.
- Fields arrive as (name, value) bytes pairs with lower-case names (the caller's rule).
"""
from time import perf_counter

import h2.errors
import h2.exceptions
from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.table import HeaderTable


def integer(value, prefix_bits, first=0):
    """RFC 7541 5.1: ``value`` with an N-bit prefix; ``first`` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


STATIC_FIELDS = {}      # (name, value) -> the indexed field's bytes
STATIC_INDEX = {}       # name -> its first index in the static table
for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    STATIC_FIELDS.setdefault((name, value), integer(index, 7, 0x80))
    STATIC_INDEX.setdefault(name, index)
STATIC_NAMES = {name: integer(index, 4) for name, index in STATIC_INDEX.items()}
NEVER_INDEXED = 0x10
CACHE_LIMIT = 1024      # encoded fields kept (server, via, content-type...); then cleared


def size_updates(pending, size):
    """The dynamic table size updates the next block starts with, after a change to ``size``
    (RFC 7541 4.2): the smallest size since the last block, then the last one if it is
    larger. One per change, a peer that sent SETTINGS between two of our blocks (500 a
    second pass the flood guard, for as long as a stream stays open) grew the list, and the
    block that finally went out, without bound."""
    smallest = min(pending[0], size) if pending else size
    return [smallest] if smallest == size else [smallest, size]


class FieldEncoder:
    """Stands in for ``hpack.Encoder`` on an ``h2`` connection: ``encode(headers)`` and the
    ``header_table_size`` h2 sets from the client's SETTINGS."""

    def __init__(self):
        self.cache = {}
        self.size_updates = []      # at most two: the smallest since the last block, the last
        self.table_size = 4096

    @property
    def header_table_size(self):
        return self.table_size

    @header_table_size.setter
    def header_table_size(self, value):
        if value != self.table_size:
            self.table_size = value
            self.size_updates = size_updates(self.size_updates, value)

    def encode(self, headers, huffman=False):
        cache = self.cache
        parts = []
        if self.size_updates:
            parts = [integer(size, 5, 0x20) for size in self.size_updates]
            self.size_updates = []
        for field in headers:
            if not getattr(field, "indexable", True):     # hpack.NeverIndexedHeaderTuple
                parts.append(self.field(field[0], field[1], NEVER_INDEXED))
                continue                # and not kept: credentials stay out of the cache
            encoded = cache.get(field)
            if encoded is None:
                encoded = self.field(field[0], field[1])
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[(field[0], field[1])] = encoded
            parts.append(encoded)
        return b"".join(parts)

    @staticmethod
    def field(name, value, pattern=0):
        """Indexed when (name, value) is in the static table; else a literal without
        indexing (pattern 0) or never indexed (0x10), RFC 7541 6.2.2 and 6.2.3."""
        if not pattern:
            indexed = STATIC_FIELDS.get((name, value))
            if indexed is not None:
                return indexed
            prefix = STATIC_NAMES.get(name)
        else:
            prefix = STATIC_INDEX.get(name)
            prefix = integer(prefix, 4, pattern) if prefix is not None else None
        if prefix is None:
            prefix = bytes([pattern]) + integer(len(name), 7) + name
        return b"".join((prefix, integer(len(value), 7), value))


class BlockUndecodable(h2.exceptions.ProtocolError):
    """A field block HPACK cannot decode: RFC 9113 4.3 makes it a connection error of type
    COMPRESSION_ERROR (h2 raised it as PROTOCOL_ERROR; h2spec 4.3 checks the code). h2 passes
    it through as it is, and ends the connection with its ``error_code``."""

    error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR


HIGH_BYTES = bytes(range(0x80, 0x100))
DECODED_LIMIT = 256     # repeated blocks kept; then cleared


class CachingDecoder(Decoder):
    """``hpack.Decoder`` that answers a block of one-byte indexed fields it has decoded since
    the dynamic table last changed from what it decoded then (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoded = {}
        # Blocks decoded whole: a field check that fails after this moved is a stream's
        # error, the dynamic table being in step (upstream.h2client tells the two apart).
        self.blocks = 0
        # What the last block cost to decode (0 when it was known): upstream.h2client weighs
        # a block it relays nowhere by it. By its bytes, 200-byte trailers that came late to
        # calls the gateway had reset weighed 26 each, and a connection with a few hundred
        # cancelled calls a second was cut as a flood; a block of size updates costs ~1 us
        # a byte, a usual block a small part of that.
        self.last_cost = 0.0

    @Decoder.header_table_size.setter
    def header_table_size(self, value):
        self.decoded.clear()
        Decoder.header_table_size.fset(self, value)

    def decode(self, data, raw=False):
        data = bytes(data)
        hit = self.decoded.get((data, raw))
        if hit is not None:
            self.blocks += 1
            self.last_cost = 0.0
            return list(hit)
        if len(data) > self.max_header_list_size:
            # h2 answers it as an HPACK bomb: ENHANCE_YOUR_CALM (see the module doc)
            raise OversizedHeaderListError(f"header block of {len(data)} bytes as sent, over "
                                           f"{self.max_header_list_size}")
        started = perf_counter()
        try:
            headers = super().decode(data, raw)
        except OversizedHeaderListError:
            raise                           # an HPACK bomb: h2's ENHANCE_YOUR_CALM
        except HPACKError as exc:
            raise BlockUndecodable(f"field block not decodable: {exc}") from exc
        self.last_cost = perf_counter() - started
        if data.translate(None, HIGH_BYTES):       # a literal or a size update: may change it
            self.decoded.clear()
        else:                                       # indexed fields only: read, not changed
            if len(self.decoded) >= DECODED_LIMIT:
                self.decoded.clear()
            self.decoded[(data, raw)] = tuple(headers)
        self.blocks += 1
        return headers
