"""ssl contexts for talking TLS to an upstream, from its ``tls`` settings, shared by the
health prober and the HTTP/2 upstream client (the HTTP/1.1 pools hand the same settings to
urllib3: proxy.tls_options). None verifies with the system store."""
import logging
import ssl

from ..core.throttledlog import throttled_log
from ..errors import describe
from ..files import FileRefused, irregular_file, no_passphrase, stamp

log = logging.getLogger("gwserver.tls")

_CONTEXTS = {}      # (settings, ALPN offer) -> (the files' stamps, context)


def client_context(tls, alpn=()):
    """One context per distinct (settings, ALPN offer): building one reads the CA files.
    Built again when one of its files changed: the health checker outlives reloads, and
    kept the context of a CA file (or client certificate) rotated in place for its life,
    failing every target that had moved to the new CA while the workers served them."""
    key = (tls, tuple(alpn))
    stamps = _stamps(tls)
    cached = _CONTEXTS.get(key)
    if cached is not None and cached[0] == stamps:
        return cached[1]
    try:
        context = _build(tls, alpn)
    except (OSError, ValueError) as exc:        # (ssl.SSLError is an OSError)
        if cached is None:
            raise
        # A file rewritten in place (truncated, then written) or moved away a moment: every
        # probe failed on it and the checker took the upstream out, over a file of this
        # host. The last good context serves; the next use builds again.
        throttled_log.log(log, logging.WARNING, ("client tls files", tls),
                          "upstream tls files %s: cannot be read as they are now (%s); "
                          "the ones read before are used until they can", _files(tls),
                          describe(exc))
        return cached[1]
    _CONTEXTS[key] = (stamps, context)
    return context


def _build(tls, alpn):
    verify, ca_file, _, cert_file, key_file = tls or (True, None, None, None, None)
    # a FIFO or a device in a file's place blocked the whole process in OpenSSL's read
    irregular = irregular_file(ca_file, cert_file, key_file)
    if irregular is not None:
        raise FileRefused(irregular)
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        # no_passphrase: an encrypted key (replaced since the check) fails here, instead of
        # OpenSSL asking for its passphrase on the terminal of a helper run by hand
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _files(tls):
    return ", ".join(path for path in (tls[1], tls[3], tls[4]) if path)


def _stamps(tls):
    """What tells each file of ``tls`` from its previous version (a stat per file: once per
    probe, or per new HTTP/2 connection; never per request)."""
    if tls is None:
        return ()
    return tuple(stamp(path) for path in (tls[1], tls[3], tls[4]))  # (gone: _build says so)
