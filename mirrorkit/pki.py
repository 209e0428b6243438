"""Per-mirror PKI on the controller: one CA per mirror, one certificate per member.

Layout (see docs/architecture.md, "PKI")::

    <pki_dir>/<mirror>/ca.key       0600, EC P-256
    <pki_dir>/<mirror>/ca.crt       CA, 10 years, CN "mirrorkit <mirror> CA"
    <pki_dir>/<mirror>/<host>.key   0600, EC P-256
    <pki_dir>/<mirror>/<host>.crt   CN=host, OU=member class, SAN=DNS host + IP, 5 years

`ensure_mirror_pki` is idempotent: it creates what is missing and reissues a
member certificate whose address, class, name or issuer no longer matches.
Existing keys are kept. Directories are 0700.

Every file it reads or writes is checked to lie directly in its directory
(names are single path components, resolved paths are inside): the
inventory's validation already refuses such names, and this is the second
line, so that `../../escaped` as a host name can never write `escaped.key`
elsewhere, nor a planted symlink redirect a key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mirrorkit.atomicfile import atomic_write
from mirrorkit.errors import MirrorkitError

MEMBER_CLASSES = ("failover", "arbiter", "async")
# The file stem of the mirror's CA in its PKI directory: no member may use it.
RESERVED_HOST = "ca"
CA_DAYS = 3650
MEMBER_DAYS = 5 * 365
# Reissue a member certificate that expires within this window.
RENEW_BEFORE = dt.timedelta(days=30)


def member_files(pki_dir: Path, mirror: str, host: str) -> tuple[Path, Path, Path]:
    """Return `(ca.crt, <host>.crt, <host>.key)` paths of one member on the controller;
    MirrorkitError if a name would leave its directory."""
    base = Path(pki_dir).expanduser()
    mdir = _inside(base, _component("mirror", mirror, mirror))
    name = _component("host", host, mirror)
    return (_inside(mdir, "ca.crt"), _inside(mdir, f"{name}.crt"), _inside(mdir, f"{name}.key"))


def _component(kind: str, name: object, mirror: object) -> str:
    """`name` if it is one path component that stays in its directory."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or not name.isprintable()
        or len(name.encode("utf-8", errors="surrogatepass")) > 200
    ):
        raise MirrorkitError(
            f"pki: mirror {mirror!r}: {kind} name {name!r} cannot name a file in the PKI "
            "directory; use a name without '/', not '.' or '..', of printable characters "
            "(mirrorkit validate checks this for the whole inventory)"
        )
    if kind == "host" and name.lower() == RESERVED_HOST:
        # ca.crt/ca.key are the mirror's CA: a member named "ca" would be
        # handed the CA's private key (and overwrite its certificate).
        raise MirrorkitError(
            f"pki: mirror {mirror!r}: a member may not be named {name!r}: the name is "
            "reserved for the mirror's CA files (ca.crt, ca.key); rename the host"
        )
    return name


def _inside(directory: Path, name: str) -> Path:
    """`directory / name`, refused if it resolves (symlinks followed) anywhere else."""
    path = directory / name
    real_dir = directory.resolve()
    if path.resolve().parent != real_dir:
        raise MirrorkitError(
            f"pki: {path} resolves to {path.resolve()}, outside {real_dir}; remove the "
            "symlink (each key and certificate lives directly in its mirror's directory)"
        )
    return path


def ensure_mirror_pki(pki_dir: Path, mirror: str, members: dict[str, tuple[str, str]]) -> bool:
    """Create or refresh the CA and member certificates of one mirror.

    members maps host -> (ip address, member class: failover|arbiter|async).
    Returns True only if something was created or replaced.
    """
    for host, (address, klass) in members.items():
        member_files(pki_dir, mirror, host)  # every name checked before anything is written
        if klass not in MEMBER_CLASSES:
            raise MirrorkitError(
                f"pki: mirror {mirror!r}, host {host!r}: member class {klass!r} is not one of "
                f"{', '.join(MEMBER_CLASSES)}"
            )
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise MirrorkitError(
                f"pki: mirror {mirror!r}, host {host!r}: {address!r} is not an IP address"
            ) from None
    base = Path(pki_dir).expanduser()
    changed = _ensure_dir(base)
    mdir = _inside(base, _component("mirror", mirror, mirror))
    changed = _ensure_dir(mdir) or changed
    ca_key, ca_key_changed = _ensure_key(_inside(mdir, "ca.key"))
    changed = changed or ca_key_changed
    ca_crt = _inside(mdir, "ca.crt")
    ca_cert = _load_cert(ca_crt)
    if ca_key_changed or ca_cert is None or not _ca_ok(ca_cert, ca_key, mirror):
        ca_cert = _make_ca(ca_key, mirror)
        atomic_write(ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        changed = True
    for host, (address, klass) in sorted(members.items()):
        _, crt_path, key_path = member_files(base, mirror, host)
        key, key_changed = _ensure_key(key_path)
        cert = _load_cert(crt_path)
        if (
            key_changed
            or cert is None
            or not _member_ok(cert, key, ca_cert, host, address, klass)
        ):
            cert = _make_member(ca_key, ca_cert, key, host, address, klass)
            atomic_write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            changed = True
    return changed


# -- helpers -----------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ensure_dir(path: Path) -> bool:
    created = False
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = True
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
        created = True
    return created




def _ensure_key(path: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            key = None
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            if path.stat().st_mode & 0o777 != 0o600:
                path.chmod(0o600)
            return key, False
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, 0o600)
    return key, True


def _load_cert(path: Path) -> x509.Certificate | None:
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _ca_name(mirror: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mirrorkit {mirror} CA")])


def _ca_ok(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, mirror: str) -> bool:
    return (
        _same_key(cert, key)
        and cert.subject == _ca_name(mirror)
        and cert.not_valid_after_utc - RENEW_BEFORE > _now()
    )


def _make_ca(key: ec.EllipticCurvePrivateKey, mirror: str) -> x509.Certificate:
    now = _now()
    name = _ca_name(mirror)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _member_name(host: str, klass: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, klass),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]
    )


def _member_ok(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    host: str,
    address: str,
    klass: str,
) -> bool:
    if not _same_key(cert, key) or cert.subject != _member_name(host, klass):
        return False
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE <= _now():
        return False
    try:
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    ips = san.get_values_for_type(x509.IPAddress)
    dns = san.get_values_for_type(x509.DNSName)
    return dns == [host] and ips == [ipaddress.ip_address(address)]


def _make_member(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    host: str,
    address: str,
    klass: str,
) -> x509.Certificate:
    now = _now()
    san = x509.SubjectAlternativeName(
        [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(address))]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_member_name(host, klass))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=MEMBER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
