"""X.509 with the `cryptography` package: a cluster CA, certificates it signs, and reading them.

No openssl shell-out. Keys are ECDSA P-256 (small, fast handshakes; PostgreSQL, etcd, HAProxy and
Python's ssl all accept them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from videodb.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 825
BACKDATE = dt.timedelta(minutes=5)  # clocks of the hosts may differ a little
CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and private key."""

    cert: x509.Certificate
    key: CAKey  # ours are EC; your own CA may be RSA

    def __repr__(self) -> str:
        return f"Authority({self.cert.subject.rfc4514_string()})"

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)


@dataclass(frozen=True)
class Issued:
    """A leaf certificate and its key, as PEM text."""

    cert_pem: str
    key_pem: str


def key_pem(key: CAKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def new_authority(name: str, days: int = CA_DAYS) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def load_authority(cert_pem: str, key_pem_text: str, where: str) -> Authority:
    """A CA from PEM text (yours or ours); `where` names it in the error."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem_text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the cluster CA in {where} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"the CA key in {where} is neither an EC nor an RSA key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(f"the CA certificate and key in {where} do not belong together")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"the certificate in {where} is not a CA (basicConstraints CA:TRUE)")
    return Authority(cert, key)


def issue(
    ca: Authority,
    common_name: str,
    *,
    dns: list[str] = [],  # noqa: B006 - never mutated
    ips: list[str] = [],  # noqa: B006
    server: bool = True,
    client: bool = True,
    days: int = LEAF_DAYS,
) -> Issued:
    """A new key and a certificate for it signed by `ca` (never a key reused across hosts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key))


def read_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file; ConfigError naming the file when it is missing or bad."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"certificate {path} is missing") from None
    except OSError as exc:
        raise ConfigError(f"certificate {path} cannot be read ({exc.strerror})") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"certificate {path} is not a PEM certificate: {exc}") from exc
    return certs


@dataclass(frozen=True)
class CertInfo:
    """What `status` shows of one certificate."""

    path: Path
    subject: str
    issuer: str
    serial: int
    not_after: dt.datetime
    names: tuple[str, ...]

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds() / 86400


def cert_info(path: Path, cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in san)
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(
        path,
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        cert.serial_number,
        cert.not_valid_after_utc,
        names,
    )


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature has no common base
        return False
    return True
