"""The gateway's TLS policy, checked with real handshakes against a real gateway process.

TLS 1.0 and 1.1 are refused, 1.2 and 1.3 accepted; TLS 1.2 suites outside osquery's
cipher list are refused, and osquery's own client settings handshake at both versions.
The gateway issues no TLS 1.3 session tickets (osquery never resumes a session). The
certificate files are then replaced by a certificate
from a new CA: new connections get it without a restart, while a connection opened
before keeps working; the files are looked at once a second at most. A certificate that
does not match its key is not loaded.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import tls_policy
from gateway.tls_policy import ReloadingContext, TlsPolicy
from quarry.encryption.gateway_certificates import TlsFiles, ensure_certificates
from tests.emulator.http_client import osquery_ssl_context
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.service_processes import ServiceProcess


@dataclass
class Gateway:
    process: ServiceProcess
    live_dir: Path  # the certificate and key files the gateway serves
    first: TlsFiles
    second: TlsFiles  # another CA, another key

    @property
    def port(self) -> int:
        return self.process.settings.gateway_port

    def install(self, files: TlsFiles) -> None:
        """Replace the served files the way a renewal does: write aside, then rename."""
        for source, name in ((files.key, "server.key"), (files.cert, "server.pem")):
            shutil.copy(source, self.live_dir / f"{name}.new")
            (self.live_dir / f"{name}.new").replace(self.live_dir / name)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    scratch = tmp_path_factory.mktemp("tls-policy")
    first = ensure_certificates(scratch / "first-ca", ["localhost"])
    second = ensure_certificates(scratch / "second-ca", ["localhost"])
    live = scratch / "live"
    live.mkdir()
    shutil.copy(first.cert, live / "server.pem")
    shutil.copy(first.key, live / "server.key")
    env = {
        "QUARRY_TLS_CERT": str(live / "server.pem"),
        "QUARRY_TLS_KEY": str(live / "server.key"),
        "QUARRY_TLS_CA": str(first.ca_cert),
    }
    process = ServiceProcess("gateway", scratch / "gateway", free_port_base(), env).start()
    try:
        yield Gateway(process, live, first, second)
    finally:
        process.stop()


def client_context(
    ca: Path, version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1, on purpose
            context.minimum_version = context.maximum_version = version
    if ciphers is not None or version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        # Let this client offer what OpenSSL's security level would otherwise forbid,
        # so a refusal comes from the server.
        context.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    return context


def handshake(gateway: Gateway, context: ssl.SSLContext) -> str:
    """The negotiated protocol version, or the error the handshake ended with."""
    try:
        with (
            socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            return str(tls.version())
    except (ssl.SSLError, ConnectionResetError) as exc:
        return f"refused: {exc}"


def healthz(tls: ssl.SSLSocket) -> bytes:
    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return tls.recv(65536)


def reloads(gateway: Gateway, result: str) -> float:
    port = gateway.process.settings.metrics_port("gateway")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sample = f'quarry_gateway_tls_reloads_total{{result="{result}"}}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(gateway: Gateway, version: ssl.TLSVersion) -> None:
    outcome = handshake(gateway, client_context(gateway.first.ca_cert, version))
    assert outcome.startswith("refused")  # the server hangs up on the client hello
    # The same permissive client gets in with TLS 1.2: the refusal was the version.
    assert handshake(gateway, client_context(gateway.first.ca_cert, ssl.TLSVersion.TLSv1_2, "ALL"))


@pytest.mark.parametrize(
    ("version", "expected"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_tls_1_2_and_1_3_are_accepted(
    gateway: Gateway, version: ssl.TLSVersion, expected: str
) -> None:
    assert handshake(gateway, client_context(gateway.first.ca_cert, version)) == expected


def test_tls_1_2_suites_outside_osquerys_list_are_refused(gateway: Gateway) -> None:
    ca, tls12 = gateway.first.ca_cert, ssl.TLSVersion.TLSv1_2
    # CBC with SHA-1 MACs: excluded by osquery's !CBC:!SHA.
    assert handshake(gateway, client_context(ca, tls12, "ECDHE-ECDSA-AES128-SHA")).startswith(
        "refused"
    )
    assert handshake(gateway, client_context(ca, tls12, "ECDHE-ECDSA-AES256-GCM-SHA384")) == (
        "TLSv1.2"
    )


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_osquerys_client_settings_handshake(gateway: Gateway, maximum: ssl.TLSVersion) -> None:
    context = osquery_ssl_context(gateway.first.ca_cert)  # osquery's cipher list, TLS 1.2+
    context.maximum_version = maximum
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        assert healthz(tls).startswith(b"HTTP/1.1 ")  # no services here: 503 is an answer
        assert tls.version() == ("TLSv1.3" if maximum == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
        assert tls.cipher()[0] in ("TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384")


def test_no_tls_1_3_session_tickets(gateway: Gateway) -> None:
    context = client_context(gateway.first.ca_cert, ssl.TLSVersion.TLSv1_3)
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        # A server's tickets follow its handshake, so they arrive before this answer.
        assert healthz(tls).startswith(b"HTTP/1.1 ")  # no services here: 503 is an answer
        assert tls.session is not None and tls.version() == "TLSv1.3"
        assert not tls.session.has_ticket
        assert tls.session.ticket_lifetime_hint == 0


def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(
    gateway: Gateway,
) -> None:
    old_ca, new_ca = gateway.first.ca_cert, gateway.second.ca_cert
    assert handshake(gateway, client_context(old_ca)) == "TLSv1.3"
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock,
        client_context(old_ca).wrap_socket(sock, server_hostname="localhost") as opened_before,
    ):
        gateway.install(gateway.second)
        assert eventually(lambda: handshake(gateway, client_context(new_ca)) == "TLSv1.3")
        assert "certificate verify failed" in handshake(gateway, client_context(old_ca))
        # The connection made before the switch keeps its session and still serves.
        assert healthz(opened_before).startswith(b"HTTP/1.1 ")
    assert gateway.process.returncode is None  # the same process throughout
    assert reloads(gateway, "ok") >= 1


def test_a_certificate_that_does_not_match_its_key_is_not_loaded(gateway: Gateway) -> None:
    assert _with(gateway, gateway.second) == "TLSv1.3"  # left in place by the test above
    errors_before = reloads(gateway, "error")
    shutil.copy(gateway.first.cert, gateway.live_dir / "server.pem.new")
    (gateway.live_dir / "server.pem.new").replace(gateway.live_dir / "server.pem")
    # Each handshake notices the mismatch and still gets the second certificate.
    assert eventually(
        lambda: (
            _with(gateway, gateway.second) == "TLSv1.3"
            and reloads(gateway, "error") > errors_before
        )
    )
    gateway.install(gateway.first)  # a matching pair again: loaded
    assert eventually(lambda: _with(gateway, gateway.first) == "TLSv1.3")


def _with(gateway: Gateway, files: TlsFiles) -> str:
    return handshake(gateway, client_context(files.ca_cert))


def test_the_certificate_files_are_looked_at_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure_certificates(tmp_path / "first-ca", ["localhost"])
    second = ensure_certificates(tmp_path / "second-ca", ["localhost"])
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    now = [1000.0]
    monkeypatch.setattr(tls_policy.time, "monotonic", lambda: now[0])
    reloading = ReloadingContext(TlsPolicy(cert=str(cert), key=str(key)))
    shutil.copy(second.key, key)
    shutil.copy(second.cert, cert)
    now[0] += tls_policy.CHECK_INTERVAL_S / 2
    assert reloading.reload_if_changed() is reloading.front  # not looked at yet
    now[0] += tls_policy.CHECK_INTERVAL_S / 2
    reloaded = reloading.reload_if_changed()
    assert reloaded is not reloading.front
    assert reloading.reload_if_changed() is reloaded
