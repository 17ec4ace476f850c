"""Mutual TLS between the peers of one run: a certificate authority per run, a certificate per peer.

``tadlora certs DIR --run-id R --peers N`` writes::

    DIR/ca.pem, DIR/ca.key          the run's authority (keep ca.key off the peers' machines)
    DIR/peer-00.pem, peer-00.key    one certificate and key per peer id

A daemon given ``--tls-ca DIR/ca.pem --tls-cert DIR/peer-03.pem --tls-key DIR/peer-03.key``:

- serves gRPC over TLS and demands a client certificate signed by the same authority, so a process
  without one of this run's certificates cannot even open a stream;
- connects only to servers whose certificate that authority signed;
- refuses a message whose header names a sender other than the common name of the certificate it
  came with (reason ``identity``): a member cannot speak for another member.

Certificates: ECDSA P-256, the peer id as common name, the run id in the organisation field,
subject alternative names ``tadlora-peer`` (the name every client checks, since peers are found by
address) and the peer id; valid 10 years by default.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from peer.errors import UsageError

TLS_NAME = "tadlora-peer"  # the server name clients verify; every peer certificate carries it
RUN_PREFIX = "tadlora run "  # the authority's organisation field: "tadlora run <run-id>"
PEER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class TlsError(UsageError, ValueError):
    """Certificates that cannot work: missing, unreadable, not signed by the CA, of another run."""


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes a transport needs, checked to belong together (see ``load``)."""

    ca: bytes
    cert: bytes
    key: bytes
    peer_id: str
    run_id: str


def _x509():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    return x509, hashes, serialization, ec, NameOID


def _name(common_name: str, run_id: str):
    x509, _, _, _, NameOID = _x509()
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, RUN_PREFIX + run_id),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    _, _, serialization, _, _ = _x509()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_authority(folder: Path, run_id: str, days: int = 3650) -> None:
    """``ca.pem`` and ``ca.key`` for ``run_id`` in ``folder``; an existing authority is never replaced."""
    x509, hashes, serialization, ec, _ = _x509()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ca.pem").exists() or (folder / "ca.key").exists():
        raise TlsError(f"{folder} already holds an authority (ca.pem/ca.key); issue peers from it instead")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"tadlora CA {run_id}", run_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(folder / "ca.key", _key_pem(key))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_peer(folder: Path, peer_id: str, days: int = 3650) -> tuple[Path, Path]:
    """``<peer_id>.pem`` and ``.key`` signed by the authority in ``folder``."""
    x509, hashes, serialization, ec, _ = _x509()
    if not PEER_ID.fullmatch(peer_id):
        raise TlsError(f"peer id {peer_id!r}: use letters, digits, '.', '_' and '-' only")
    ca_cert, ca_key = _read_authority(folder)
    run_id = run_of(ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(peer_id, run_id))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME), x509.DNSName(peer_id)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{peer_id}.pem", folder / f"{peer_id}.key"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _read_authority(folder: Path):
    x509, _, serialization, _, _ = _x509()
    try:
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise TlsError(f"no authority in {folder} ({exc.filename} missing): run tadlora certs first") from None
    except ValueError as exc:
        raise TlsError(f"unreadable authority in {folder}: {exc}") from None
    return ca_cert, ca_key


def run_of(cert) -> str:
    """The run id in a certificate's organisation field ('' when absent)."""
    _, _, _, _, NameOID = _x509()
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = orgs[0].value if orgs else ""
    return value[len(RUN_PREFIX) :] if value.startswith(RUN_PREFIX) else ""


def load(ca: str | Path, cert: str | Path, key: str | Path, peer_id: str, run_id: str) -> TlsMaterial:
    """Read and cross-check a daemon's TLS files; every problem is a TlsError that says what to fix."""
    x509, _, serialization, _, NameOID = _x509()
    blobs = {}
    for what, path in (("CA certificate", ca), ("certificate", cert), ("key", key)):
        try:
            blobs[what] = Path(path).read_bytes()
        except OSError as exc:
            raise TlsError(f"TLS {what} {path}: {exc.strerror}") from None
    try:
        ca_cert = x509.load_pem_x509_certificate(blobs["CA certificate"])
        own = x509.load_pem_x509_certificate(blobs["certificate"])
        own_key = serialization.load_pem_private_key(blobs["key"], password=None)
    except ValueError as exc:
        raise TlsError(f"TLS files are not valid PEM: {exc}") from None
    try:
        own.verify_directly_issued_by(ca_cert)
    except Exception:
        raise TlsError(f"{cert} is not signed by the authority {ca}") from None
    if own_key.public_key().public_numbers() != own.public_key().public_numbers():
        raise TlsError(f"{key} is not the key of {cert}")
    common_name = own.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if common_name != peer_id:
        raise TlsError(f"{cert} is issued to {common_name!r}, but this daemon is {peer_id!r} (--peer-id)")
    if run_of(ca_cert) != run_id:
        raise TlsError(f"the authority {ca} belongs to run {run_of(ca_cert)!r}, this daemon to {run_id!r} (--run-id)")
    return TlsMaterial(blobs["CA certificate"], blobs["certificate"], blobs["key"], peer_id, run_id)


def make_run(folder: str | Path, run_id: str, peer_ids: list[str]) -> list[Path]:
    """An authority for ``run_id`` (created when missing) and a certificate per peer id."""
    folder = Path(folder)
    if not (folder / "ca.pem").exists():
        create_authority(folder, run_id)
    else:
        existing = run_of(_read_authority(folder)[0])
        if existing != run_id:
            raise TlsError(f"{folder} holds the authority of run {existing!r}, not {run_id!r}")
    return [issue_peer(folder, pid)[0] for pid in peer_ids]
