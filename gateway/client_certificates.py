"""TLS client certificates: who the peer proved to be during the handshake.

uvicorn does not put the peer certificate in the ASGI scope, so it is captured where
the connection is made: `ClientCertificateProtocol` is the gateway's HTTP protocol
class (uvicorn's httptools protocol, kept lean while idle: gateway/idle_connections.py)
plus a few lines that read the verified
certificate from the TLS transport and register it under the connection's peer
address, the (host, port) that uvicorn also puts in scope["client"]. The enroll
handler looks the certificate up by request.client; the entry goes when the
connection does. Each worker process holds its own connections, so a per-process
dict is enough, and uvicorn starts workers with this class by its import string.

The handshake already verified the certificate against QUARRY_TLS_CLIENT_CA: a
certificate registered here is trusted, nothing more is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass

from cryptography import x509

from gateway import metrics
from gateway.idle_connections import LeanHttpToolsProtocol

log = logging.getLogger(__name__)

PeerAddress = tuple[str, int]

# Import string for uvicorn.run(http=...): it re-imports the class in every worker.
PROTOCOL_IMPORT_STRING = "gateway.client_certificates:ClientCertificateProtocol"


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    subject: str  # RFC 4514, e.g. "CN=host-1,O=Example"
    subject_alt_names: list[str]
    sha256_fingerprint: str  # lowercase hex of the DER certificate's SHA-256


_by_peer: dict[PeerAddress, PeerCertificate] = {}

# Bound once: looking a labelled child up costs a lock and a dict on every connection.
_ACCEPTED = metrics.TLS_CONNECTIONS.labels("accepted")
_ESTABLISHED = metrics.TLS_CONNECTIONS.labels("established")


def certificate_of(peer: PeerAddress | None) -> PeerCertificate | None:
    """The verified client certificate of the connection from `peer`, if it sent one."""
    return _by_peer.get(peer) if peer is not None else None


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


def _peer_certificate(transport: asyncio.BaseTransport) -> PeerCertificate | None:
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


class ClientCertificateProtocol(LeanHttpToolsProtocol):
    """uvicorn's HTTP protocol, registering the client certificate of each connection.

    uvicorn creates one instance per accepted TCP connection; the event loop's TLS
    transport calls connection_made only once the handshake has succeeded (and never
    after a failed one), so the two counters below differ by the handshakes that
    failed or are still under way. The open connections gauge counts established
    connections (those with a transport) until they close.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        _ACCEPTED.inc()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _ESTABLISHED.inc()
        metrics.OPEN_CONNECTIONS.inc()
        certificate = _peer_certificate(transport)
        if certificate is not None and self.client is not None:
            _by_peer[self.client] = certificate

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # set by connection_made
            metrics.OPEN_CONNECTIONS.dec()
        if self.client is not None:
            _by_peer.pop(self.client, None)
        super().connection_lost(exc)
