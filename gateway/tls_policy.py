"""The gateway's TLS server context: versions, ciphers, client certificates, and reload.

TLS 1.2 and 1.3 only (1.3 only if asked), with osquery's own TLS 1.2 cipher list by
default (docs/osquery-protocol.md §2.2): ECDHE key exchange and AEAD ciphers. TLS
1.3 suites are OpenSSL's defaults, all AEAD; Python cannot narrow them.

Certificates are reloaded without a restart. Each gateway process builds one
`ReloadingContext` (gateway/serving.py); its context's SNI callback runs on every client
hello (with or without a server name), checks whether the certificate or key file
changed on disk (a stat of each, at most once a second: during an enrollment storm the
stats were a visible part of each handshake), and if so builds a fresh context from
them. The handshake under way and every later one then switch to the newest context, so
a renewed certificate is served within a second of its files changing; open connections
keep theirs. A reload that fails (a half-written file, a key that does not match) keeps
the previous certificate and is logged once per change of the files.

No TLS 1.3 session tickets: osquery makes a new OpenSSL context for every connection
(`Client::encryptConnection`, osquery/remote/http_client.cpp) and never offers a session
back, so a ticket is never used. Each one costs the server a random nonce, an HMAC and an
encryption of the session, the client a decryption and a parse, and both a record on the
wire: OpenSSL's handshake went from 41% to 31% of the gateway's busy time without them
(docs/performance.md, "Enrollment storms"). A client that does resume just makes a full
handshake. TLS 1.2 tickets stay as OpenSSL has them: turning them off would make OpenSSL
keep every TLS 1.2 session in its server-side cache instead.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import metrics
from quarry.encryption.gateway_certificates import tls_files
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

FileStamp = tuple[int, int, int]  # inode, size, modification time (ns)
CHECK_INTERVAL_S = 1.0  # how often a handshake looks at the certificate files


@dataclass(frozen=True)
class TlsPolicy:
    cert: str
    key: str
    client_ca: str = ""  # ask clients for a certificate signed by this CA
    client_cert_required: bool = False
    min_version: str = "1.2"
    ciphers: str = Settings.tls_ciphers

    @classmethod
    def from_settings(cls, settings: Settings, cert: str, key: str) -> TlsPolicy:
        if settings.tls_min_version not in TLS_VERSIONS:
            raise SystemExit(
                f"QUARRY_TLS_MIN_VERSION must be one of {', '.join(TLS_VERSIONS)}; "
                f"got {settings.tls_min_version!r}"
            )
        return cls(
            cert=cert,
            key=key,
            client_ca=settings.tls_client_ca,
            client_cert_required=settings.tls_client_cert_required,
            min_version=settings.tls_min_version,
            ciphers=settings.tls_ciphers,
        )


def server_context(policy: TlsPolicy) -> ssl.SSLContext:
    """A server context following the policy, with the certificate as it is on disk now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[policy.min_version]
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(policy.ciphers)
    # No renegotiation, no compression (OpenSSL 3 defaults, stated for the reader).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(policy.cert, policy.key)
    context.num_tickets = 0  # TLS 1.3: osquery never resumes (module docstring)
    if policy.client_ca:
        context.load_verify_locations(cafile=policy.client_ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if policy.client_cert_required else ssl.CERT_OPTIONAL
        )
    return context


class ReloadingContext:
    """The context the gateway serves with, switching handshakes to a reloaded one on change."""

    def __init__(self, policy: TlsPolicy) -> None:
        self._policy = policy
        self._lock = threading.Lock()  # handshakes may run in more than one thread
        self._stamp = self._files_stamp()
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self.front = server_context(policy)
        self.front.sni_callback = self._on_client_hello
        self._current = self.front

    def _files_stamp(self) -> tuple[FileStamp, ...]:
        stamps = []
        for path in (self._policy.cert, self._policy.key):
            try:
                status = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))  # a file being replaced: try again next time
            else:
                stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(stamps)

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self.reload_if_changed()
        if current is not context:
            ssl_object.context = current

    def reload_if_changed(self) -> ssl.SSLContext:
        """The newest context, rebuilt first when the certificate or key file changed.

        The files are looked at once per CHECK_INTERVAL_S at most; between looks the
        current context is returned as it is.
        """
        now = time.monotonic()
        if now < self._next_check:
            return self._current
        self._next_check = now + CHECK_INTERVAL_S
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return self._current
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp  # tried once per change, however the attempt ends
                self._current = self._reloaded()
        return self._current

    def _reloaded(self) -> ssl.SSLContext:
        try:
            context = server_context(self._policy)
        except (OSError, ssl.SSLError) as exc:
            metrics.TLS_RELOADS.labels("error").inc()
            log.warning(
                "TLS certificate %s changed but cannot be loaded (%s); still serving the "
                "previous one",
                self._policy.cert,
                exc,
            )
            return self._current
        metrics.TLS_RELOADS.labels("ok").inc()
        log.info("TLS certificate %s reloaded", self._policy.cert)
        return context


def gateway_policy(settings: Settings) -> TlsPolicy:
    """The policy for the gateway's certificate files (the local CA's when none is set)."""
    files = tls_files(settings)
    if settings.tls_client_ca and not Path(settings.tls_client_ca).is_file():
        raise SystemExit(f"QUARRY_TLS_CLIENT_CA: no such file {settings.tls_client_ca}")
    return TlsPolicy.from_settings(settings, str(files.cert), str(files.key))
