"""TLS client certificates: who the peer proved to be during the handshake.

The gateway's HTTP server reads the verified certificate from the TLS transport once the
handshake is done (`peer_certificate`, called by gateway/http_connection.py) and keeps
it with the connection; the enroll handler reads it as `request.certificate`, and it goes
when the connection does.

The handshake already verified the certificate against QUARRY_TLS_CLIENT_CA: a
certificate read here is trusted, nothing more is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass

from cryptography import x509

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    subject: str  # RFC 4514, e.g. "CN=host-1,O=Example"
    subject_alt_names: list[str]
    sha256_fingerprint: str  # lowercase hex of the DER certificate's SHA-256


def parse_certificate(der: bytes) -> PeerCertificate:
    certificate = x509.load_der_x509_certificate(der)
    return PeerCertificate(
        subject=certificate.subject.rfc4514_string(),
        subject_alt_names=_subject_alt_names(certificate),
        sha256_fingerprint=hashlib.sha256(der).hexdigest(),
    )


def _subject_alt_names(certificate: x509.Certificate) -> list[str]:
    """Each SAN as plain text (a DNS name, an IP address, a URI, an email address)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for name in extension.value:
        if isinstance(name, x509.DirectoryName):
            names.append(name.value.rfc4514_string())
        elif isinstance(name, x509.RegisteredID):
            names.append(name.value.dotted_string)
        elif not isinstance(name, x509.OtherName):  # raw ASN.1: no text form
            names.append(str(name.value))
    return names


def peer_certificate(transport: asyncio.BaseTransport) -> PeerCertificate | None:
    """The client certificate the handshake verified, if the peer sent one."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        return parse_certificate(der)
    except ValueError:
        # OpenSSL accepted it, so this is unlikely; enroll then sees no certificate.
        log.warning("could not parse a verified client certificate", exc_info=True)
        return None
