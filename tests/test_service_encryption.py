"""Service-to-service encryption on real processes: gRPC mutual TLS and ZeroMQ CURVE.

A `quarry up` cluster runs with QUARRY_INTERNAL_TLS and QUARRY_ZMQ_CURVE on (it makes the
internal CA and the CURVE keys in its state directory). An emulated osquery node enrolls,
fetches its config, sends logs and answers a live query through the real gateway, and the
rows reach the embedded store. Then every gRPC service is called by clients that must be
refused (no TLS, no client certificate, a certificate from another CA), and ZeroMQ DEALERs
with a wrong key, a right key and a key added while ingest runs send real log batches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import zmq
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.v1 import logs_pb2
from quarry.encryption.internal_tls import ensure_shared_certificate
from quarry.encryption.zmq_curve import CurveKeys, create_key_pair, secure_dealer
from quarry.serving.grpc_runtime import sync_channel
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster
from tests.service_processes import ServiceProcess

NOW = 1_736_072_430
ENCRYPTED = {"QUARRY_INTERNAL_TLS": "on", "QUARRY_ZMQ_CURVE": "on"}
GRPC_SERVICES = ("enroll", "config", "distributed", "ingest")
REFUSED_WITHIN_S = 5.0
_host_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    # Embedded chdb store: QUARRY_CLICKHOUSE_URL stays empty.
    with quarry_cluster(tmp_path_factory.mktemp("encrypted"), "", ENCRYPTED) as running:
        yield running


def new_node(cluster: QuarryCluster, gateway: str = "", ca_file: Path | None = None) -> OsqueryNode:
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    return OsqueryNode(
        server=gateway or cluster.gateway,
        ca_file=ca_file or cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )


def stored_results(cluster: QuarryCluster, host: str) -> list[dict]:
    return cluster.sql(
        "SELECT name, column_values FROM quarry.results "
        f"WHERE host_identifier = '{host}' ORDER BY name"
    )


# --- the whole osquery path, encrypted ------------------------------------------------


def test_the_cluster_serves_osquery_end_to_end_with_everything_encrypted(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    started = cluster.log_text()  # what each process said before the banner
    for service in GRPC_SERVICES:
        assert (
            f"{service} gRPC listening on {cluster.settings.service_addr(service)} (mutual TLS)"
            in started
        )
    assert f"ZeroMQ {cluster.settings.zmq_endpoints()[0]} (CURVE)" in started
    config = {"schedule": {"procs": {"query": "SELECT pid FROM processes", "interval": 60}}}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    cluster.cli("config", "set", "-f", str(config_file))  # the CLI over mutual TLS too

    async def scenario() -> tuple[OsqueryNode, dict]:
        async with new_node(cluster) as node:
            assert await node.get_node_key()
            for _ in range(150):
                if await node.fetch_config() == config:
                    break
                await asyncio.sleep(0.2)
            host = node.host_identifier
            records = log_records.event_records("encrypted", host, NOW, added=[{"pid": "1"}])
            assert await node.send_logs("result", records)
            report = await live_query_while_checking_in(cluster, node)
            return node, report

    node, report = asyncio.run(scenario())
    assert node.config == config
    assert stored_results(cluster, node.host_identifier) == [
        {"name": "encrypted", "column_values": ["1"]}
    ]
    [answer] = report["hosts"]
    assert (answer["host_identifier"], answer["state"]) == (node.host_identifier, "ANSWERED")
    campaign = report["campaign"]["campaign_id"]
    rows = cluster.sql(
        "SELECT column_names, column_values FROM quarry.distributed_results "
        f"WHERE campaign_id = '{campaign}'"
    )
    assert len(rows) == 1
    assert dict(zip(rows[0]["column_names"], rows[0]["column_values"], strict=True)) == {
        "hostname": node.profile.hostname
    }


async def live_query_while_checking_in(cluster: QuarryCluster, node: OsqueryNode) -> dict:
    """`quarry query run` for this node while it polls distributed read/write."""
    stop = asyncio.Event()

    async def check_in() -> None:
        while not stop.is_set():
            await node.run_distributed_once()
            await asyncio.sleep(0.1)

    nodes = await asyncio.to_thread(cluster.cli_json, "nodes", "list")
    node_id = next(n["node_id"] for n in nodes if n["host_identifier"] == node.host_identifier)
    polling = asyncio.create_task(check_in())
    try:
        done = await asyncio.to_thread(
            cluster.cli,
            "query",
            "run",
            "SELECT hostname FROM system_info",
            "--node",
            node_id,
            "--timeout",
            "60",
            "--json",
            check=False,
        )
    finally:
        stop.set()
        await polling
    return live_query_report(done)


# --- gRPC: only Quarry's own certificate gets in --------------------------------------


def health_check(addr: str, credentials: grpc.ChannelCredentials | None) -> object:
    """SERVING, or the status code of the failed call."""
    channel = grpc.secure_channel(addr, credentials) if credentials else grpc.insecure_channel(addr)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=REFUSED_WITHIN_S
            )
        except grpc.RpcError as exc:
            return exc.code()
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_each_grpc_service_accepts_only_certificates_of_the_internal_ca(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    internal = cluster.state_dir / "internal-tls"
    ca = (internal / "ca.pem").read_bytes()
    own_cert = (internal / "quarry-internal.pem").read_bytes()
    own_key = (internal / "quarry-internal.key").read_bytes()
    foreign_cert, foreign_key, _ = ensure_shared_certificate(tmp_path / "foreign", [])
    clients = {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "another CA's certificate": grpc.ssl_channel_credentials(
            ca, foreign_key.read_bytes(), foreign_cert.read_bytes()
        ),
        "the internal certificate": grpc.ssl_channel_credentials(ca, own_key, own_cert),
    }
    for service in GRPC_SERVICES:
        addr = cluster.settings.service_addr(service)
        answers = {name: health_check(addr, credentials) for name, credentials in clients.items()}
        assert answers == {
            "plaintext": grpc.StatusCode.UNAVAILABLE,
            "no client certificate": grpc.StatusCode.UNAVAILABLE,
            "another CA's certificate": grpc.StatusCode.UNAVAILABLE,
            "the internal certificate": "SERVING",
        }, service


def test_channels_check_the_server_name_the_settings_give(cluster: QuarryCluster) -> None:
    """QUARRY_INTERNAL_TLS_SERVER_NAME replaces the address's host in the certificate check."""

    def check_with(server_name: str) -> object:
        settings = cluster.settings.replace(internal_tls_server_name=server_name)
        with sync_channel(settings.service_addr("enroll"), "", settings) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=REFUSED_WITHIN_S
                )
            except grpc.RpcError as exc:
                return exc.code()
            return "SERVING"

    assert check_with("") == "SERVING"  # 127.0.0.1 is among the certificate's SANs
    assert check_with("quarry-internal") == "SERVING"
    assert check_with("not-in-the-certificate.example") == grpc.StatusCode.UNAVAILABLE


def test_the_cli_without_internal_tls_is_refused_with_a_clear_error(
    cluster: QuarryCluster,
) -> None:
    env = {**cluster.env(), "QUARRY_INTERNAL_TLS": "off"}
    done = subprocess.run(
        [sys.executable, "-m", "quarry", "nodes", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr
    assert "QUARRY_INTERNAL_TLS" in done.stderr


# --- ZeroMQ CURVE: only allowed gateway keys deliver logs -----------------------------


def dealer_with(cluster: QuarryCluster, keys: CurveKeys) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    secure_dealer(socket, keys)
    socket.connect(cluster.settings.zmq_endpoints()[0])
    return socket


def keys_in(folder: Path, name: str, cluster: QuarryCluster) -> CurveKeys:
    public, secret = zmq.auth.load_certificate(folder / f"{name}.key_secret")
    server_public, _ = zmq.auth.load_certificate(cluster.state_dir / "zmq-curve" / "server.key")
    assert secret is not None
    return CurveKeys(public, secret, server_public)


def result_batch(host: str) -> logs_pb2.LogBatch:
    record = log_records.event_record("curve", host, NOW, {"line": host})
    return logs_pb2.LogBatch(
        batch_id=uuid.uuid4().hex,
        kind=logs_pb2.RESULT,
        node_id="node-curve",
        host_identifier=host,
        received_at=NOW,
        data_json=orjson.dumps([record]),
    )


def ack_for(socket: zmq.Socket, batch: logs_pb2.LogBatch, wait_s: float) -> logs_pb2.LogAck | None:
    socket.send_multipart([b"corr", batch.SerializeToString()])
    if not socket.poll(int(wait_s * 1000)):
        return None
    _, ack = socket.recv_multipart()
    return logs_pb2.LogAck.FromString(ack)


def test_a_dealer_with_an_unknown_key_delivers_nothing_and_the_right_key_does(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    create_key_pair(tmp_path, "stranger")
    stranger = dealer_with(cluster, keys_in(tmp_path, "stranger", cluster))
    gateway = dealer_with(cluster, keys_in(cluster.state_dir / "zmq-curve", "client", cluster))
    try:
        refused_host, accepted_host = f"stranger-{uuid.uuid4().hex}", f"gw-{uuid.uuid4().hex}"
        assert ack_for(stranger, result_batch(refused_host), wait_s=3) is None
        ack = ack_for(gateway, result_batch(accepted_host), wait_s=30)
        assert ack is not None and ack.ok and ack.rows == 1
    finally:
        stranger.close()
        gateway.close()
    assert eventually(lambda: stored_results(cluster, accepted_host)) == [
        {"name": "curve", "column_values": [accepted_host]}
    ]
    assert stored_results(cluster, refused_host) == []
    assert eventually(lambda: ingest_metric(cluster, "quarry_ingest_curve_refusals_total") >= 1)


def ingest_metric(cluster: QuarryCluster, name: str) -> float:
    port = cluster.settings.metrics_port("ingest")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_gateway_with_an_unknown_key_gets_errors_until_its_key_is_authorized(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    """No silent loss: the logger POST fails (osquery keeps its batch and retries), and a key
    authorized later works without restarting ingest or the gateway (key rotation)."""
    curve = tmp_path / "curve"
    curve.mkdir()
    server_key = cluster.state_dir / "zmq-curve" / "server.key"
    (curve / "server.key").write_bytes(server_key.read_bytes())
    create_key_pair(curve, "client")  # a key pair ingest has never heard of
    gateway = ServiceProcess(
        "gateway", tmp_path / "gateway", free_port_base(), second_gateway_env(cluster, curve)
    ).start()
    try:

        async def scenario() -> tuple[OsqueryNode, bool, str, bool]:
            async with new_node(cluster, gateway=f"localhost:{gateway.port_base}") as node:
                assert await node.get_node_key()  # its gRPC calls, over mutual TLS, work
                host = node.host_identifier
                record = log_records.event_record("late-key", host, NOW, {"x": "1"})
                refused = await node.send_logs("result", [record])
                error = node.last_error
                await asyncio.to_thread(
                    cluster.cli, "curve", "authorize", "late", str(curve / "client.key")
                )
                for _ in range(120):
                    if await node.send_logs("result", [record]):
                        return node, refused, error, True
                    await asyncio.sleep(0.5)
                return node, refused, error, False

        node, refused, error, delivered_later = asyncio.run(scenario())
    finally:
        stopped = gateway.stop()
    # Ended by SIGTERM (a drain, then exit 0), not killed after a hang: its monitor
    # sockets were closed with the rest, so its ZeroMQ context could end.
    assert stopped in (0, -signal.SIGTERM), gateway.log_text()
    assert refused is False
    assert "ingest" in error
    assert delivered_later, gateway.log_text()
    assert "refused the CURVE handshake" in gateway.log_text()
    assert stored_results(cluster, node.host_identifier) == [
        {"name": "late-key", "column_values": ["1"]}
    ]


def second_gateway_env(cluster: QuarryCluster, curve: Path) -> dict[str, str]:
    """A gateway with its own state directory, using the cluster's services and files."""
    internal = cluster.state_dir / "internal-tls"
    tls = cluster.state_dir / "tls"
    settings = cluster.settings
    return {
        **ENCRYPTED,
        "QUARRY_ZMQ_CURVE_DIR": str(curve),
        "QUARRY_INTERNAL_TLS_CA": str(internal / "ca.pem"),
        "QUARRY_INTERNAL_TLS_CERT": str(internal / "quarry-internal.pem"),
        "QUARRY_INTERNAL_TLS_KEY": str(internal / "quarry-internal.key"),
        **{
            f"QUARRY_{name.upper()}_ADDR": settings.service_addr(name)
            for name in ("enroll", "config", "distributed")
        },
        "QUARRY_INGEST_ZMQ_ADDRS": settings.zmq_endpoints()[0],
        "QUARRY_SERVICE_TOKEN": (cluster.state_dir / "service_token").read_text().strip(),
        "QUARRY_TLS_CERT": str(tls / "server.pem"),
        "QUARRY_TLS_KEY": str(tls / "server.key"),
        "QUARRY_TLS_CA": str(tls / "ca.pem"),
    }


def test_ingest_with_curve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """Its ZAP handler and monitor sockets are closed, or the ZeroMQ context never ends."""
    quarry_json(tmp_path, "curve", "init")
    ingest = ServiceProcess("ingest", tmp_path, free_port_base(), {"QUARRY_ZMQ_CURVE": "on"})
    ingest.start()
    port = ingest.settings.metrics_port("ingest")
    assert eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200)
    assert ingest.stop() == 0, ingest.log_text()


# --- the key-making commands ----------------------------------------------------------


def quarry_json(state_dir: Path, *args: str) -> object:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    done = subprocess.run(
        [sys.executable, "-m", "quarry", *args, "--json"],
        env={**env, "QUARRY_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_init_commands_make_owner_only_keys_and_keep_them_on_a_second_run(
    tmp_path: Path,
) -> None:
    first = quarry_json(tmp_path, "tls", "internal", "init", "--san", "quarry.internal.example")
    assert first["issued"] is True
    assert {"quarry-enroll", "quarry-ingest", "127.0.0.1", "quarry.internal.example"} <= set(
        first["sans"]
    )
    again = quarry_json(tmp_path, "tls", "internal", "init")
    assert again["issued"] is False and again["cert"] == first["cert"]
    renewed = quarry_json(tmp_path, "tls", "internal", "init", "--renew")
    assert renewed["issued"] is True
    curve = quarry_json(tmp_path, "curve", "init")
    assert sorted(Path(p).name for p in curve["created"]) == [
        "client.key",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert quarry_json(tmp_path, "curve", "init")["created"] == []
    secrets = [Path(first["ca_key"]), Path(first["key"])]
    secrets += [p for p in map(Path, curve["created"]) if p.suffix == ".key_secret"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in secrets} == {0o600}
    added = quarry_json(tmp_path, "curve", "add-client", "gateway-2")
    assert stat.S_IMODE(os.stat(added["secret"]).st_mode) == 0o600
    # Given the secret file by mistake, authorize still writes the public key only.
    authorized = quarry_json(tmp_path, "curve", "authorize", "gateway-3", added["secret"])
    assert "secret-key" not in Path(authorized["authorized"]).read_text()
    listed = quarry_json(tmp_path, "curve", "list")
    assert [k["name"] for k in listed] == ["client", "gateway-2", "gateway-3"]
    assert listed[1]["public_key"] == listed[2]["public_key"]
