"""``gwserver: ocsp``: fetch OCSP responses for the listener's certificates, once per host.

For each certificate with ``[tls] ocsp_stapling``: build a request (cryptography's
``OCSPRequestBuilder``) for the leaf and its issuer (the next certificate of the chain file),
POST it to the responder named in the leaf's Authority Information Access, check the answer
(successful, for this certificate, status good or revoked, current, signed by the issuer or a
responder it delegated to), and write the DER to ``STATE/ocsp/ID.der`` where workers pick it up.

Refresh: half-way between thisUpdate and nextUpdate (at most every ``ocsp_refresh`` seconds).
A responder that is down or answers garbage: retry with backoff (5 s doubling to 5 min), keep
the last good file; workers stop stapling it once its nextUpdate passes.
"""
import datetime
import logging
import os
import signal
import time

from ..errors import describe

log = logging.getLogger("gwserver.ocsp")


class OcspError(Exception):
    pass


def load_chain(path):
    from cryptography import x509
    with open(path, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    if len(chain) < 2:
        raise OcspError(f"{path}: OCSP stapling needs the issuer's certificate after the leaf "
                        f"in the chain file")
    return chain[0], chain[1]


def responder_url(leaf):
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        raise OcspError("the certificate names no OCSP responder (no AIA extension)") from None
    for description in aia:
        if description.access_method == AuthorityInformationAccessOID.OCSP:
            return description.access_location.value
    raise OcspError("the certificate names no OCSP responder")


# An OCSP answer is a few KiB (a delegated responder's certificate included): what a broken
# responder, or one on the plain-HTTP path between, sends beyond this is not read into memory.
MAX_ANSWER_BYTES = 256 * 1024


def fetch(cert_path, timeout=5.0):
    """-> (DER response, this_update, next_update unix time or None). Raises OcspError.

    ``timeout`` bounds the whole request (gevent.Timeout: the helper runs gevent-patched):
    requests' own timeout bounds the connect and each read, and a responder that drips its
    answer held the helper until the master killed it for its silence, again and again."""
    import gevent
    import requests
    import urllib3
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp
    leaf, issuer = load_chain(cert_path)
    url = responder_url(leaf)
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    late = OcspError(f"responder {url} sent no whole answer in {timeout:g} s")
    try:
        with gevent.Timeout(timeout, late), \
                requests.post(url, data=request.public_bytes(serialization.Encoding.DER),
                              headers={"Content-Type": "application/ocsp-request",
                                       # no compression: nothing to inflate past the cap
                                       "Accept-Encoding": "identity"},
                              timeout=timeout, stream=True,
                              # as nginx: whoever answers on the responder's plain-HTTP
                              # path must not send the helper to another (internal) address
                              allow_redirects=False) as resp:
            if resp.status_code != 200:
                moved = f" (to {resp.headers.get('Location', '')[:200]!r}: redirects are " \
                    f"not followed)" if resp.is_redirect else ""
                raise OcspError(f"responder {url} answered HTTP {resp.status_code}{moved}")
            body = resp.raw.read(MAX_ANSWER_BYTES + 1, decode_content=False)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        # (urllib3's own: the body is read from resp.raw, which requests does not wrap)
        raise OcspError(f"responder {url} unreachable: {describe(exc)}") from None
    if len(body) > MAX_ANSWER_BYTES:
        raise OcspError(f"responder {url} sent an answer over {MAX_ANSWER_BYTES} bytes")
    try:
        answer = ocsp.load_der_ocsp_response(body)
    except ValueError as exc:
        raise OcspError(f"responder {url} sent no OCSP response ({exc})") from None
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"responder {url}: {answer.response_status.name}")
    if answer.serial_number != leaf.serial_number:
        raise OcspError(f"responder {url} answered for another certificate")
    _check_signature(answer, issuer)
    _check_current(answer, url, time.time())
    if answer.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        log.error("certificate %s is REVOKED (per %s); stapling the revocation", cert_path, url)
    next_update = answer.next_update_utc.timestamp() if answer.next_update_utc else None
    return body, answer.this_update_utc.timestamp(), next_update


# How far a responder's clock may run ahead of ours (OpenSSL's OCSP_check_validity default).
CLOCK_SKEW = 300.0


def _check_current(answer, url, now):
    """Only a response a client takes may replace the last good one (OcspError otherwise):
    status good or revoked, thisUpdate not ahead of now, nextUpdate not passed. A stapled
    ``unknown`` makes Firefox refuse the site; an expired answer (a responder's stale
    cache, or one replayed on its plain-HTTP path) is never stapled by the workers, and a
    not-yet-valid one is refused by clients: each stored over a current response, it
    cost the site its staple, or its clients, until the next good one."""
    from cryptography.x509 import ocsp
    if answer.certificate_status == ocsp.OCSPCertStatus.UNKNOWN:
        raise OcspError(f"responder {url} answered status unknown for the certificate")
    this_update = answer.this_update_utc.timestamp()
    if this_update > now + CLOCK_SKEW:
        raise OcspError(f"responder {url} sent an answer not valid yet (thisUpdate "
                        f"{answer.this_update_utc:%Y-%m-%d %H:%M:%S} UTC)")
    if answer.next_update_utc is not None and answer.next_update_utc.timestamp() <= now:
        raise OcspError(f"responder {url} sent an expired answer (nextUpdate "
                        f"{answer.next_update_utc:%Y-%m-%d %H:%M:%S} UTC)")


def _verify_answer(key, answer):
    """Raises InvalidSignature, or TypeError/ValueError/UnsupportedAlgorithm for a signature
    ``key``'s type cannot have made. RSASSA-PSS (``openssl ocsp -rsigopt
    rsa_padding_mode:pss``): cryptography gives no hash of an OCSP answer's PSS parameters,
    so SHA-256, -384 and -512 are tried, with the salt length the signature says."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import SignatureAlgorithmOID
    signature, data = answer.signature, answer.tbs_response_bytes
    if isinstance(key, rsa.RSAPublicKey) and \
            answer.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        for digest in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
            try:
                return key.verify(signature, data, padding.PSS(padding.MGF1(digest),
                                                               padding.PSS.AUTO), digest)
            except InvalidSignature:
                continue
        raise InvalidSignature()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(answer.signature_hash_algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), answer.signature_hash_algorithm)
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
    else:
        raise TypeError(f"a {type(key).__name__} key")


def _check_signature(answer, issuer):
    """The issuer signed the answer, or a responder the issuer delegated to (RFC 6960
    4.2.2.2: a certificate the issuer *signed*, valid now, with the OCSPSigning EKU). Taking
    any certificate that only named the issuer made anyone who can answer the (plain http)
    request a responder."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.x509.oid import ExtendedKeyUsageOID
    signers, now = [issuer], datetime.datetime.now(datetime.timezone.utc)
    for candidate in answer.certificates:
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            continue
        try:
            candidate.verify_directly_issued_by(issuer)     # its issuer's name, and signature
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError,
                x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku:
            signers.append(candidate)
    for signer in signers:
        try:
            return _verify_answer(signer.public_key(), answer)
        except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
            continue
    raise OcspError("the OCSP response's signature does not verify (by the issuer or a "
                    "responder it authorised)")


def next_refresh(this_update, next_update, now, refresh_cap):
    if next_update is None:
        return now + refresh_cap
    halfway = this_update + (next_update - this_update) / 2
    return min(max(halfway, now + 5.0), now + refresh_cap)


def run(conf_path):
    from gevent import monkey
    monkey.patch_all()                  # fetch's deadline is a gevent.Timeout
    from ..errors import ConfigError
    from .helper import applied_conf, handlers_in_place, heartbeat, start_helper
    from ..sync.shm import atomic_write
    from ..client.tls import OCSP_DIR, cert_id
    conf, state_dir = start_helper(conf_path, "ocsp", state_dir_needed=True)
    directory = os.path.join(state_dir, OCSP_DIR)
    os.makedirs(directory, exist_ok=True)
    state = {"conf": conf}
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # A flag, read by the loop: patched by gevent, a handler runs in the event loop, where
    # a blocking call raises and an exception lands wherever the loop was.
    signal.signal(signal.SIGHUP, lambda *_: state.update(reload=True))
    handlers_in_place()
    due, backoff = {}, {}
    beat = heartbeat("ocsp").beat
    while True:
        if state.pop("reload", False):
            try:
                state["conf"] = applied_conf(conf_path)
                due.clear()
            except ConfigError as exc:
                log.error("ocsp: keeping the previous conf: %s", exc)
        tls = state["conf"].tls
        certificates = [c["cert"] for c in tls["certificates"]] \
            if tls and tls["ocsp_stapling"] else []
        now = time.time()
        beat(10.0)          # a turn: half a second, and each due certificate's fetch
        for path in certificates:
            if due.get(path, 0) > now:
                continue
            # a connect and a read timeout on each of the responder's addresses, and DNS
            beat(4 * tls["ocsp_timeout"] + 10.0)
            try:
                der, this_update, next_update = fetch(path, tls["ocsp_timeout"])
            except Exception as exc:    # whatever the answer was, the helper goes on
                if not isinstance(exc, (OcspError, OSError, ValueError)):
                    log.exception("OCSP for %s: the answer broke its check", path)
                delay = backoff[path] = min(300.0, backoff.get(path, 2.5) * 2)
                due[path] = now + delay
                log.error("OCSP for %s: %s; keeping the last response, retrying in %.0fs",
                          path, exc, delay)
                continue
            backoff.pop(path, None)
            atomic_write(os.path.join(directory, f"{cert_id(path)}.der"), der)
            due[path] = next_refresh(this_update, next_update, now, tls["ocsp_refresh"])
            log.info("OCSP response for %s stored (next update %s); next fetch in %.0fs", path,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(next_update))
                     if next_update else "none", due[path] - now)
        time.sleep(0.5)
