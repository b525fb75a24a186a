"""Node identity (what makes two enrollments the same machine) and the clone rules.

The identity comes from QUARRY_NODE_IDENTITY, or from the verified TLS client
certificate when QUARRY_ENROLL_CLIENT_CERT_IDENTITY says so. Re-enrollments of one
identity are counted within a window: too many in a row wait for a cooldown, and when
each of them replaced a key that was in use, several live machines probably share
the identity (cloned disk images do).
"""

from __future__ import annotations

from dataclasses import dataclass

from enroll_service.host_details import HostFacts
from protos.v1 import enroll_pb2
from quarry.runtime.settings import Settings

HOST_IDENTITY_SOURCES = ("system_info.uuid", "hardware_serial", "host_identifier")
CERT_IDENTITY_SOURCES = ("", "subject", "san", "fingerprint")


def check_identity_settings(settings: Settings) -> None:
    """Refuse to start with an identity source we do not know (a typo would merge hosts)."""
    if settings.node_identity not in HOST_IDENTITY_SOURCES:
        raise ValueError(
            f"QUARRY_NODE_IDENTITY must be one of {', '.join(HOST_IDENTITY_SOURCES)};"
            f" got {settings.node_identity!r}"
        )
    if settings.enroll_client_cert_identity not in CERT_IDENTITY_SOURCES:
        raise ValueError(
            "QUARRY_ENROLL_CLIENT_CERT_IDENTITY must be empty, subject, san or fingerprint;"
            f" got {settings.enroll_client_cert_identity!r}"
        )


def has_certificate(certificate: enroll_pb2.ClientCertificate) -> bool:
    return bool(certificate.sha256_fingerprint or certificate.subject)


def node_identity(
    settings: Settings,
    host_identifier: str,
    facts: HostFacts,
    certificate: enroll_pb2.ClientCertificate,
) -> str:
    """The identity of the enrolling machine; a missing fact falls back to host_identifier."""
    from_certificate = _certificate_identity(settings.enroll_client_cert_identity, certificate)
    if from_certificate:
        return from_certificate
    if settings.node_identity == "system_info.uuid" and facts.hardware_uuid:
        return facts.hardware_uuid
    if settings.node_identity == "hardware_serial" and facts.hardware_serial:
        return facts.hardware_serial
    return host_identifier


def _certificate_identity(source: str, certificate: enroll_pb2.ClientCertificate) -> str:
    if not source or not has_certificate(certificate):
        return ""
    if source == "subject":
        value = certificate.subject
    elif source == "san":
        value = certificate.subject_alt_names[0] if certificate.subject_alt_names else ""
    else:
        value = certificate.sha256_fingerprint
    return f"cert:{value}" if value else ""


@dataclass(frozen=True)
class EnrollmentHistory:
    """The enrollments of one identity within the clone window."""

    count: int = 0
    # Re-enrollments whose replaced key had been used (last seen after it was issued),
    # and those whose replaced key never was; first enrollments are neither.
    replaced_used: int = 0
    replaced_unused: int = 0
    last_enrolled_at: int = 0


@dataclass(frozen=True)
class ClonePolicy:
    window_s: int
    threshold: int
    cooldown_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ClonePolicy:
        return cls(
            window_s=settings.enroll_clone_window_s,
            threshold=max(1, settings.enroll_clone_threshold),
            cooldown_s=settings.enroll_cooldown_s,
        )

    def window_start(self, now: int) -> int:
        """Enrollments after this time are within the window."""
        return now - self.window_s

    def cooldown_left(self, history: EnrollmentHistory, now: int) -> int:
        """Seconds this identity must wait before enrolling again; 0 when it may now."""
        if history.count < self.threshold:
            return 0
        return max(0, history.last_enrolled_at + self.cooldown_s - now)

    def suspected_clone(self, history: EnrollmentHistory) -> bool:
        """Enough enrollments, and every re-enrollment among them took over a live key."""
        return (
            history.count >= self.threshold
            and history.replaced_used > 0
            and history.replaced_unused == 0
        )
