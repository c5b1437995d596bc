"""A raw-socket HTTP/1.1 upstream that misbehaves on purpose, chosen by path (urllib3's test
servers do the same). Run as its own process:  python tests/raw_upstream.py PORT

Keep-alive; requests are read with a minimal parser that trusts Content-Length only where the
path says so. Every request line is counted; GET /__stats (on any connection) returns the
counts as JSON.

  /ok               200 "ok"
  /extra            200 "first", and in the same write a second response "SECRET"
  /stray-later      200 "first"; 100 ms later a second response "SECRET" on the idle connection
  /no-body-read     200 "posted" at once, without reading the body: the body is parsed as the
                    next request on the connection (a CL.0 desync)
  /admin/secret     200 "SECRET"
  /204-late         204, then 5 ms later a response "INJECTED" (a body written after a 204)
  /early-hints      103 in its own segment, then 200 "final" with its head split in two
  /continue         an unasked 100 Continue, then 200 "final"
  /huge-head        a 30 MiB response head, written as fast as the gateway reads
  /switch           101 Switching Protocols to a request that did not ask to upgrade
  /identity         Transfer-Encoding: identity, 5000 bytes, then close
  /early-413        413 at once when the body is over 1 MiB, then stops reading (closes later)
  /junk             bytes that are not HTTP
  /reset-mid-body   a head promising 100000 bytes, 1000 of them, then a close
  /head-then-close  a head promising 1000 bytes, then a close before any of them
  /head-then-wait   a chunked head at once, its first chunk 1.5 s later (an event stream)
  /size-then-wait   the same, with the first chunk's size line 0.05 s after the head
  /no-answer        reads the request and closes without a byte
  /conn-named       200 whose Connection names X-Hop (hop-by-hop), beside X-Kept
  /conn-plain       200 with "Connection: Keep-Alive" (no other header named), beside X-Kept
  /conn-length      200 whose Connection names Content-Length (its framing) and X-Hop
  /early-answer     200 "early" as soon as the head is in, then reads and drops the body its
                    Content-Length announced, keeping the connection (nginx's `return` does
                    so): a body holding more than x and y bytes (another request's) and any
                    request after it on that connection count as /early-answer:reused
  /via-spaces       200 whose Via value holds 60,000 spaces
  /trailers         200 chunked "hello" with a trailer field X-Trailer: t1
  /204-length       204 with Content-Length: 7 (RFC 9110 8.6 forbids it)
  /lead-crlf        200 with two CRLFs before its status line (llhttp skips them)
  /100-crlf         100 Continue, a CRLF, then 200
  /bad-reason       200 whose reason phrase holds a control byte
  /request-id       200 with an X-Request-ID and an X-Trace-Id of its own
  /ows              200 whose Content-Length and X-A values end in white space (HTTP/1.1
                    allows it; HTTP/2 does not)
  /status-999       a status outside 100-599
  /drip-head        200 "ok" whose head comes a byte every 0.1 s (~3 s in all)
  /hint-upload      103 Early Hints as soon as the head is in, then reads the whole body and
                    answers 200 "got N"
  /split-413        as /early-413, with its head in two writes 0.3 s apart
  /late-413         as /early-413, 0.3 s after the head (the gateway is sending the body)
  /hint-late-413    as /late-413, with a 103 Early Hints at once
  /later-hint-413   as /late-413, with a 103 Early Hints 0.2 s after the head (the 413 0.3 s
                    after the 103)
  /drip-413         as /early-413, its head's first 40 bytes a byte every 0.1 s (~4 s)
  /crlf-413, /hints-413
                    as /early-413, after 40 blank lines (CRLFs, which llhttp skips before a
                    head) or 40 103 Early Hints heads, one every 0.1 s (~4 s)
  /no-read          reads the head, then neither reads nor answers for 10 s
  /split-100-upload as /hint-upload, with an unasked 100 Continue in two writes 0.5 s apart
  /late-100s-upload as /hint-upload, with two unasked 100 Continue heads 0.3 s after the head,
                    the first dripped a byte every 10 ms
  /retry-after      503 "busy" with Retry-After: 30 (come back in 30 s, not at once)
  /retry-after-0    503 "busy" with Retry-After: 0
  /retry-after-past 503 "busy" with Retry-After: a date gone by (come back now)
  /endless-ext      200 chunked, its first chunk-size line "1;" then a chunk extension that
                    never ends (4 KiB every 10 ms, for at most 20 s)
  /endless-trailer  200 chunked "x", its last chunk, then trailer fields that never end
                    (as fast, as long)
  /te-split         200 whose Transfer-Encoding comes in two lines, "chunked" then "identity"
                    (one list, RFC 9110 5.3: chunked not last), a chunked body, then a close
  /rst-mid-body     a head promising 100000 bytes, 1000 of them, then a reset (RST, not FIN)
  /rst-to-close     200 framed by the close (no length, not chunked), 1000 bytes, then a reset
  /drip-hint        a 103 Early Hints whose head comes a byte every 0.1 s (~4 s), then 200 "ok"
  /many-hints       24 103 Early Hints heads, one every 0.3 s (~7 s), then 200 "ok"
  /1xx-length, /1xx-chunked, /1xx-last-chunk
                    a 150 framed with a body (a head saying Content-Length: 0, or a
                    trailer), then a 200 whose body is a whole response of its own
"""
import json
import socket
import struct
import sys
import threading
import time

COUNTS = {}
LOCK = threading.Lock()


def response(body, status=b"200 OK", extra=b""):
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def read_body(conn, buf, length):
    """-> (a body of ``length`` bytes, what follows it), or (None, None) at EOF."""
    while len(buf) < length:
        data = conn.recv(65536)
        if not data:
            return None, None
        buf += data
    return buf[:length], buf[length:]


def skip_body(conn, buf, length):
    """Read past a body of ``length`` bytes; what follows it, or None at EOF."""
    return read_body(conn, buf, length)[1]


FAKE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Fake: 1\r\n\r\n"
INTERIM_WITH_BODY = {
    "/1xx-length": b"HTTP/1.1 150 X\r\nContent-Length: %d\r\n\r\n%s" % (len(FAKE_HEAD), FAKE_HEAD),
    "/1xx-chunked": b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                    % (len(FAKE_HEAD), FAKE_HEAD),
    "/1xx-last-chunk": b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                       b"X-Fake: 1\r\n\r\n",
}


def count(path):
    with LOCK:
        COUNTS[path] = COUNTS.get(path, 0) + 1


def serve(conn):
    buf = b""
    answered_early = False
    try:
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            path = head.split(b" ")[1].decode("latin-1") if b" " in head else ""
            count(path)
            if answered_early:
                count("/early-answer:reused")
            length = content_length(head)
            if path == "/early-answer":
                conn.sendall(response(b"early"))
                body, buf = read_body(conn, buf, length)
                if body is None:
                    return
                # The test's body is x and y bytes. Other bytes in it are the next request's,
                # sent on a connection whose body was cut; a body that came whole (a busy
                # host: the gateway sent it all before it saw the answer) leaves the
                # connection in step, fit for reuse.
                answered_early = bool(body.strip(b"xy"))
                if answered_early:
                    count("/early-answer:reused")
                continue
            if path == "/no-read":
                time.sleep(10)
                return
            if path in ("/hint-upload", "/split-100-upload", "/late-100s-upload"):
                if path == "/hint-upload":
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                elif path == "/late-100s-upload":
                    time.sleep(0.3)
                    for byte in b"HTTP/1.1 100 Continue\r\n\r\n":
                        conn.sendall(bytes([byte]))
                        time.sleep(0.01)
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                else:                       # an unasked 100 Continue, in two writes
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n")
                    time.sleep(0.5)             # the gateway sees half a head first
                    conn.sendall(b"\r\n")
                buf = skip_body(conn, buf, length)
                if buf is None:
                    return
                conn.sendall(response(b"got %d" % length))
                continue
            if path == "/no-body-read":
                conn.sendall(response(b"posted"))
                continue                        # the body stays in buf: the next "request"
            if path in ("/early-413", "/split-413", "/late-413", "/hint-late-413",
                        "/later-hint-413", "/drip-413", "/crlf-413", "/hints-413"):
                if length > 1 << 20:
                    answer = response(b"too large", b"413 Content Too Large",
                                      b"Connection: close\r\n")
                    if path == "/split-413":
                        conn.sendall(answer[:30])
                        answer = answer[30:]
                    elif path in ("/hint-late-413", "/later-hint-413"):
                        if path == "/later-hint-413":
                            time.sleep(0.2)
                        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                    elif path == "/drip-413":
                        for byte in answer[:40]:
                            conn.sendall(bytes([byte]))
                            time.sleep(0.1)
                        answer = answer[40:]
                    elif path in ("/crlf-413", "/hints-413"):
                        for _ in range(40):
                            conn.sendall(b"\r\n" if path == "/crlf-413" else
                                         b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                            time.sleep(0.1)
                    if path not in ("/early-413", "/drip-413", "/crlf-413", "/hints-413"):
                        time.sleep(0.3)
                    conn.sendall(answer)
                    time.sleep(5)               # reads nothing more, then goes away
                    return
            buf = skip_body(conn, buf, length)
            if buf is None or not handle(conn, path):
                return
    except OSError:
        pass
    finally:
        conn.close()


def handle(conn, path):
    """Answer one request; False closes the connection."""
    if path == "/__stats":
        with LOCK:
            conn.sendall(response(json.dumps(COUNTS).encode()))
    elif path == "/extra":
        conn.sendall(response(b"first") + response(b"SECRET"))
    elif path == "/stray-later":
        conn.sendall(response(b"first"))
        time.sleep(0.1)
        conn.sendall(response(b"SECRET"))
    elif path == "/204-late":
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        time.sleep(0.005)
        conn.sendall(response(b"INJECTED"))
    elif path == "/admin/secret":
        conn.sendall(response(b"SECRET"))
    elif path == "/204-length":
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
    elif path == "/trailers":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n"
                     b"\r\n5\r\nhello\r\n0\r\nX-Trailer: t1\r\n\r\n")
    elif path in ("/conn-named", "/conn-plain", "/conn-length"):
        named = {"/conn-named": b"keep-alive, X-Hop", "/conn-plain": b"Keep-Alive",
                 "/conn-length": b"Content-Length, X-Hop"}[path]
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Hop: secret\r\nConnection: " + named +
                     b"\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok")
    elif path == "/via-spaces":
        conn.sendall(b"HTTP/1.1 200 OK\r\nVia: 1.1 a" + b" " * 60000 + b"x\r\n"
                     b"Content-Length: 2\r\n\r\nok")
    elif path == "/lead-crlf":
        conn.sendall(b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Kept: 1\r\n"
                     b"Content-Length: 2\r\n\r\nok")
    elif path == "/100-crlf":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\nX-Kept: 1\r\n"
                     b"Content-Length: 2\r\n\r\nok")
    elif path in INTERIM_WITH_BODY:
        # A 1xx framed as if it had a body (it has none: RFC 9110 15.2), holding a head that
        # says Content-Length: 0; the final answer's body is a whole response of its own.
        conn.sendall(INTERIM_WITH_BODY[path] + response(response(b"INJECTED")))
    elif path == "/bad-reason":
        conn.sendall(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok")
    elif path == "/request-id":
        conn.sendall(response(b"ok", extra=b"X-Request-ID: upstream-own-id\r\n"
                                       b"x-trace-id: upstream-chosen\r\n"))
    elif path == "/ows":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\nX-A: b \t \r\n\r\nok")
    elif path == "/drip-head":
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 12:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)
        conn.sendall(b"\r\nContent-Length: 2\r\n\r\nok")
    elif path == "/drip-hint":
        for byte in b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n":
            conn.sendall(bytes([byte]))
            time.sleep(0.1)
        conn.sendall(response(b"ok"))
    elif path == "/many-hints":
        for _ in range(24):
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            time.sleep(0.3)
        conn.sendall(response(b"ok"))
    elif path == "/status-999":
        conn.sendall(b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok")
    elif path == "/early-hints":
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        time.sleep(0.05)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
        time.sleep(0.05)
        conn.sendall(b"ngth: 5\r\n\r\nfinal")
    elif path == "/continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.05)
        conn.sendall(response(b"final"))
    elif path == "/huge-head":
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        for _ in range(30 * 1024):
            conn.sendall(line)
        conn.sendall(b"Content-Length: 0\r\n\r\n")
    elif path == "/switch":
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\nraw bytes")
        return False
    elif path == "/identity":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n" + b"i" * 5000)
        return False
    elif path == "/reset-mid-body":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"r" * 1000)
        time.sleep(0.05)
        return False
    elif path == "/te-split":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Transfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        return False
    elif path in ("/rst-mid-body", "/rst-to-close"):
        conn.sendall(b"HTTP/1.1 200 OK\r\n%s\r\n" % (
            b"Content-Length: 100000\r\n" if path == "/rst-mid-body" else b"") + b"r" * 1000)
        time.sleep(0.05)
        # SO_LINGER 0: the close sends a RST, not a FIN
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    elif path == "/head-then-close":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        time.sleep(0.05)
        return False
    elif path in ("/head-then-wait", "/size-then-wait"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        if path == "/size-then-wait":
            time.sleep(0.05)        # after the head, within the gateway's wait for its body
            conn.sendall(b"c\r\n")
        time.sleep(1.5)
        conn.sendall(b"%sdata: hello\n\r\n0\r\n\r\n" %
                     (b"" if path == "/size-then-wait" else b"c\r\n"))
        return True
    elif path in ("/retry-after", "/retry-after-0"):
        wait = b"0" if path == "/retry-after-0" else b"30"
        conn.sendall(response(b"busy", b"503 Service Unavailable", b"Retry-After: %s\r\n" % wait))
    elif path == "/retry-after-past":
        conn.sendall(response(b"busy", b"503 Service Unavailable",
                              b"Retry-After: Sat, 01 Jan 2000 00:00:00 GMT\r\n"))
    elif path in ("/endless-ext", "/endless-trailer"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                     (b"1;" if path == "/endless-ext" else b"1\r\nx\r\n0\r\n"))
        piece = b"a" * 4096 if path == "/endless-ext" else b"X-T: " + b"t" * 4089 + b"\r\n"
        until = time.monotonic() + 20
        while time.monotonic() < until:        # until the gateway cuts it (an OSError)
            conn.sendall(piece)
            time.sleep(0.01)
        return False
    elif path == "/no-answer":
        return False
    elif path == "/junk":
        conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        return False
    else:
        conn.sendall(response(b"ok"))
    return True


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(256)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
