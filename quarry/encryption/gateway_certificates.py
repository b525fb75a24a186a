"""The gateway's certificate files: a local CA and server certificate, made on first start
when none is configured.

osquery always verifies the server (`--tls_server_certs`, no opt-out in release
builds), so `make run` must hand it a CA it can pin. The files live under
state_dir/tls/ (quarry/state/directory.py) and are reused on later starts; ECDSA P-256
keeps handshakes cheap and matches osquery's ECDHE-only cipher list. They are key
material of the state directory, used by the gateway (its TLS) and by the CLI (`quarry
up`, `quarry flags`, `quarry tls client-cert`), so they live below both.

The CA key is kept (ca.key, owner-only) so the same CA can issue client certificates:
`issue_client_certificate` makes one for osquery's `--tls_client_cert` and
`--tls_client_key`, and ca.pem then serves as QUARRY_TLS_CLIENT_CA too.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

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
from quarry.state.directory import gateway_tls_dir

VALIDITY = datetime.timedelta(days=825)  # the longest server lifetime clients accept
CA_KEY_NAME = "ca.key"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def tls_files(settings: Settings) -> TlsFiles:
    """The configured certificate, or the local CA's (created on first start)."""
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(Path(settings.tls_ca), Path(settings.tls_cert), Path(settings.tls_key))
    return ensure_certificates(gateway_tls_dir(settings), [settings.public_host])


def ensure_certificates(tls_dir: Path, hostnames: list[str]) -> TlsFiles:
    """Return the CA, certificate and key under tls_dir, creating them if missing."""
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if files.ca_cert.exists() and files.cert.exists() and files.key.exists():
        return files
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca_cert = ca_certificate(ca_key, "Quarry local CA", 3 * VALIDITY)
    server_key = new_key()
    # localhost too, so osquery on the server's own machine can always connect.
    sans = [*hostnames, "localhost", "127.0.0.1"]
    server_cert = signed_certificate(
        server_key, (ca_key, ca_cert), hostnames[0], sans, [SERVER_AUTH], VALIDITY
    )
    write_atomically(tls_dir / CA_KEY_NAME, key_pem(ca_key), 0o600)
    write_atomically(files.ca_cert, certificate_pem(ca_cert), 0o644)
    write_atomically(files.cert, certificate_pem(server_cert), 0o644)
    write_atomically(files.key, key_pem(server_key), 0o600)
    return files


def issue_client_certificate(
    tls_dir: Path, common_name: str, out_dir: Path, validity_days: int = 825
) -> tuple[Path, Path]:
    """A client certificate and key for one host, signed by the local CA in tls_dir.

    Written as out_dir/<common_name>.pem and .key; the common name is also the
    certificate's DNS SAN. Returns (certificate path, key path).
    """
    ca = load_ca(
        tls_dir / CA_KEY_NAME,
        tls_dir / "ca.pem",
        f"no local CA with its key in {tls_dir} (ca.pem and {CA_KEY_NAME}); "
        "it is made by the gateway's first start, or by ensure_certificates",
    )
    key = new_key()
    validity = datetime.timedelta(days=validity_days)
    certificate = signed_certificate(key, ca, common_name, [common_name], [CLIENT_AUTH], validity)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{common_name}.pem", out_dir / f"{common_name}.key"
    write_atomically(cert_path, certificate_pem(certificate), 0o644)
    write_atomically(key_path, key_pem(key), 0o600)
    return cert_path, key_path
