"""The upstream's head is taken apart with one regex over the raw bytes (speed); here it is
held to a line-by-line reading of the same rules on random heads."""
import random

import pytest

from gwserver.core.headers import RESPONSE_SPECIAL
from gwserver.upstream.proxy import Exchange

NAMES = [b"Content-Length", b"content-length", b"Connection", b"CONNECTION", b"Via", b"via",
         b"Keep-Alive", b"Upgrade", b"TE", b"Trailer", b"Proxy-Connection", b"X-A", b"X-Via",
         b"Vias", b"Te-X", b"Server", b"Date"]
VALUES = [b"1", b"keep-alive", b"close, X-A", b"Keep-Alive", b"1.1 edge", b"", b"a\tb c",
          b"timeout=5", b"upgrade, x-via", b"Content-Length, X-A"]
CODINGS = [b"chunked", b"identity", b"Chunked", b"identity, chunked"]
# What must never be read as this head: special lines in a 103 before it and in the body after
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nVia: 1.1 hint\r\nConnection: close, X-A\r\n" \
              b"Content-Length: 7\r\n\r\n"
BODY = b"Via: z\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nVia: second\r\n\r\n"


def read_by_lines(raw, status, informational):
    """The rules, one line at a time: drop hop-by-hop and Via lines (Upgrade kept on a 101),
    keep Content-Length in the block and note it, join Via values, note chunked framing, then
    drop what Connection names beside close/keep-alive/upgrade and Content-Length."""
    heads = raw.split(b"\r\n\r\n")
    lines = heads[informational].split(b"\r\n")[1:]
    kept, length, via, chunked, named = [], None, None, False, set()
    for line in lines:
        name, _, value = line.partition(b":")
        lower, value = name.lower(), value.strip(b" \t")
        if lower not in RESPONSE_SPECIAL or (lower == b"upgrade" and status == 101):
            kept.append(line)
            continue
        if lower == b"content-length":
            length = value
            kept.append(line)
        elif lower == b"via" and value:     # an empty Via line adds no member
            via = value if via is None else via + b", " + value
        elif lower == b"transfer-encoding":
            chunked = [c.strip().lower() for c in value.split(b",")][-1] == b"chunked"
        elif lower == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
    named -= {b"close", b"keep-alive", b"upgrade", b"content-length"}
    block = b"".join(line + b"\r\n" for line in kept
                     if line.partition(b":")[0].lower() not in named)
    return block, length, via, chunked


@pytest.mark.parametrize("seed", range(4))
def test_split_head_keeps_and_drops_what_the_rules_say(seed):
    rng = random.Random(seed)
    for _ in range(500):
        lines = [rng.choice(NAMES) + b":" + rng.choice([b"", b" ", b" \t"]) +
                 rng.choice(VALUES) + rng.choice([b"", b" "]) + b"\r\n"
                 for _ in range(rng.randint(0, 8))]
        if rng.random() < 0.3:
            lines.insert(rng.randint(0, len(lines)),
                         b"Transfer-Encoding: " + rng.choice(CODINGS) + b"\r\n")
        lines = b"".join(lines)
        informational = rng.choice([0, 0, 1])
        status = rng.choice([200, 404, 101])
        raw = (EARLY_HINTS * informational + b"HTTP/1.1 %d Reason\r\n" % status + lines +
               b"\r\n" + BODY)
        ex = Exchange.__new__(Exchange)
        ex.status, ex.informational, ex.head_raw = status, informational, raw
        ex.content_length = ex.via = None
        ex.chunked = False
        ex.split_head(1 << 20)
        assert (ex.block, ex.content_length, ex.via, ex.chunked) == \
            read_by_lines(raw, status, informational), raw
        assert ex.reason == b"Reason"
