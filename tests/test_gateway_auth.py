"""How the gateway authenticates nodes: node keys, revocation, TLS client certificates.

Real processes: the enroll, config and distributed services, and two gateways in front
of them, both asking clients for a certificate signed by a CA this module generates
(one accepts clients without a certificate, the other requires one). Emulated osquery
nodes drive them over real TLS. The node cache's handling of watch events (pending
nodes, approvals, removals) is checked on its own first, fed NodeEvents directly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.client_certificates import parse_certificate
from gateway.node_cache import NodeCache
from protos.v1 import distributed_pb2, distributed_pb2_grpc, enroll_pb2, enroll_pb2_grpc
from quarry.encryption.gateway_certificates import ensure_certificates, issue_client_certificate
from quarry.serving.grpc_runtime import sync_channel
from tests.emulator import HostProfile, OsqueryNode
from tests.emulator.response import INVALID_NODE_KEY
from tests.free_ports import free_port_base
from tests.service_processes import ServiceProcess

ENROLL_SECRET = "gateway-auth-secret"
REVOCATION_BUDGET_S = 2.0
GATEWAY_METRICS_OFFSET = 14
Event = enroll_pb2.NodeEvent
_host_numbers = itertools.count(1)


# --- the node cache, fed watch events --------------------------------------------------


def unreachable_stub() -> enroll_pb2_grpc.EnrollServiceStub:
    """A stub to nowhere: any GetNode fallback fails the test instead of answering."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port_base()}")
    return enroll_pb2_grpc.EnrollServiceStub(channel)


def upsert(key: str, *, pending: bool = False, tags: tuple[str, ...] = ()) -> Event:
    node = enroll_pb2.Node(
        node_id=f"id-{key}",
        node_key=key,
        host_identifier=f"host-{key}",
        pending=pending,
        tags=list(tags),
        group="lab",
    )
    return Event(kind=Event.UPSERT, node=node)


def remove(key: str) -> Event:
    return Event(kind=Event.REMOVE, node=enroll_pb2.Node(node_key=key))


def test_node_cache_follows_pending_approval_and_removal() -> None:
    async def scenario() -> None:
        cache = NodeCache(unreachable_stub())
        cache.apply(upsert("k1", pending=True, tags=("linux", "prod")))
        pending = await cache.authenticate("k1")
        assert pending is not None
        assert (pending.node_id, pending.pending, pending.tags, pending.group) == (
            "id-k1",
            True,
            ("linux", "prod"),
            "lab",
        )

        cache.apply(upsert("k1", pending=False, tags=("linux", "prod")))  # approved
        approved = await cache.authenticate("k1")
        assert approved is not None and not approved.pending
        assert len(cache) == 1

        cache.apply(remove("k1"))  # revoked: refused at once, without asking the service
        assert await cache.authenticate("k1") is None

    asyncio.run(scenario())


def test_node_cache_compares_the_whole_key() -> None:
    async def scenario() -> None:
        cache = NodeCache(unreachable_stub())
        cache.apply(upsert("correct-key"))
        assert cache.lookup("correct-key") is not None
        for wrong in ("correct-kez", "correct-ke", "correct-key ", "", "correct-kéy"):
            assert cache.lookup(wrong) is None, wrong

    asyncio.run(scenario())


def test_a_key_remembered_as_unknown_is_accepted_once_it_is_upserted() -> None:
    async def scenario() -> None:
        cache = NodeCache(unreachable_stub())
        cache.apply(upsert("old"))
        cache.apply(remove("old"))  # now remembered as unknown
        assert await cache.authenticate("old") is None
        cache.apply(upsert("new"))
        cache.apply(upsert("old"))  # the same bytes upserted again are valid at once
        assert await cache.authenticate("old") is not None
        assert await cache.authenticate("new") is not None

    asyncio.run(scenario())


# --- real gateways ----------------------------------------------------------------------


@dataclass
class Certificates:
    tls_dir: Path
    good_cert: Path
    good_key: Path
    foreign_cert: Path
    foreign_key: Path

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.pem"


@dataclass
class Gateways:
    certificates: Certificates
    enroll_addr: str
    distributed_addr: str
    optional: ServiceProcess  # asks for a client certificate, accepts a client without
    required: ServiceProcess  # refuses a client without a certificate from the CA

    def node(self, gateway: ServiceProcess, **options: object) -> OsqueryNode:
        profile = HostProfile.make(next(_host_numbers), seed=gateway.port_base)
        defaults: dict[str, object] = {
            "server": f"localhost:{gateway.settings.gateway_port}",
            "ca_file": self.certificates.ca,
            "enroll_secret": ENROLL_SECRET,
            "profile": profile,
            "host_identifier": profile.hardware_uuid.lower(),
            "retry_time_scale": 0,
            "enroll_max_attempts": 1,
            "config_max_attempts": 1,
        }
        return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]

    def enroll_stub(self) -> enroll_pb2_grpc.EnrollServiceStub:
        return enroll_pb2_grpc.EnrollServiceStub(sync_channel(self.enroll_addr))

    def distributed_stub(self) -> distributed_pb2_grpc.DistributedServiceStub:
        channel = sync_channel(self.distributed_addr)
        return distributed_pb2_grpc.DistributedServiceStub(channel)


def make_certificates(scratch: Path) -> Certificates:
    tls_dir = scratch / "tls"
    ensure_certificates(tls_dir, ["localhost"])
    good_cert, good_key = issue_client_certificate(tls_dir, "host-good", scratch / "clients")
    # Another CA, with a certificate for the same name: the gateway must not accept it.
    other = scratch / "other-ca"
    ensure_certificates(other, ["localhost"])
    foreign_cert, foreign_key = issue_client_certificate(other, "host-good", scratch / "foreign")
    return Certificates(tls_dir, good_cert, good_key, foreign_cert, foreign_key)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    scratch = tmp_path_factory.mktemp("gateway-auth")
    certificates = make_certificates(scratch)
    services_base = free_port_base()
    services = [
        ServiceProcess(
            name, scratch / "services", services_base, {"QUARRY_ENROLL_SECRET": ENROLL_SECRET}
        )
        for name in ("enroll", "config", "distributed")
    ]
    started: list[ServiceProcess] = []
    try:
        for service in services:
            started.append(service.start())
        gateway_env = {
            "QUARRY_ENROLL_ADDR": services[0].addr,
            "QUARRY_CONFIG_ADDR": services[1].addr,
            "QUARRY_DISTRIBUTED_ADDR": services[2].addr,
            "QUARRY_TLS_CERT": str(certificates.tls_dir / "server.pem"),
            "QUARRY_TLS_KEY": str(certificates.tls_dir / "server.key"),
            "QUARRY_TLS_CA": str(certificates.ca),
            "QUARRY_TLS_CLIENT_CA": str(certificates.ca),
        }
        optional = ServiceProcess("gateway", scratch / "gw-optional", free_port_base(), gateway_env)
        started.append(optional.start())
        required_env = {**gateway_env, "QUARRY_TLS_CLIENT_CERT_REQUIRED": "true"}
        required = ServiceProcess(
            "gateway", scratch / "gw-required", free_port_base(), required_env
        )
        started.append(required.start())
        yield Gateways(certificates, services[0].addr, services[2].addr, optional, required)
    finally:
        for process in reversed(started):
            process.stop()


def tls_connections(gateway: ServiceProcess, stage: str) -> float:
    port = gateway.port_base + GATEWAY_METRICS_OFFSET
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sample = f'quarry_gateway_tls_connections_total{{stage="{stage}"}}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
    )


def test_issued_client_certificate_names_the_host(gateways: Gateways) -> None:
    parsed = parse_certificate(der_of(gateways.certificates.good_cert))
    assert parsed.subject == "CN=host-good"
    assert parsed.subject_alt_names == ["host-good"]
    assert len(parsed.sha256_fingerprint) == 64


def test_a_node_without_a_certificate_cannot_connect_when_one_is_required(
    gateways: Gateways,
) -> None:
    failed_before = _failed_handshakes(gateways.required)

    async def scenario() -> tuple[str, str]:
        async with gateways.node(gateways.required) as node:
            key = await node.get_node_key()
            return key, node.last_error

    key, last_error = asyncio.run(scenario())
    assert key == ""
    assert last_error.startswith("Request error:")
    assert _failed_handshakes(gateways.required) > failed_before


def test_a_certificate_from_another_ca_is_refused(gateways: Gateways) -> None:
    certificates = gateways.certificates
    for gateway in (gateways.optional, gateways.required):

        async def scenario(gateway: ServiceProcess = gateway) -> tuple[str, str]:
            async with gateways.node(
                gateway, client_cert=certificates.foreign_cert, client_key=certificates.foreign_key
            ) as node:
                return await node.get_node_key(), node.last_error

        key, last_error = asyncio.run(scenario())
        assert key == "", gateway.log_path
        assert last_error.startswith("Request error:")


def test_a_node_with_a_good_certificate_enrolls_and_checks_in(gateways: Gateways) -> None:
    certificates = gateways.certificates

    async def scenario(gateway: ServiceProcess) -> tuple[str, dict | None]:
        async with gateways.node(
            gateway, client_cert=certificates.good_cert, client_key=certificates.good_key
        ) as node:
            key = await node.get_node_key()
            return key, await node.fetch_config()

    for gateway in (gateways.optional, gateways.required):
        key, config = asyncio.run(scenario(gateway))
        assert len(key) >= 22, gateway.log_text()  # 128 bits, base64url
        assert isinstance(config, dict)


def test_a_node_without_a_certificate_enrolls_when_certificates_are_optional(
    gateways: Gateways,
) -> None:
    async def scenario() -> tuple[str, dict | None]:
        async with gateways.node(gateways.optional) as node:
            return await node.get_node_key(), await node.fetch_config()

    key, config = asyncio.run(scenario())
    assert key
    assert isinstance(config, dict)


def test_the_enroll_service_receives_the_verified_certificate(gateways: Gateways) -> None:
    certificates = gateways.certificates

    async def scenario() -> str:
        async with gateways.node(
            gateways.required, client_cert=certificates.good_cert, client_key=certificates.good_key
        ) as node:
            return await node.get_node_key()

    key = asyncio.run(scenario())
    assert key
    details = gateways.enroll_stub().ShowNode(enroll_pb2.NodeRef(node=key), timeout=10)
    expected = parse_certificate(der_of(certificates.good_cert))
    received = details.client_certificate
    assert received.subject == expected.subject == "CN=host-good"
    assert list(received.subject_alt_names) == ["host-good"]
    assert received.sha256_fingerprint == expected.sha256_fingerprint


def test_a_revoked_key_is_refused_by_both_gateways_within_two_seconds(gateways: Gateways) -> None:
    certificates = gateways.certificates

    async def scenario() -> dict[str, str]:
        first = gateways.node(gateways.optional, disable_reenrollment=True)
        # The same key through the other gateway: osquery behind a load balancer.
        second = gateways.node(
            gateways.required,
            client_cert=certificates.good_cert,
            client_key=certificates.good_key,
            disable_reenrollment=True,
        )
        async with first, second:
            second.node_key = await first.get_node_key()
            assert second.node_key
            assert await first.fetch_config() is not None
            assert await second.fetch_config() is not None

            gateways.enroll_stub().RevokeNode(enroll_pb2.NodeRef(node=first.node_key), timeout=10)
            deadline = time.monotonic() + REVOCATION_BUDGET_S
            refused: dict[str, str] = {}
            while len(refused) < 2 and time.monotonic() < deadline:
                for name, node in (("first", first), ("second", second)):
                    if name not in refused and await node.fetch_config() is None:
                        refused[name] = node.last_error
                await asyncio.sleep(0.05)
            return refused

    refused = asyncio.run(scenario())
    assert set(refused) == {"first", "second"}
    assert all(error.startswith(INVALID_NODE_KEY) for error in refused.values()), refused


def der_of(pem_path: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(Encoding.DER)


def _failed_handshakes(gateway: ServiceProcess) -> float:
    return tls_connections(gateway, "accepted") - tls_connections(gateway, "established")


def test_a_pending_node_gets_an_empty_config_and_no_live_queries_until_approved(
    gateways: Gateways,
) -> None:
    created = gateways.enroll_stub().CreateSecret(
        enroll_pb2.CreateSecretRequest(name="needs-approval", requires_approval=True), timeout=10
    )
    campaign = gateways.distributed_stub().StartQuery(
        distributed_pb2.StartQueryRequest(sql="SELECT 1 AS one", ttl_seconds=300), timeout=10
    )

    async def scenario() -> None:
        pending = gateways.node(gateways.optional, enroll_secret=created.value)
        active = gateways.node(gateways.optional)
        async with pending, active:
            assert await pending.get_node_key()
            assert await active.get_node_key()
            # The campaign targets every node: the active one sees it, the pending one not.
            deadline = time.monotonic() + 10
            while campaign.campaign_id not in await _live_queries(active):
                assert time.monotonic() < deadline, "the campaign never reached the gateway"
                await asyncio.sleep(0.1)
            assert await pending.fetch_config() == {}
            assert await _live_queries(pending) == {}

            gateways.enroll_stub().ApproveNode(
                enroll_pb2.NodeRef(node=pending.node_key), timeout=10
            )
            deadline = time.monotonic() + REVOCATION_BUDGET_S
            while campaign.campaign_id not in await _live_queries(pending):
                assert time.monotonic() < deadline, "the approval never reached the gateway"
                await asyncio.sleep(0.05)
            assert await pending.fetch_config() != {}

    asyncio.run(scenario())


async def _live_queries(node: OsqueryNode) -> dict:
    work = await node.distributed_read()
    assert work is not None, node.last_error
    return work.queries
