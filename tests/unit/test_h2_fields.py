"""The gateway's HPACK encoder: what it sends decodes (hpack's decoder, as a client's would) to
exactly the fields given, static-table hits are one byte, and table size changes are
acknowledged."""
import pytest
from hpack import Decoder

from gwserver.core.h2fields import FieldEncoder, integer

FIELDS = [(b":status", b"200"), (b":status", b"201"), (b"content-type", b"application/json"),
          (b"x-trace-id", b"08bee38885522409e8213801369534d9"), (b"set-cookie", b"a=1"),
          (b"set-cookie", b"b=2"), (b"x-long", b"v" * 300), (b"x-" + b"n" * 200, b""),
          (b"grpc-message", b"%E2%9C%93")]


def test_a_block_decodes_to_the_fields():
    encoder, decoder = FieldEncoder(), Decoder()
    for _ in range(3):                  # the cached encodings too
        assert decoder.decode(encoder.encode(FIELDS), raw=True) == FIELDS
    assert len(decoder.header_table.dynamic_entries) == 0      # nothing is ever indexed


def test_static_fields_are_indexed():
    assert FieldEncoder().encode([(b":status", b"200"), (b":status", b"404")]) == b"\x88\x8d"


def test_a_table_size_change_starts_the_next_block():
    encoder, decoder = FieldEncoder(), Decoder()
    encoder.header_table_size = 0
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    decoder.header_table_size = 0
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]
    assert encoder.encode([(b":status", b"200")]) == b"\x88"


@pytest.mark.parametrize("value, bits, expected", [
    (10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (42, 8, b"\x2a"), (127, 7, b"\x7f\x00"),
])
def test_integers_as_rfc_7541_c1(value, bits, expected):
    assert integer(value, bits) == expected


def test_repeated_indexed_blocks_decode_as_hpack_does():
    """A client's requests through a table that changes between them: the caching decoder
    agrees with hpack's own decoder block by block."""
    from hpack import Encoder
    from gwserver.core.h2fields import CachingDecoder
    client, plain, caching = Encoder(), Decoder(), CachingDecoder()
    a = [(b":method", b"GET"), (b":path", b"/a"), (b"user-agent", b"t/1")]
    b = [(b":method", b"GET"), (b":path", b"/b"), (b"user-agent", b"t/1")]
    requests = [a] * 4 + [b] * 4 + [a] * 3
    hits = 0
    for i, fields in enumerate(requests):
        if i == 5:
            client.header_table_size = 64       # evicts: indices move
            caching.header_table_size = plain.header_table_size = 64
        block = client.encode(fields)
        hits += bool(caching.decoded.get((block, True)))
        assert caching.decode(block, raw=True) == plain.decode(block, raw=True) == fields
    assert hits >= 2


def test_never_indexed_fields_stay_so_and_out_of_the_cache():
    from hpack import NeverIndexedHeaderTuple
    encoder, decoder = FieldEncoder(), Decoder()
    fields = [NeverIndexedHeaderTuple(b"authorization", b"Bearer x"),
              NeverIndexedHeaderTuple(b"x-secret", b"s")]
    decoded = decoder.decode(encoder.encode(fields), raw=True)
    assert decoded == fields and all(not field.indexable for field in decoded)
    assert not encoder.cache


def test_a_block_larger_as_sent_than_the_list_may_be_is_refused_before_decoding():
    """A block of the slowest Huffman codes decodes under the list limit at 1.5 us a
    character; one larger as sent than the limit is refused without being decoded."""
    from hpack.exceptions import OversizedHeaderListError
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
    from gwserver.core.h2fields import CachingDecoder
    decoder = CachingDecoder()
    decoder.max_header_list_size = 1000
    value = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"\n" * 8) * 40
    block = b"\x00\x01x" + integer(len(value), 7, 0x80) + value      # 1,200 bytes, 320 decoded
    with pytest.raises(OversizedHeaderListError, match="as sent"):
        decoder.decode(block, raw=True)
    assert decoder.decode(block[:3] + integer(120, 7, 0x80) + value[:120], raw=True) == \
        [(b"x", b"\n" * 32)]
