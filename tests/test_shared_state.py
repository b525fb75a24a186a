"""Two replicas of each stateful service on one PostgreSQL, behind two gateways.

Real processes (docs/adr/0009-shared-state-in-postgresql.md): enroll, config and
distributed replicas A and B share one PostgreSQL database; gateway 1 talks to the A
replicas only, gateway 2 to the B replicas only, so whatever one gateway sees of a change
made through the other side crossed PostgreSQL (the change outbox, or a read of the shared
tables). Emulated osquery nodes drive the gateways; one ingest process (embedded
ClickHouse) stores the live query answers. `quarry migrate` is checked on both backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from enroll_service.enroll_secrets import KIND_CREATED, SecretPolicy, SecretRecord
from enroll_service.store import SERVICE_SCHEMA, NewNode, NodeFilter, NodeStore
from protos.v1 import (
    config_pb2,
    config_pb2_grpc,
    distributed_pb2,
    distributed_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
)
from quarry.encryption.gateway_certificates import ensure_certificates
from quarry.runtime.settings import PORT_OFFSETS, Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.service_database import open_service_database
from tests.emulator import HostProfile, OsqueryNode
from tests.emulator.response import INVALID_NODE_KEY
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.postgres_server import (
    PG_BIN,
    fresh_database,
    start_cluster,
    stop_cluster,
    throwaway_cluster,
)
from tests.service_processes import REPO_ROOT, ServiceProcess
from tests.test_services_grpc import StreamReader, is_snapshot_done

ENROLL_SECRET = "shared-state-secret"
RPC_TIMEOUT_S = 10.0
STATEFUL = ("enroll", "config", "distributed")
NodeEvent = enroll_pb2.NodeEvent
_host_numbers = itertools.count(1)


@dataclass
class Side:
    """One gateway and the replicas it talks to."""

    gateway: ServiceProcess
    services: dict[str, ServiceProcess]

    def enroll(self) -> enroll_pb2_grpc.EnrollServiceStub:
        return enroll_pb2_grpc.EnrollServiceStub(sync_channel(self.services["enroll"].addr))

    def config(self) -> config_pb2_grpc.ConfigServiceStub:
        return config_pb2_grpc.ConfigServiceStub(sync_channel(self.services["config"].addr))

    def distributed(self) -> distributed_pb2_grpc.DistributedServiceStub:
        channel = sync_channel(self.services["distributed"].addr)
        return distributed_pb2_grpc.DistributedServiceStub(channel)


@dataclass
class Replicas:
    ca: Path
    one: Side  # gateway 1 and the A replicas
    two: Side  # gateway 2 and the B replicas

    def node(
        self, side: Side, profile: HostProfile | None = None, **options: object
    ) -> OsqueryNode:
        profile = profile or HostProfile.make(next(_host_numbers), seed=side.gateway.port_base)
        defaults: dict[str, object] = {
            "server": f"localhost:{side.gateway.settings.gateway_port}",
            "ca_file": self.ca,
            "enroll_secret": ENROLL_SECRET,
            "profile": profile,
            "host_identifier": profile.hardware_uuid.lower(),
            "retry_time_scale": 0,
            "enroll_max_attempts": 1,
            "config_max_attempts": 1,
        }
        return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    scratch = tmp_path_factory.mktemp("shared-state")
    tls = scratch / "tls"
    ensure_certificates(tls, ["localhost"])
    ingest = ServiceProcess("ingest", scratch / "ingest", free_port_base())
    shared = {
        "QUARRY_DATABASE_URL": fresh_database(postgres_url),
        "QUARRY_ENROLL_SECRET": ENROLL_SECRET,
        # Every process must present and accept the same service token.
        "QUARRY_SERVICE_TOKEN": "shared-state-service-token",
        "QUARRY_CHECKIN_FLUSH_INTERVAL_S": "0.2",
    }
    started: list[ServiceProcess] = []
    try:
        started.append(ingest.start())
        sides = []
        for letter in "ab":
            bases = {name: free_port_base() for name in STATEFUL}
            addrs = {
                f"QUARRY_{name.upper()}_ADDR": f"127.0.0.1:{base + PORT_OFFSETS[f'{name}_port']}"
                for name, base in bases.items()
            }
            processes = {
                name: ServiceProcess(name, scratch / f"{name}-{letter}", base, {**shared, **addrs})
                for name, base in bases.items()
            }
            for process in processes.values():
                started.append(process.start())
            gateway_env = {
                **shared,
                **addrs,
                "QUARRY_INGEST_ZMQ_ADDRS": f"tcp://127.0.0.1:{ingest.settings.ingest_zmq_port}",
                "QUARRY_TLS_CERT": str(tls / "server.pem"),
                "QUARRY_TLS_KEY": str(tls / "server.key"),
                "QUARRY_TLS_CA": str(tls / "ca.pem"),
            }
            gateway = ServiceProcess(
                "gateway", scratch / f"gateway-{letter}", free_port_base(), gateway_env
            )
            started.append(gateway.start())
            sides.append(Side(gateway, processes))
        yield Replicas(tls / "ca.pem", *sides)
    finally:
        for process in reversed(started):
            process.stop()


def test_a_change_through_replica_a_reaches_the_watchers_of_replica_b(replicas: Replicas) -> None:
    watch = StreamReader(replicas.two.enroll().WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        enrolled = replicas.one.enroll().Enroll(
            enroll_pb2.EnrollRequest(
                enroll_secret=ENROLL_SECRET,
                host_identifier="watched-across",
                remote_addr="127.0.0.1",
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert enrolled.ok, enrolled.reason
        event = watch.until(lambda e: e.node.node_key == enrolled.node_key)[-1]
    finally:
        watch.close()
    assert event.kind == NodeEvent.UPSERT
    assert event.node.node_id == enrolled.node.node_id


def test_enrolled_through_gateway_1_authenticates_through_gateway_2(replicas: Replicas) -> None:
    async def scenario() -> tuple[str, dict | None]:
        first = replicas.node(replicas.one)
        async with first, replicas.node(replicas.two, profile=first.profile) as second:
            second.node_key = await first.get_node_key()
            assert second.node_key, first.last_error
            return second.node_key, await second.fetch_config()

    key, config = asyncio.run(scenario())
    assert isinstance(config, dict)
    assert replicas.two.enroll().GetNode(enroll_pb2.GetNodeRequest(node_key=key)).found


def test_a_config_set_through_replica_a_reaches_a_node_on_gateway_2(replicas: Replicas) -> None:
    config = {"options": {"distributed_interval": 17}, "schedule": {}}
    stored = replicas.one.config().SetConfig(
        config_pb2.SetConfigRequest(config_json=json.dumps(config), author="replica-a"),
        timeout=RPC_TIMEOUT_S,
    )
    assert stored.version > 0

    async def options_seen_on_gateway_2() -> dict:
        async with replicas.node(replicas.two) as node:
            assert await node.get_node_key(), node.last_error
            for _ in range(300):
                fetched = await node.fetch_config()
                if fetched and fetched.get("options", {}).get("distributed_interval") == 17:
                    return fetched
                await asyncio.sleep(0.1)
            return fetched or {}

    assert asyncio.run(options_seen_on_gateway_2())["options"]["distributed_interval"] == 17
    live = replicas.two.config().GetConfig(config_pb2.GetConfigRequest(), timeout=RPC_TIMEOUT_S)
    assert live.version == stored.version


def test_a_live_query_started_on_replica_b_is_answered_through_gateway_1(
    replicas: Replicas,
) -> None:
    async def answered() -> tuple[str, str]:
        async with replicas.node(replicas.one) as node:
            assert await node.get_node_key(), node.last_error
            node_id = (
                replicas.one.enroll()
                .GetNode(enroll_pb2.GetNodeRequest(node_key=node.node_key))
                .node_id
            )
            campaign = replicas.two.distributed().StartQuery(
                distributed_pb2.StartQueryRequest(
                    sql="SELECT 1 AS one", node_ids=[node_id], author="replica-b"
                ),
                timeout=RPC_TIMEOUT_S,
            )
            for _ in range(300):
                round_ = await node.run_distributed_once()
                if campaign.campaign_id in round_.results and round_.written:
                    return campaign.campaign_id, node_id
                await asyncio.sleep(0.1)
            raise AssertionError(f"campaign never answered through gateway 1: {node.last_error}")

    campaign_id, node_id = asyncio.run(answered())

    def state_on_replica_b() -> int:
        report = replicas.two.distributed().GetCampaign(
            distributed_pb2.GetCampaignRequest(campaign_id=campaign_id), timeout=RPC_TIMEOUT_S
        )
        return next(h.state for h in report.hosts if h.node_id == node_id)

    assert eventually(lambda: state_on_replica_b() == distributed_pb2.HostState.ANSWERED)


def test_a_node_revoked_on_one_replica_is_invalid_on_both_gateways(replicas: Replicas) -> None:
    async def scenario() -> dict[str, str]:
        first = replicas.node(replicas.one, disable_reenrollment=True)
        second = replicas.node(replicas.two, profile=first.profile, disable_reenrollment=True)
        async with first, second:
            second.node_key = await first.get_node_key()
            assert await first.fetch_config() is not None
            assert await second.fetch_config() is not None
            replicas.two.enroll().RevokeNode(
                enroll_pb2.NodeRef(node=first.node_key), timeout=RPC_TIMEOUT_S
            )
            refused: dict[str, str] = {}
            for _ in range(300):
                for name, node in (("gateway 1", first), ("gateway 2", second)):
                    if name not in refused and await node.fetch_config() is None:
                        refused[name] = node.last_error
                if len(refused) == 2:
                    break
                await asyncio.sleep(0.1)
            return refused

    refused = asyncio.run(scenario())
    assert set(refused) == {"gateway 1", "gateway 2"}
    assert all(error.startswith(INVALID_NODE_KEY) for error in refused.values()), refused


def test_concurrent_enrollments_through_both_replicas_make_one_node_per_machine(
    replicas: Replicas,
) -> None:
    machines = 12
    before = {n.node_id for n in list_nodes(replicas)}

    async def enroll_everywhere() -> list[str]:
        profiles = [HostProfile.make(1000 + i, seed=7) for i in range(machines)]
        # Each machine enrolls through both gateways at once (a cloned image, or a
        # retry landing on the other side of the load balancer).
        nodes = [
            replicas.node(side, profile=p)
            for p in profiles
            for side in (replicas.one, replicas.two)
        ]
        try:
            return await asyncio.gather(*(node.get_node_key() for node in nodes))
        finally:
            for node in nodes:
                await node.aclose()

    keys = asyncio.run(enroll_everywhere())
    assert all(keys), "every enrollment succeeds"
    new_nodes = [n for n in list_nodes(replicas) if n.node_id not in before]
    assert len(new_nodes) == machines
    assert len({n.identity for n in new_nodes}) == machines
    # Every key handed out either still works or was replaced by its machine's other one.
    assert sum(not n.revoked for n in new_nodes) == machines


def test_a_quota_shared_by_replicas_is_never_exceeded(replicas: Replicas) -> None:
    quota = 5
    created = replicas.one.enroll().CreateSecret(
        enroll_pb2.CreateSecretRequest(name="quota-shared", max_enrollments=quota),
        timeout=RPC_TIMEOUT_S,
    )

    async def enroll_many() -> list[str]:
        nodes = [
            replicas.node(side, enroll_secret=created.value)
            for _ in range(quota * 2)
            for side in (replicas.one, replicas.two)
        ]
        try:
            return await asyncio.gather(*(node.get_node_key() for node in nodes))
        finally:
            for node in nodes:
                await node.aclose()

    keys = asyncio.run(enroll_many())
    assert sum(bool(k) for k in keys) == quota
    listed = replicas.two.enroll().ListSecrets(
        enroll_pb2.ListSecretsRequest(include_inactive=True), timeout=RPC_TIMEOUT_S
    )
    [secret] = [s for s in listed.secrets if s.secret_id == created.secret.secret_id]
    assert secret.enrollments == quota


def test_one_config_replica_evaluates_the_labels(replicas: Replicas) -> None:
    state = {
        "blocks": {"base": {"targets": {"all": True}, "config": {"options": {}}}},
        "labels": {"docker": {"query": "SELECT 1 FROM processes", "interval": 1}},
    }
    replicas.one.config().ApplyState(
        config_pb2.ApplyStateRequest(state_json=json.dumps(state), author="t"),
        timeout=RPC_TIMEOUT_S,
    )
    configs = [replicas.one.services["config"], replicas.two.services["config"]]

    def evaluations() -> list[float]:
        return [metric(p, "quarry_config_label_evaluations_total") for p in configs]

    # Each replica sees the label (the state is shared); only the leader runs it.
    assert eventually(lambda: max(evaluations()) >= 2)
    assert sorted(evaluations())[0] == 0


def metric(process: ServiceProcess, name: str) -> float:
    port = process.settings.metrics_port(process.name)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_naming_searching_and_listing_on_postgresql(replicas: Replicas) -> None:
    """The SQL of node names, node search and campaign listing, on PostgreSQL."""
    profile = HostProfile.make(next(_host_numbers), seed=replicas.one.gateway.port_base)
    profile = dataclasses.replace(profile, hostname="Pg_Named-1")

    async def enroll() -> str:
        async with replicas.node(replicas.one, profile=profile) as node:
            await node.get_node_key()
            return node.host_identifier

    host_identifier = asyncio.run(enroll())
    enroll_rpc = replicas.two.enroll()
    resolved = enroll_rpc.ResolveNodes(
        enroll_pb2.ResolveNodesRequest(refs=["pg_named-1", host_identifier]),
        timeout=RPC_TIMEOUT_S,
    ).nodes
    assert [n.host_identifier for n in resolved] == [host_identifier, host_identifier]
    assert not resolved[0].node_key

    def searched(text: str) -> list[str]:
        request = enroll_pb2.ListNodesRequest(search=text)
        return [n.hostname for n in enroll_rpc.ListNodes(request, timeout=RPC_TIMEOUT_S).nodes]

    assert searched("G_NAMED") == ["Pg_Named-1"]
    assert searched("pg%named") == []  # % is a character, not a wildcard

    distributed = replicas.two.distributed()
    for author in ("pg-lister", "label pg", "pg-lister"):
        distributed.StartQuery(
            distributed_pb2.StartQueryRequest(sql=f"SELECT '{author}'", author=author),
            timeout=RPC_TIMEOUT_S,
        )

    def listed(**filters: object) -> list[str]:
        request = distributed_pb2.ListCampaignsRequest(include_closed=True, **filters)
        reply = distributed.ListCampaigns(request, timeout=RPC_TIMEOUT_S)
        return [c.author for c in reply.campaigns if c.author.startswith(("pg", "label pg"))]

    assert listed(exclude_labels=True) == ["pg-lister", "pg-lister"]
    assert listed(author="label pg") == ["label pg"]
    assert len(listed(author="pg-lister", limit=1)) == 1
    assert listed(status="cancelled") == []


def list_nodes(replicas: Replicas) -> list[enroll_pb2.Node]:
    listed = replicas.one.enroll().ListNodes(enroll_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT_S)
    return list(listed.nodes)


# --- the stores of two replicas, racing ------------------------------------------------


def test_two_replicas_stores_racing_on_the_same_machines_lose_no_update(
    postgres_url: str,
) -> None:
    """Two NodeStores on their own connections (two replicas) enroll the same machines at
    once from threads, each with its own secret (so no row lock orders them); the advisory
    lock leaves one node per machine and one revision per change."""
    settings = Settings(database_url=fresh_database(postgres_url))
    databases = [open_service_database(settings, SERVICE_SCHEMA) for _ in range(2)]
    try:
        stores = [NodeStore(database) for database in databases]
        secrets_used = [
            store.create_secret(SecretPolicy(name=f"race-{i}"), KIND_CREATED, f"hash-{i}", 1)
            for i, store in enumerate(stores)
        ]
        machines, rounds = 20, 5

        def enroll_all(store: NodeStore, secret: SecretRecord) -> None:
            for round_ in range(rounds):
                for machine in range(machines):
                    store.enroll(new_node(f"machine-{machine}"), secret, now=100 + round_)

        threads = [
            threading.Thread(target=enroll_all, args=pair)
            for pair in zip(stores, secrets_used, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        nodes = stores[1].list_nodes(NodeFilter())
        assert sorted(n.identity for n in nodes) == sorted(f"machine-{m}" for m in range(machines))
        for secret in secrets_used:
            # A quota counts machines: each secret counted every machine once.
            [counted] = stores[1].secrets_by_ref(secret.secret_id)
            assert counted.enrollments == machines
        revisions = [r[0] for r in databases[0].execute("SELECT revision FROM nodes")]
        assert len(set(revisions)) == len(revisions)
        assert max(revisions) == 2 * machines * rounds
    finally:
        for database in databases:
            database.close()


def new_node(identity: str) -> NewNode:
    return NewNode(
        node_key=secrets.token_urlsafe(16),
        identity=identity,
        host_identifier=identity,
        hardware_uuid="",
        hardware_serial="",
        platform_type="9",
        platform="ubuntu",
        osquery_version="5.12.1",
        hostname=identity,
        host_details_json="{}",
        client_certificate_json="",
        pending=False,
    )


# --- quarry migrate --------------------------------------------------------------------


def quarry_migrate(state_dir: Path, env: dict[str, str], *args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "quarry", "--state-dir", str(state_dir), "migrate", "--json", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def statuses(report: dict) -> dict[tuple[str, int], str]:
    return {(m["component"], m["version"]): m["status"] for m in report["migrations"]}


def test_quarry_migrate_applies_each_migration_once(
    state_env: dict[str, str], tmp_path: Path
) -> None:
    pending = statuses(quarry_migrate(tmp_path, state_env, "--dry-run"))
    assert set(pending.values()) == {"pending"}
    assert ("enroll.nodes", 1) in pending and ("distributed", 1) in pending
    assert (("enroll.changes", 1) in pending) == bool(state_env)  # the outbox: PostgreSQL only

    applied = statuses(quarry_migrate(tmp_path, state_env))
    assert applied == {step: "applied" for step in pending}
    again = statuses(quarry_migrate(tmp_path, state_env))
    assert again == {step: "already applied" for step in pending}
    only_config = statuses(quarry_migrate(tmp_path, state_env, "--service", "config"))
    assert {component for component, _ in only_config} <= {"config", "config.changes"}


def test_a_dry_run_on_sqlite_writes_nothing(tmp_path: Path) -> None:
    """Neither a file for a state not made yet, nor anything in an existing one (not even
    the migration history table)."""
    pending = statuses(quarry_migrate(tmp_path, {}, "--dry-run"))
    assert set(pending.values()) == {"pending"}
    assert list(tmp_path.iterdir()) == []

    quarry_migrate(tmp_path, {})
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    again = statuses(quarry_migrate(tmp_path, {}, "--dry-run"))
    assert again == {step: "already applied" for step in pending}
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_a_dry_run_on_postgresql_leaves_no_table(postgres_url: str, tmp_path: Path) -> None:
    """Not even the migration history table: a dry run's transaction is rolled back."""
    import psycopg

    url = fresh_database(postgres_url)
    (tmp_path / "state").mkdir()
    pending = statuses(
        quarry_migrate(tmp_path / "state", {"QUARRY_DATABASE_URL": url}, "--dry-run")
    )
    assert pending and set(pending.values()) == {"pending"}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == []


def test_replicas_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    env = {"QUARRY_DATABASE_URL": fresh_database(postgres_url)}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quarry",
                "--state-dir",
                str(tmp_path / str(i)),
                "migrate",
                "--json",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        reports.append(statuses(json.loads(out)))
    for step in reports[0]:
        # Exactly one of the three applied each migration; the others found it done.
        assert [r[step] for r in reports].count("applied") == 1, step


# --- PostgreSQL down ------------------------------------------------------------------


def test_while_postgresql_is_down_gateways_serve_and_services_answer_errors(
    tmp_path: Path,
) -> None:
    """A private cluster stopped under running services: the gateway keeps answering known
    nodes from memory, the services answer errors at once, and once PostgreSQL is back
    they serve again and their change relays resume."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"needs PostgreSQL in {PG_BIN}")
    with throwaway_cluster() as (cluster_root, port):
        server = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        replicas_env = {
            "QUARRY_DATABASE_URL": fresh_database(server),
            "QUARRY_ENROLL_SECRET": ENROLL_SECRET,
        }
        scratch = tmp_path / "quarry"
        ensure_certificates(scratch / "tls", ["localhost"])
        base = free_port_base()
        tls = {
            "QUARRY_TLS_CERT": str(scratch / "tls" / "server.pem"),
            "QUARRY_TLS_KEY": str(scratch / "tls" / "server.key"),
            "QUARRY_TLS_CA": str(scratch / "tls" / "ca.pem"),
        }
        processes = [
            ServiceProcess(name, scratch, base, {**replicas_env, **tls})
            for name in (*STATEFUL, "gateway")
        ]
        try:
            for process in processes:
                process.start()
            side = Side(processes[-1], {p.name: p for p in processes[:-1]})
            outage_scenario(Replicas(scratch / "tls" / "ca.pem", side, side), cluster_root, port)
        finally:
            for process in reversed(processes):
                process.stop()


def outage_scenario(replicas: Replicas, cluster_root: Path, port: int) -> None:
    side = replicas.one

    def list_nodes_error() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            side.enroll().ListNodes(enroll_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT_S)
        return refused.value

    def listed() -> int:
        try:
            return len(list_nodes(replicas)) or -1
        except grpc.RpcError:
            return 0

    async def scenario() -> tuple[grpc.RpcError, str, str, dict | None]:
        async with (
            replicas.node(side, disable_reenrollment=True) as node,
            replicas.node(side) as stranger,
        ):
            assert await node.get_node_key(), node.last_error
            assert await node.fetch_config() is not None
            await asyncio.to_thread(stop_cluster, cluster_root)
            try:
                # Known nodes are answered from the gateway's memory.
                served = await node.fetch_config()
                # The services answer an error, not silence.
                refused = await asyncio.to_thread(list_nodes_error)
                # A new machine cannot enroll now (osquery retries later).
                stranger_key = await stranger.get_node_key()
            finally:
                await asyncio.to_thread(start_cluster, cluster_root, port)
            assert await asyncio.to_thread(eventually, listed) == 1
            # The change relay is back too: a revocation reaches the gateway's cache.
            side.enroll().RevokeNode(enroll_pb2.NodeRef(node=node.node_key), timeout=RPC_TIMEOUT_S)
            for _ in range(300):
                if await node.fetch_config() is None:
                    break
                await asyncio.sleep(0.1)
            return refused, stranger_key, node.last_error, served

    refused, stranger_key, error_after_revocation, served = asyncio.run(scenario())
    assert served is not None
    assert refused.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    assert "PostgreSQL" in (refused.details() or ""), refused.details()
    assert stranger_key == ""
    assert error_after_revocation.startswith(INVALID_NODE_KEY)
