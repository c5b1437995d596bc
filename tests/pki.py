"""A small test PKI with cryptography: a CA, server and client certificates (SAN, AIA OCSP
URL, any validity window), written as PEM files. Test helper only."""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def write_key(key, path):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class CA:
    def __init__(self, directory, name="gwserver test CA"):
        self.directory = directory
        self.key = _key()
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - datetime.timedelta(days=1))
                     .not_valid_after(NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.key_path = directory / "ca.key"
        write_key(self.key, self.key_path)

    def issue(self, name, hosts=("localhost",), ips=("127.0.0.1",), days=(-1, 30), ocsp_url=None,
              client=False, chain=True):
        """Write NAME.pem (leaf, then the CA when ``chain``) and NAME.key; return
        (cert path, key path, certificate)."""
        key = _key()
        builder = (x509.CertificateBuilder().subject_name(_name(name))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(NOW + datetime.timedelta(days=days[0]))
                   .not_valid_after(NOW + datetime.timedelta(days=days[1]))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName(h) for h in hosts] +
                       [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), False)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client else
                        ExtendedKeyUsageOID.SERVER_AUTH]), False))
        if ocsp_url:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp_url))]), False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if chain:
            pem += self.cert.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(pem)
        write_key(key, key_path)
        return cert_path, key_path, cert

    def ocsp_index(self, *certs, revoked=()):
        """index.txt for `openssl ocsp -index`: V (valid) or R (revoked) lines."""
        lines = []
        for cert in list(certs) + list(revoked):
            status = "R" if cert in revoked else "V"
            expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            revoked_at = NOW.strftime("%y%m%d%H%M%SZ") if status == "R" else ""
            subject = "/" + cert.subject.rfc4514_string().replace(",", "/")
            lines.append(f"{status}\t{expiry}\t{revoked_at}\t{cert.serial_number:X}\tunknown\t"
                         f"{subject}")
        path = self.directory / "index.txt"
        path.write_text("\n".join(lines) + "\n")
        return path


def tls_section(tmp_path, port, host="localhost"):
    """A conf's [tls] section listening on 127.0.0.1:``port`` with a certificate for ``host``
    (issued by a new CA in ``tmp_path``)."""
    cert, key, _ = CA(tmp_path).issue(host)
    return {"bind": [f"127.0.0.1:{port}"], "certificates": [{"cert": str(cert), "key": str(key)}]}
