"""The internal CA and certificates for gRPC between Quarry's own processes (mutual TLS).

With QUARRY_INTERNAL_TLS on, every gRPC server asks each client for a certificate signed
by the internal CA and every channel presents one, so a service talks only to Quarry's
own processes (and admins given a certificate). One certificate, `quarry-internal`, is
both server and client certificate for every process by default: mTLS here says "one of
ours", and the admin token still says which admin. Its SANs list the names the services
are reached by (Kubernetes service names, compose names, loopback), so ordinary hostname
checking works; QUARRY_INTERNAL_TLS_SERVER_NAME covers addresses outside that list.

This CA is not the gateway's (quarry/encryption/gateway_certificates.py): osquery pins the gateway's
CA, and a node certificate from it must never open the internal ports.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from quarry.encryption.certificate_authority import (
    CLIENT_AUTH,
    SERVER_AUTH,
    ca_certificate,
    certificate_pem,
    key_pem,
    load_ca,
    new_key,
    signed_certificate,
)
from quarry.runtime.file_writes import write_atomically
from quarry.runtime.settings import Settings
from quarry.state.directory import internal_tls_dir

CA_NAME = "ca"
SHARED_CERT_NAME = "quarry-internal"
CA_VALIDITY = datetime.timedelta(days=3650)
CERT_VALIDITY = datetime.timedelta(days=825)
# Names the gRPC services are reached by in deploy/ (Kubernetes Services, compose
# services) and on one machine.
DEFAULT_SANS = (
    SHARED_CERT_NAME,
    "localhost",
    "127.0.0.1",
    "::1",
    "quarry-enroll",
    "quarry-config",
    "quarry-distributed",
    "quarry-ingest",
    "quarry-detection",
    "enroll",
    "config",
    "distributed",
    "ingest",
    "detection",
)


@dataclass(frozen=True)
class InternalTlsFiles:
    """The CA every process trusts, and this process's certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) as PEM bytes; a clear error naming a missing file."""
        missing = [str(p) for p in (self.ca_cert, self.cert, self.key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                "QUARRY_INTERNAL_TLS is on but these files are missing: "
                + ", ".join(missing)
                + " (make them with `quarry tls internal init`; docs/security.md)"
            )
        return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def internal_tls_files(settings: Settings) -> InternalTlsFiles:
    """The files named by the settings, each defaulting to state_dir/internal-tls/."""
    folder = internal_tls_dir(settings)
    return InternalTlsFiles(
        Path(settings.internal_tls_ca or folder / f"{CA_NAME}.pem"),
        Path(settings.internal_tls_cert or folder / f"{SHARED_CERT_NAME}.pem"),
        Path(settings.internal_tls_key or folder / f"{SHARED_CERT_NAME}.key"),
    )


def ensure_internal_ca(folder: Path) -> tuple[Path, bool]:
    """folder/ca.pem (and its key, owner-only), created when missing; (path, created)."""
    cert_path, key_path = folder / f"{CA_NAME}.pem", folder / f"{CA_NAME}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, False
    folder.mkdir(parents=True, exist_ok=True)
    key = new_key()
    # A name of its own: during a CA rotation both CAs are trusted at once, and verifiers
    # find a certificate's issuer by name, so two CAs named alike would shadow each other.
    now = datetime.datetime.now(datetime.UTC)
    common_name = f"Quarry internal CA {now:%Y-%m-%d} {secrets.token_hex(4)}"
    write_atomically(key_path, key_pem(key), 0o600)
    write_atomically(
        cert_path, certificate_pem(ca_certificate(key, common_name, CA_VALIDITY)), 0o644
    )
    return cert_path, True


def issue_certificate(
    ca_folder: Path, name: str, sans: list[str], out_dir: Path
) -> tuple[Path, Path]:
    """A certificate for server and client use, signed by the CA in ca_folder.

    Written as out_dir/NAME.pem and NAME.key (owner-only); its SANs are `sans` (DNS names,
    wildcards or IP addresses). Returns (certificate path, key path).
    """
    key = new_key()
    certificate = signed_certificate(
        key, _load_ca(ca_folder), name, sans, [SERVER_AUTH, CLIENT_AUTH], CERT_VALIDITY
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    write_atomically(key_path, key_pem(key), 0o600)
    write_atomically(cert_path, certificate_pem(certificate), 0o644)
    return cert_path, key_path


def ensure_shared_certificate(
    folder: Path, extra_sans: list[str], renew: bool = False
) -> tuple[Path, Path, bool]:
    """The CA and the shared `quarry-internal` certificate in folder; (cert, key, issued).

    An existing certificate is kept unless renew (same CA, so nothing else changes).
    """
    ensure_internal_ca(folder)
    cert_path, key_path = folder / f"{SHARED_CERT_NAME}.pem", folder / f"{SHARED_CERT_NAME}.key"
    if cert_path.exists() and key_path.exists() and not renew:
        return cert_path, key_path, False
    sans = list(dict.fromkeys([*DEFAULT_SANS, *extra_sans]))
    cert_path, key_path = issue_certificate(folder, SHARED_CERT_NAME, sans, folder)
    return cert_path, key_path, True


def certificate_summary(path: Path) -> dict[str, object]:
    """Subject, SANs and expiry of a PEM certificate, for the CLI to show."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(getattr(entry, "value", entry)) for entry in sans]
    except x509.ExtensionNotFound:
        names = []
    return {
        "path": str(path),
        "subject": certificate.subject.rfc4514_string(),
        "sans": names,
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return load_ca(
        folder / f"{CA_NAME}.key",
        folder / f"{CA_NAME}.pem",
        f"no internal CA in {folder} ({CA_NAME}.pem and {CA_NAME}.key); "
        "make it with `quarry tls internal init`",
    )
