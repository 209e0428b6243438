"""Per-mirror PKI: chain, names, modes, idempotence, reissue on change."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mirrorkit.errors import MirrorkitError
from mirrorkit.pki import ensure_mirror_pki, member_files

MEMBERS = {
    "node1": ("198.18.7.11", "failover"),
    "node2": ("198.18.7.12", "failover"),
    "arb1": ("198.18.7.13", "arbiter"),
    "dr1": ("198.18.7.14", "async"),
}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_ca_and_members_that_chain(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert ensure_mirror_pki(pki, "records", MEMBERS) is True
    ca = _cert(pki / "records" / "ca.crt")
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "mirrorkit records CA"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3649
    for host, (address, klass) in MEMBERS.items():
        ca_crt, crt, key = member_files(pki, "records", host)
        assert ca_crt == pki / "records" / "ca.crt"
        cert = _cert(crt)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        assert ou == klass
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [host]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 5 * 365 - 1
        assert _mode(key) == 0o600
    assert _mode(pki / "records" / "ca.key") == 0o600
    assert _mode(pki) == 0o700
    assert _mode(pki / "records") == 0o700


def test_chain_verifies_with_x509_store(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    ca_crt, crt, _ = member_files(tmp_path, "records", "node1")
    store = x509.verification.Store([_cert(ca_crt)])
    verifier = (
        x509.verification.PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.DNSName("node1"))
    )
    chain = verifier.verify(_cert(crt), [])
    assert len(chain) == 2


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    before = {p: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    assert ensure_mirror_pki(tmp_path, "records", MEMBERS) is False
    after = {p: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    assert before == after


def test_changed_address_or_class_reissues_only_that_member(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    _, node2_crt, node2_key = member_files(tmp_path, "records", "node2")
    _, arb_crt, _ = member_files(tmp_path, "records", "arb1")
    old_node2, old_key = node2_crt.read_bytes(), node2_key.read_bytes()
    old_arb = arb_crt.read_bytes()

    moved = dict(MEMBERS, node2=("198.18.7.22", "failover"))
    assert ensure_mirror_pki(tmp_path, "records", moved) is True
    assert node2_crt.read_bytes() != old_node2
    assert node2_key.read_bytes() == old_key  # keys are kept
    assert arb_crt.read_bytes() == old_arb
    san = _cert(node2_crt).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.7.22")]

    reclassed = dict(moved, arb1=("198.18.7.13", "async"))
    assert ensure_mirror_pki(tmp_path, "records", reclassed) is True
    ou = _cert(arb_crt).subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert ou[0].value == "async"
    assert ensure_mirror_pki(tmp_path, "records", reclassed) is False


def test_new_member_is_added(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    grown = dict(MEMBERS, dr2=("198.18.7.15", "async"))
    assert ensure_mirror_pki(tmp_path, "records", grown) is True
    assert member_files(tmp_path, "records", "dr2")[1].exists()


def test_member_cert_from_a_foreign_ca_is_replaced(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path / "a", "records", MEMBERS)
    ensure_mirror_pki(tmp_path / "b", "records", MEMBERS)
    _, a_crt, a_key = member_files(tmp_path / "a", "records", "node1")
    _, b_crt, b_key = member_files(tmp_path / "b", "records", "node1")
    b_crt.write_bytes(a_crt.read_bytes())
    b_key.write_bytes(a_key.read_bytes())
    assert ensure_mirror_pki(tmp_path / "b", "records", MEMBERS) is True
    _cert(b_crt).verify_directly_issued_by(_cert(tmp_path / "b" / "records" / "ca.crt"))


def test_loose_key_mode_is_tightened(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    key = member_files(tmp_path, "records", "node1")[2]
    key.chmod(0o644)
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    assert _mode(key) == 0o600


def test_mirrors_have_separate_cas(tmp_path: Path) -> None:
    ensure_mirror_pki(tmp_path, "records", MEMBERS)
    ensure_mirror_pki(tmp_path, "orders", MEMBERS)
    assert (tmp_path / "records" / "ca.crt").read_bytes() != (
        tmp_path / "orders" / "ca.crt"
    ).read_bytes()


@pytest.mark.parametrize(
    "members",
    [{"node1": ("not-an-ip", "failover")}, {"node1": ("198.18.7.11", "primary")}],
)
def test_bad_member_is_a_clear_error(tmp_path: Path, members: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(MirrorkitError, match="node1"):
        ensure_mirror_pki(tmp_path, "records", members)


# -- names that would leave the PKI directory (issue 7) -----------------------------


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("host", ["../../escaped", "a/b", "..", "", "x\0y", "/abs"])
def test_host_name_leaving_the_directory_writes_nothing(tmp_path: Path, host: str) -> None:
    pki = tmp_path / "deep" / "pki"
    before = _tree(tmp_path)
    with pytest.raises(MirrorkitError, match="cannot name a file in the PKI directory"):
        ensure_mirror_pki(pki, "records", {"node1": ("198.18.7.11", "failover"),
                                           host: ("198.18.7.12", "failover")})
    assert _tree(tmp_path) == before  # nothing written, not even the CA


@pytest.mark.parametrize("mirror", ["../records", "..", "a/b"])
def test_mirror_name_leaving_the_directory_writes_nothing(tmp_path: Path, mirror: str) -> None:
    with pytest.raises(MirrorkitError, match="mirror name"):
        ensure_mirror_pki(tmp_path / "pki", mirror, MEMBERS)
    assert _tree(tmp_path) == set()
    with pytest.raises(MirrorkitError):
        member_files(tmp_path / "pki", mirror, "node1")


def test_nearest_valid_names_are_accepted(tmp_path: Path) -> None:
    members = {"escaped": ("198.18.7.11", "failover"), "a_b.example": ("198.18.7.12", "async")}
    assert ensure_mirror_pki(tmp_path / "pki", "records", members) is True
    assert (tmp_path / "pki" / "records" / "escaped.key").is_file()


def test_a_symlinked_key_pointing_outside_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ensure_mirror_pki(pki, "records", MEMBERS)
    outside = tmp_path / "stolen.key"
    key = pki / "records" / "node1.key"
    key.unlink()
    key.symlink_to(outside)
    with pytest.raises(MirrorkitError, match="outside"):
        ensure_mirror_pki(pki, "records", MEMBERS)
    assert not outside.exists()


@pytest.mark.parametrize("host", ["ca", "CA"])
def test_a_member_named_ca_is_refused_and_never_gets_the_ca_key(tmp_path: Path,
                                                                  host: str) -> None:
    # Found in review: the member's key file was ca.key, the CA's own key.
    pki = tmp_path / "pki"
    ensure_mirror_pki(pki, "records", MEMBERS)
    ca_before = (pki / "records" / "ca.crt").read_bytes()
    with pytest.raises(MirrorkitError, match="reserved for the mirror's CA"):
        ensure_mirror_pki(pki, "records", {**MEMBERS, host: ("198.18.7.19", "async")})
    with pytest.raises(MirrorkitError, match="reserved"):
        member_files(pki, "records", host)
    assert (pki / "records" / "ca.crt").read_bytes() == ca_before
