"""TLS on the listener, with pyOpenSSL: certificates by SNI, minimum version, ciphers, ALPN,
session resumption across workers, and OCSP stapling.

Why pyOpenSSL and not the ``ssl`` module: the standard library cannot staple OCSP responses
(it has no server-side status callback); pyOpenSSL's ``set_ocsp_server_callback`` can.
gunicorn's own TLS path (``certfile``/``ssl_context``) wraps sockets with ``ssl``, so TLS
listeners are wrapped here instead, in the worker, after accept: ``TLSSocket`` drives an
``OpenSSL.SSL.Connection`` over the gevent socket's descriptor and parks the greenlet on the
socket's read/write events, exactly as gevent's own SSLSocket does.

Resumption across workers, reloads and hosts: the contexts are built in the master, before
workers fork, and seal tickets with keys that are not the context's own (tickets.py): those of
``ticket_key_files`` (shared by hosts, re-read on reload), or else one random key the master
makes at start and keeps across reloads. A ticket issued by one worker resumes on any other,
after a reload, and on another host with the same key files. A reload builds new contexts (and
reads the new certificates) for the new workers; old workers finish with the old ones.

OCSP: the ``gwserver: ocsp`` helper fetches responses from the responder named in each
certificate and writes them to the state directory; workers re-read them on their tick and
staple the current one. A response is stapled until its nextUpdate, so a responder that is
down costs nothing until then; the helper retries with backoff meanwhile.
"""
import datetime
import errno
import hashlib
import ipaddress
import logging
import os
import socket
import time

from OpenSSL import SSL

from ..errors import ConfigError
from ..files import private_key_problem
from ..net.proxy_protocol import PROXY_OFF, is_proxy_header
from ..net.sockets import UNREAD, idle_state
from ..sync.shm import file_stamp
from .tickets import key_file_warnings, process_key, read_key_files, ticket_api

log = logging.getLogger("gwserver.tls")

VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
OCSP_DIR = "ocsp"
# Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def cert_id(cert_pem_path):
    """A stable name for a certificate file's leaf: the SHA-256 of its DER."""
    from cryptography import x509
    with open(cert_pem_path, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    from cryptography.hazmat.primitives.serialization import Encoding
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()[:32]


def check_certificate(entry, strict, now=None, index=0):
    """Load one certificate entry (``tls.certificates[index]``); raise ConfigError naming the
    entry, the file and the problem; return (leaf x509, warnings)."""
    from cryptography import x509
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert_path, key_path = entry["cert"], entry["key"]
    where = f"tls.certificates[{index}]"
    for path, what in ((cert_path, "cert"), (key_path, "key")):
        if not os.path.isfile(path):
            raise ConfigError(f"{where}.{what}: file {path} does not exist")
    try:
        with open(cert_path, "rb") as f:
            data = f.read()
        leaf = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        # cryptography's words ("no BEGIN CERTIFICATE/END CERTIFICATE delimiters") did not
        # say that the file named is the key
        why = "it holds a private key: are cert and key swapped?" \
            if b"PRIVATE KEY-----" in data else exc
        raise ConfigError(f"{where}.cert: {cert_path} is not a PEM certificate ({why})") \
            from None
    warnings = []
    if leaf.not_valid_after_utc < now:
        problem = f"{where}.cert: certificate {cert_path} expired on " \
                  f"{leaf.not_valid_after_utc:%Y-%m-%d}"
        if strict:
            raise ConfigError(f"{problem} (tls.strict = true)")
        warnings.append(problem)
    elif leaf.not_valid_before_utc > now:
        problem = f"{where}.cert: certificate {cert_path} is not valid before " \
                  f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M}"
        if strict:
            raise ConfigError(f"{problem} (tls.strict = true)")
        warnings.append(problem)
    return leaf, warnings


def ocsp_warnings(cert_path, leaf):
    """What makes the ocsp helper fail for this certificate on every round (no responder in
    the certificate, no issuer after the leaf): said once by `check` and at start."""
    from ..helpers.ocsp import OcspError, load_chain, responder_url
    try:
        load_chain(cert_path)
        responder_url(leaf)
    except OcspError as exc:
        detail = str(exc).removeprefix(f"{cert_path}: ")
        return [f"tls.ocsp_stapling: {cert_path}: {detail}; nothing will be stapled for it "
                f"(a self-signed or private-CA certificate usually has no responder: set "
                f"ocsp_stapling = false)"]
    return []


def certificate_problems(tls, unreadable=()):
    """What is wrong with the certificate, key and ticket-key files of a [tls] section, for
    the conf check: the files are loaded the way the master will load them, and dropped.
    Each entry is loaded on its own, so that one bad pair does not hide the next; the
    entries at the indexes in ``unreadable`` (files the checker cannot open) are left out."""
    problems = []
    for i, entry in enumerate(tls["certificates"]):
        if i in unreadable:
            continue
        try:
            ServerTLS({**tls, "certificates": [entry]}, first_index=i)
        except ConfigError as exc:
            # a problem of the whole section (ciphers, ticket keys) once, not per entry
            problems.extend(p for p in exc.problems if p not in problems)
    return problems


def server_tls(conf):
    """The TLS listener's contexts for a validated conf, or None without [tls]. Reads the
    certificate and key files: a ConfigError names each bad one. The master builds this
    before forking (and before a reload, which a bad file refuses); `gwserver check` too."""
    if conf.tls is None:
        return None
    return ServerTLS(conf.tls, os.environ.get("GWSERVER_LOCAL_STATE"))


class ServerTLS:
    """The contexts of one configuration; built in the master (see the module doc)."""

    def __init__(self, conf, state_dir=None, first_index=0):
        self.conf = conf
        self.state_dir = state_dir
        self.contexts = []          # (host patterns, context, cert id)
        self.staples = {}           # cert id -> DER OCSP response
        self._exact = {}            # SNI name -> context of the first entry naming it
        self._wildcards = []        # (".suffix", one label only, context), in order
        self._staple_stamps = {}
        self.warnings = []
        for i, entry in enumerate(conf["certificates"], first_index):
            leaf, warnings = check_certificate(entry, conf["strict"], index=i)
            self.warnings += warnings
            if conf["ocsp_stapling"]:
                self.warnings += ocsp_warnings(entry["cert"], leaf)
            context = self._context(entry, i)
            hosts = entry["hosts"] or _names_of(leaf)
            if self.contexts:       # the first entry is the one those connections get
                self.warnings += address_warnings(entry["hosts"], i)
                if not hosts:
                    self.warnings.append(
                        f"tls.certificates[{i}].cert: {entry['cert']} names no DNS name (no "
                        f"subjectAltName dNSName): SNI never picks it; list the names it "
                        f"serves in tls.certificates[{i}].hosts")
            self.contexts.append((tuple(h.lower() for h in hosts), context,
                                  cert_id(entry["cert"])))
            self._index_names(hosts, context, one_label=not entry["hosts"])
        self.default = self.contexts[0][1]
        self.warnings += h2_cipher_warnings(conf)
        # Only the first context gets the SNI callback: the handshake starts there and may
        # move to another; session tickets are issued and checked with the first context's
        # keys (OpenSSL's session_ctx), which every worker shares.
        self.default.set_tlsext_servername_callback(self._pick_by_sni)
        self._tickets = self._ticket_keys(conf["ticket_key_files"])

    def _ticket_keys(self, files):
        """The keys from the files, or the master's own (tickets.process_key): the first
        context seals and opens every ticket with them."""
        api = ticket_api()
        if isinstance(api, str):
            if files:
                raise ConfigError(f"tls.ticket_key_files: this build of OpenSSL cannot be "
                                  f"given ticket keys ({api}); remove the setting")
            self.warnings.append(f"session tickets use OpenSSL's own keys, new at each "
                                 f"reload: the ticket-key callback is out of reach ({api})")
            return None
        keys = read_key_files(files) if files else [process_key()]
        self.warnings += key_file_warnings(files)
        return api.install(self.default, keys)

    def _context(self, entry, index):
        conf = self.conf
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(VERSIONS[conf["min_version"]])
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        try:
            context.set_cipher_list(conf["ciphers"].encode())
        except SSL.Error as exc:
            raise ConfigError(f"tls.ciphers: OpenSSL accepts none of {conf['ciphers']!r} "
                              f"({_reason(exc)})") from None
        try:
            context.use_certificate_chain_file(entry["cert"])
        except SSL.Error as exc:
            raise ConfigError(f"tls.certificates[{index}].cert: {entry['cert']}: "
                              f"{_reason(exc)}") from None
        # Named before OpenSSL reads it: for an encrypted key OpenSSL asks for the
        # passphrase on the terminal, and its reasons for the others were "PEM lib".
        problem = private_key_problem(entry["key"])
        if problem is not None:
            raise ConfigError(f"tls.certificates[{index}].key: {entry['key']} {problem}")
        try:
            context.use_privatekey_file(entry["key"])
        except SSL.Error as exc:
            reason = _reason(exc)
            if "mismatch" in reason:
                reason = f"does not match the certificate {entry['cert']}"
            raise ConfigError(f"tls.certificates[{index}].key: {entry['key']}: {reason}") \
                from None
        try:
            context.check_privatekey()
        except SSL.Error:
            raise ConfigError(f"tls.certificates[{index}]: the key {entry['key']} does not "
                              f"match the certificate {entry['cert']}") from None
        # Partial writes, and a retried write may come from a new buffer (we slice and copy):
        # what Python's own ssl module sets too.
        context.set_mode(SSL._lib.SSL_MODE_ENABLE_PARTIAL_WRITE |
                         SSL._lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        context.set_session_id(session_id_context(conf))
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        protocols = [p.encode() for p in conf["alpn"]]
        if protocols:
            context.set_alpn_select_callback(lambda conn, offered: select_alpn(protocols,
                                                                               offered))
        if conf["ocsp_stapling"]:
            ident = cert_id(entry["cert"])
            context.set_ocsp_server_callback(lambda conn, data: self.staples.get(ident, b""))
        return context

    def _index_names(self, hosts, context, one_label):
        """An entry's names for _pick_by_sni. A certificate's own ``*.example.com`` covers
        one label, as every client checks it (RFC 6125 6.4.3): taken for a.b.example.com,
        it was served there, refused by the client, while a later entry named that host.
        A ``hosts`` wildcard covers any depth, as routes' hosts do. A certificate without
        DNS names names nothing: taken for ``*``, it got every name no entry named, and the
        names of the wildcard entries after it, whose clients then refused it. An address
        names nothing either (address_warnings): clients send no SNI for one, and a client
        that sent "10.0.0.1" against RFC 6066 was the only one to get its entry. A name is
        read as the SNI name is, one trailing dot off: ``hosts = ["api.example.com."]``
        (DNS's spelling, which the check takes) matched nothing once the SNI name lost its
        dot, and its clients got the first entry."""
        for host in hosts:
            host = host.lower()
            if host.endswith(".") and host != ".":
                host = host[:-1]
            if _is_address(host):
                continue
            if host.startswith("*."):
                self._wildcards.append((host[1:], one_label, context))
            else:
                self._exact.setdefault(host, context)

    def _pick_by_sni(self, conn):
        """The entry naming the SNI host exactly, else the first whose wildcard covers it,
        else the first entry. The name as the Host header is read: any case, one trailing
        dot (``a.example.`` is a.example, which matched nothing and got the default)."""
        name = conn.get_servername()
        if not name:
            return
        name = name.decode("ascii", "replace").lower()
        if name.endswith("."):
            name = name[:-1]
        context = self._exact.get(name)
        if context is None:
            context = next((ctx for suffix, one_label, ctx in self._wildcards
                            if _covers(suffix, one_label, name)), self.default)
        if context is not self.default:
            conn.set_context(context)

    def refresh_staples(self):
        """Worker tick: pick up OCSP responses the helper wrote (file stamps compared: inode,
        mtime and size, see shm.file_stamp)."""
        if not self.conf["ocsp_stapling"] or self.state_dir is None:
            return
        directory = os.path.join(self.state_dir, OCSP_DIR)
        for _, _, ident in self.contexts:
            path = os.path.join(directory, f"{ident}.der")
            stamp = file_stamp(path)
            if stamp is not None and self._staple_stamps.get(ident) != stamp:
                self._staple_stamps[ident] = stamp
                with open(path, "rb") as f:
                    self.staples[ident] = f.read()
        now = time.time()
        for ident, staple in list(self.staples.items()):
            if staple and _next_update(staple) < now:     # never staple a stale answer
                log.warning("OCSP response for certificate %s expired; not stapled until the "
                            "responder answers again", ident)
                self.staples[ident] = b""

    def wrap(self, sock):
        return TLSSocket(sock, self.default)


def session_id_context(conf):
    """What OpenSSL binds a session to: it resumes one only under the same context. The TLS
    1.2 suites are in it: OpenSSL resumes a session over its suite whenever the client still
    offers it, whether ``ciphers`` still lists it or not, and the keys that seal tickets
    outlive reloads: a suite a reload took out went on serving the sessions made with it,
    for their lifetime (two hours). Now they get a full handshake, with a suite allowed."""
    return hashlib.sha256(b"gwserver\0" + conf["ciphers"].encode()).digest()    # 32 bytes


class NoApplicationProtocol(SSL.Error):
    """The client offers no protocol of tls.alpn: pyOpenSSL answers an exception from the
    ALPN callback with the fatal no_application_protocol alert, and raises it from the
    handshake (TLSSocket._io: "TLS handshake with ... failed: ... the client offers ...")."""


def select_alpn(protocols, offered):
    """The first of ``protocols`` (tls.alpn) the client offers. None in common is refused, as
    RFC 7301 3.2 says and nginx (1.21.4) and Go do: served without ALPN, a connection meant
    for another service sharing the certificate (an ``imap`` one: ALPACA) got HTTP, and an
    h2-only client a 400 to its preface. A client that offers HTTP/1.x is served it without
    ALPN as before (curl --http1.0's lone ``http/1.0``; Go falls back so too), and one that
    offers no ALPN at all is served as ever."""
    chosen = next((p for p in protocols if p in offered), None)
    if chosen is not None:
        return chosen
    if b"http/1.1" in offered or b"http/1.0" in offered:
        return SSL.NO_OVERLAPPING_PROTOCOLS
    # (the client's bytes, for the log: printable ASCII only)
    names = ", ".join("".join(chr(b) if 32 < b < 127 else "?" for b in p) for p in offered[:4])
    raise NoApplicationProtocol(f"the client offers no protocol of tls.alpn ({names})")


def address_warnings(hosts, index):
    """An IP address in an entry's ``hosts`` never picks it: clients send no SNI for an
    address (RFC 6066 3), so such connections get the first entry's certificate (for the
    first entry itself that is what its address asks: no warning)."""
    found = []
    for host in hosts or ():
        if not _is_address(host):
            continue
        found.append(f"tls.certificates[{index}].hosts: {host} is an address, and clients "
                     f"send no SNI for one: connections to it get the first entry's "
                     f"certificate, never this one")
    return found


def _is_address(host):
    """Is this ``hosts`` name an IP address (which no client sends as SNI)?"""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def h2_cipher_warnings(conf):
    """A TLS 1.2 suite HTTP/2 prohibits (RFC 9113 9.2.2: not ephemeral, or not AEAD), preferred
    over one it allows while tls.alpn offers h2: OpenSSL picks the suite before ALPN, by the
    server's order, and then h2, so a TLS 1.2 client that offers both got HTTP/2 over the
    prohibited one, which clients that enforce 9.2.2 (Firefox, nghttp2) refuse with
    INADEQUATE_SECURITY. Go's http2 refuses such an order as well."""
    if "h2" not in conf["alpn"] or conf["min_version"] == "TLSv1.3":
        return []
    # (a context of its own: pyOpenSSL refuses changes to one a Connection was made on)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_cipher_list(conf["ciphers"].encode())       # _context took it already
    suites = [name for name in SSL.Connection(context, None).get_cipher_list()
              if not name.startswith("TLS_")]          # TLS 1.3's: all allowed by h2
    allowed = [name for name in suites if _h2_allows(name)]
    if not allowed:
        return [f"tls.ciphers: HTTP/2 (tls.alpn offers h2) prohibits every TLS 1.2 suite of "
                f"{conf['ciphers']!r} (RFC 9113 9.2.2): TLS 1.2 clients that enforce it refuse "
                f"the h2 connection; add ECDHE-ECDSA-AES128-GCM-SHA256 or "
                f"ECDHE-RSA-AES128-GCM-SHA256"]
    before = suites[:suites.index(allowed[0])]
    if not before:
        return []
    return [f"tls.ciphers: HTTP/2 prohibits {', '.join(before)} (RFC 9113 9.2.2), preferred "
            f"here over {allowed[0]} while tls.alpn offers h2: a TLS 1.2 client that offers "
            f"both is given h2 over the prohibited suite, and clients that enforce the RFC "
            f"refuse the connection; list the ECDHE GCM and CHACHA20-POLY1305 suites first"]


def _h2_allows(name):
    """Is this OpenSSL TLS 1.2 suite one HTTP/2 allows: ephemeral key exchange and AEAD?"""
    return name.startswith(("ECDHE-", "DHE-")) and \
        any(aead in name for aead in ("-GCM-", "-CHACHA20-POLY1305", "-CCM"))


def _covers(suffix, one_label, name):
    """Does the wildcard ``*`` + ``suffix`` cover ``name`` (with at least one label more)?"""
    if not name.endswith(suffix) or len(name) == len(suffix):
        return False
    return not one_label or "." not in name[:len(name) - len(suffix)]


def _names_of(leaf):
    from cryptography import x509
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return names


def _next_update(der):
    from cryptography.x509 import ocsp
    try:
        response = ocsp.load_der_ocsp_response(der)
        return response.next_update_utc.timestamp() if response.next_update_utc else \
            float("inf")
    except (ValueError, AttributeError):
        return 0.0


def _reason(exc):
    try:
        return "; ".join(str(part[2]) for part in exc.args[0]) or str(exc)
    except (IndexError, TypeError):
        return str(exc)


# What OpenSSL says when the first "record" is the start of an HTTP/1.x request (GET, POST,
# HEAD, PUT; CONNECT): a plain-HTTP client on the TLS port.
PLAIN_HTTP_REASONS = frozenset(["http request", "https proxy request"])


class PlainHTTPRequest(OSError):
    """The handshake failed on a plain HTTP request (the worker answers it a 400 in clear)."""


class ClosedBeforeHello(OSError):
    """The client closed (or reset) before its first byte: a balancer's TCP health check
    (no line but at debug level, as on a PROXY listener)."""


class TLSSocket:
    """A server-side TLS connection over an accepted gevent socket, cooperative."""

    established = None      # when the handshake ended (client.waiting.handshake_just_ended)
    # Why a PROXY header before the ClientHello is refused (net.proxy_protocol): the worker
    # sets PROXY_TWICE where the listener took one already
    proxy_refused = PROXY_OFF

    def __init__(self, sock, context):
        self._sock = sock
        self.family = sock.family
        self.conn = SSL.Connection(context, sock._sock)
        self.conn.set_accept_state()

    def _io(self, operation, *args):
        sock = self._sock
        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                event = sock._read_event
            except SSL.WantWriteError:
                event = sock._write_event
            except SSL.ZeroReturnError:
                return 0
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] == -1:      # EOF without close_notify
                    return 0
                raise OSError(exc.args[0] if exc.args else errno.EIO, str(exc)) from None
            except SSL.Error as exc:
                reason = _reason(exc)
                if reason in PLAIN_HTTP_REASONS:
                    raise PlainHTTPRequest(errno.EPROTO, f"TLS: {reason}") from None
                raise OSError(errno.EPROTO, f"TLS: {reason}") from None
            if event is None:
                raise OSError(errno.EBADF, "socket closed")
            sock._wait(event)       # raises if the socket is closed meanwhile (a deadline)

    def do_handshake(self):
        self._refuse_plain_http()
        if self._io(self.conn.do_handshake) == 0:
            # (_io's EOF) served as a connection made, it was closed without a line: a
            # client that gives up mid-handshake (a version or cipher it did not like) was
            # seen nowhere, as nginx says "peer closed connection in SSL handshake"
            raise OSError(errno.ECONNRESET, "TLS: the client closed the connection "
                                            "mid-handshake")
        self.established = time.monotonic()

    def _refuse_plain_http(self):
        """Raise PlainHTTPRequest for a connection whose first byte is a letter (a method's,
        or the PRI of an h2c preface), never a TLS record's (a ClientHello starts 0x16):
        nginx tells plain HTTP by that byte too. OpenSSL names only the methods of its own
        list: a PROPFIND, a lowercase request or an h2c preface got a bare reset, not the
        400 that says to use https://."""
        try:
            first = self._sock.recv(12, socket.MSG_PEEK)    # left for OpenSSL to read
        except ConnectionResetError:    # a balancer's TCP check that closes with a reset
            first = b""
        if not first:
            raise ClosedBeforeHello(errno.ECONNRESET, "TLS: closed before the handshake")
        if is_proxy_header(first):
            raise OSError(errno.EPROTO, f"TLS: {self.proxy_refused}")
        if first[:1].isalpha():
            raise PlainHTTPRequest(errno.EPROTO, "TLS: http request")

    def recv_into(self, buf, nbytes=0):
        return self._io(self.conn.recv_into, buf, nbytes or len(buf))

    def recv(self, size):
        data = self._io(self.conn.recv, size)
        return data or b""

    def send(self, data):
        return self._io(self.conn.send, bytes(data) if isinstance(data, memoryview) else data)

    def has_unread_input(self):
        """Bytes the client sent that nobody read: decrypted ones the TLS layer holds, or any
        in the kernel. Records there are not decrypted to tell data from a key update or a
        close_notify (that would take the reader's place): all count, as a close over them
        resets the connection just the same."""
        return self.conn.pending() > 0 or idle_state(self._sock) is UNREAD

    def send_now(self, data):
        """Write ``data`` as one record without waiting (for the worker's timer, which must
        not), or raise OSError. A record the socket cannot take whole is left to the close
        that follows: the connection is being cut anyway."""
        try:
            return self.conn.send(data)
        except SSL.Error as exc:
            raise OSError(errno.EAGAIN, f"TLS: {_reason(exc)}") from None

    def sendall(self, data):
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            sent += self.send(view[sent:sent + 65536])

    def setsockopt(self, *args):
        self._sock.setsockopt(*args)

    def shutdown(self, how):
        try:
            self.conn.shutdown()        # close_notify, best effort (never waits)
        except SSL.Error:
            pass
        self._sock.shutdown(how)

    def close(self):
        self._sock.close()

    def fileno(self):
        return self._sock.fileno()

    @property
    def protocol(self):
        return self.conn.get_protocol_version_name()

    @property
    def alpn(self):
        return self.conn.get_alpn_proto_negotiated()

