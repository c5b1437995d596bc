"""OCSP answers the helper must take (the issuer, a delegate it signed with the OCSPSigning
EKU, RSA-PSS from `openssl ocsp`), and those it must refuse (review of 2026-12-04)."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gwserver.helpers.ocsp import OcspError, _check_signature

NOW = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject, key, issuer_name, issuer_key, eku=None, pss=False, days=(-1, 3)):
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + datetime.timedelta(days=days[0]))
               .not_valid_after(NOW + datetime.timedelta(days=days[1])))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
    if pss:
        return builder.sign(issuer_key, hashes.SHA256(), rsa_padding=padding.PSS(
            padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH))
    return builder.sign(issuer_key, hashes.SHA256())


def answer(leaf, issuer, signer_cert, signer_key, certs=(), pss=False):
    builder = (ocsp.OCSPResponseBuilder()
               .add_response(leaf, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, NOW,
                             NOW + datetime.timedelta(days=1), None, None)
               .responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert))
    if certs:
        builder = builder.certificates(list(certs))
    if pss:
        der = builder.sign(signer_key, hashes.SHA256(), rsa_padding=padding.PSS(
            padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)) \
            .public_bytes(serialization.Encoding.DER)
    else:
        der = builder.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return ocsp.load_der_ocsp_response(der)


def pki(kind):
    make = (lambda: rsa.generate_private_key(65537, 2048)) if kind == "rsa" else \
        (lambda: ec.generate_private_key(ec.SECP256R1()))
    ca_key, leaf_key, resp_key = make(), make(), make()
    ca = cert("CA", ca_key, name("CA"), ca_key)
    leaf = cert("leaf", leaf_key, ca.subject, ca_key)
    return ca, ca_key, leaf, resp_key


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_the_issuer_itself(kind):
    ca, ca_key, leaf, _ = pki(kind)
    _check_signature(answer(leaf, ca, ca, ca_key), ca)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_a_delegated_responder_with_the_ocsp_signing_eku(kind):
    """What `openssl ocsp -rsigner responder.pem -rkey responder.key` sends: the responder's
    certificate (issued by the CA, OCSPSigning EKU) in the answer."""
    ca, ca_key, leaf, resp_key = pki(kind)
    delegate = cert("responder", resp_key, ca.subject, ca_key,
                    eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    _check_signature(answer(leaf, ca, delegate, resp_key, [delegate]), ca)


@pytest.mark.parametrize("eku, days", [(None, (-1, 3)), ([ExtendedKeyUsageOID.SERVER_AUTH],
                                                         (-1, 3)),
                                       ([ExtendedKeyUsageOID.OCSP_SIGNING], (-5, -1))])
def test_a_delegate_without_the_eku_or_expired_is_refused(eku, days):
    ca, ca_key, leaf, resp_key = pki("ec")
    delegate = cert("responder", resp_key, ca.subject, ca_key, eku=eku, days=days)
    with pytest.raises(OcspError):
        _check_signature(answer(leaf, ca, delegate, resp_key, [delegate]), ca)


def test_an_rsa_pss_signed_answer_from_the_issuer(tmp_path):
    """`openssl ocsp -rsigopt rsa_padding_mode:pss` (RFC 4055; `openssl ocsp -respin`
    verifies it): refused as "does not verify", since _verify tries PKCS1v15 only and
    OCSPResponse.signature_hash_algorithm raises UnsupportedAlgorithm for RSASSA-PSS."""
    import subprocess
    ca, ca_key, leaf, _ = pki("rsa")
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "req.der").write_bytes(ocsp.OCSPRequestBuilder().add_certificate(
        leaf, ca, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER))
    expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    (tmp_path / "index.txt").write_text(
        f"V\t{expiry}\t\t{leaf.serial_number:X}\tunknown\t/CN=leaf\n")
    subprocess.run(["openssl", "ocsp", "-index", "index.txt", "-rsigner", "ca.pem", "-rkey",
                    "ca.key", "-CA", "ca.pem", "-reqin", "req.der", "-respout", "resp.der",
                    "-rsigopt", "rsa_padding_mode:pss", "-ndays", "1"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=30)
    _check_signature(ocsp.load_der_ocsp_response((tmp_path / "resp.der").read_bytes()), ca)


def test_a_delegate_the_rsa_issuer_signed_with_pss():
    ca, ca_key, leaf, resp_key = pki("rsa")
    delegate = cert("responder", resp_key, ca.subject, ca_key,
                    eku=[ExtendedKeyUsageOID.OCSP_SIGNING], pss=True)
    _check_signature(answer(leaf, ca, delegate, resp_key, [delegate]), ca)
