"""Attack pass of 2026-12-05 (helper h3), pure code: the HPACK encoder's table size updates.

1. Each SETTINGS_HEADER_TABLE_SIZE change a peer sent was kept for the next block the
   gateway encodes, one size update each: a client that holds a stream open (a slow answer,
   a long gRPC stream) and sends 500 SETTINGS a second (what the control-frame guard lets
   through) grew the list by 500 entries a second for as long as the stream lasted, and the
   answer's head then carried all of them. RFC 7541 4.2 asks for two at most: the smallest
   size since the last block, then the last one.
"""
from hpack import Decoder

from gwserver.core.h2fields import FieldEncoder


def test_table_size_changes_between_two_blocks_are_at_most_two_updates():
    encoder, decoder = FieldEncoder(), Decoder()
    for i in range(10_000):
        encoder.header_table_size = 4000 + i % 2 * 96         # 4000, 4096, 4000, ...
    encoder.header_table_size = 1000
    encoder.header_table_size = 2048
    assert len(encoder.size_updates) <= 2
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x3f\xc9\x07" + b"\x3f\xe1\x0f" + b"\x88"       # 1000, then 2048
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]
    assert decoder.header_table.maxsize == 2048
    assert encoder.encode([(b":status", b"200")]) == b"\x88"          # signalled once


def test_a_size_that_ends_as_the_smallest_is_one_update():
    encoder = FieldEncoder()
    encoder.header_table_size = 8192
    encoder.header_table_size = 0
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"
