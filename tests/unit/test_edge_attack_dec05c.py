"""The pure parts of the edge attack pass of 2026-12-05 (helper h2; the integration tests
are tests/integration/test_edge_attack_dec05c.py): which certificate an SNI name gets, and
which OCSP answers the helper may store over the last good one."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from gwserver.client.tls import server_tls
from gwserver.helpers.ocsp import OcspError, _check_current
from gwserver.settings import parse_conf

from ..pki import CA, _name

NOW = datetime.datetime.now(datetime.timezone.utc)
HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)


class Handshake:
    """What _pick_by_sni sees of a connection: the SNI name, and the context it sets."""

    def __init__(self, name):
        self.name, self.context = name, None

    def get_servername(self):
        return self.name

    def set_context(self, context):
        self.context = context


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    ca = CA(tmp_path_factory.mktemp("pki"))
    entries = [ca.issue("wild", hosts=("*.b.test",)), ca.issue("a", hosts=("a.test",)),
               ca.issue("deep", hosts=("x.y.b.test",)), ca.issue("api", hosts=("api.test",))]
    certificates = [{"cert": str(c), "key": str(k)} for c, k, _ in entries]
    certificates[3]["hosts"] = ["*.api.test"]
    tls = server_tls(parse_conf({"tls": {"certificates": certificates}, "routes": []}))
    return tls, {name: tls.contexts[i][1] for i, name in enumerate(("wild", "a", "deep", "api"))}


@pytest.mark.parametrize("sni, entry", [
    (b"x.y.b.test", "deep"),       # the exact name, not the first wildcard
    (b"X.Y.B.Test.", "deep"),      # read as Host is: any case, one trailing dot
    (b"a.test.", "a"),
    (b"x.b.test", "wild"),         # a certificate's wildcard: one label
    (b"b.test", "wild"),           # ... none at all: the default (the first entry)
    (b"v1.eu.api.test", "api"),    # a hosts wildcard: any depth, as routes' hosts
    (b"api.test.evil", "wild"),
    (b"a.test..", "wild"),         # one dot only
])
def test_sni_picks_the_entry_that_covers_the_name(sites, sni, entry):
    tls, contexts = sites
    handshake = Handshake(sni)
    tls._pick_by_sni(handshake)
    assert (handshake.context or tls.default) is contexts[entry]


ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = (x509.CertificateBuilder().subject_name(_name("CA")).issuer_name(_name("CA"))
          .public_key(ISSUER_KEY.public_key()).serial_number(1)
          .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
          .sign(ISSUER_KEY, hashes.SHA256()))


def ocsp_answer(status=ocsp.OCSPCertStatus.GOOD, this=NOW, following=NOW + DAY):
    """A signed answer (for the issuer itself: the certificate does not matter here)."""
    revoked = NOW - HOUR if status == ocsp.OCSPCertStatus.REVOKED else None
    builder = (ocsp.OCSPResponseBuilder()
               .add_response(ISSUER, ISSUER, hashes.SHA1(), status, this, following, revoked,
                             None)
               .responder_id(ocsp.OCSPResponderEncoding.HASH, ISSUER))
    der = builder.sign(ISSUER_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return ocsp.load_der_ocsp_response(der)


@pytest.mark.parametrize("answer", [
    ocsp_answer(),
    ocsp_answer(ocsp.OCSPCertStatus.REVOKED),           # stapled: the truth, told
    ocsp_answer(this=NOW + datetime.timedelta(minutes=4)),    # a clock a little ahead
    ocsp_answer(following=None),                        # no nextUpdate: newer any time
])
def test_current_answers_are_taken(answer):
    _check_current(answer, "http://ocsp.test", NOW.timestamp())


@pytest.mark.parametrize("answer, named", [
    (ocsp_answer(ocsp.OCSPCertStatus.UNKNOWN), "status unknown"),
    (ocsp_answer(this=NOW - 2 * DAY, following=NOW - DAY), "expired answer (nextUpdate"),
    (ocsp_answer(this=NOW + HOUR, following=NOW + DAY), "not valid yet (thisUpdate"),
])
def test_answers_a_client_would_refuse_are_refused(answer, named):
    with pytest.raises(OcspError, match=r"^responder http://ocsp\.test ") as caught:
        _check_current(answer, "http://ocsp.test", NOW.timestamp())
    assert named in str(caught.value)
