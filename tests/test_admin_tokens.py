"""Admin token expiry, last use and the schema migration, at the store on SQLite and
PostgreSQL; and audit entries that survive an enroll service outage, on real processes.

The end-to-end checks of expiry and last use through the CLI against a `quarry up`
cluster are in tests/test_admin_auth.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enroll_service.admin_tokens import (
    LAST_USED_RESOLUTION_S,
    MIGRATIONS,
    AdminTokenStore,
    LocalTokenAuthority,
)
from enroll_service.store import SERVICE_SCHEMA
from protos.v1 import config_pb2, config_pb2_grpc, enroll_pb2
from quarry.access.admin_auth import (
    ANONYMOUS_AUDIT_PER_MINUTE,
    AdminGate,
    Refused,
    hash_token,
    new_token_value,
)
from quarry.access.audit_delivery import AuditDelivery
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.database import StateDatabase, open_state_database
from quarry.state.migrations import migrate
from quarry.state.service_database import open_service_database
from tests.conftest import STATE_BACKENDS
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.postgres_server import fresh_database
from tests.service_processes import REPO_ROOT, ServiceProcess

NOW = 1_800_000_000  # 2027-01-15, as the store is told
PAST = 1_700_000_000  # 2023-11-14, before any real clock running these tests
LIST_SECRETS = "/quarry.v1.EnrollService/ListSecrets"
COMPONENT = "enroll.admin_tokens"


@pytest.fixture(params=STATE_BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of an enroll database of its own: a SQLite file, or a fresh PostgreSQL one."""
    env = {"QUARRY_STATE_DIR": str(tmp_path)}
    if request.param == "postgresql":
        env["QUARRY_DATABASE_URL"] = fresh_database(request.getfixturevalue("postgres_url"))
    return Settings.from_env(env)


@pytest.fixture
def store(settings: Settings) -> Iterator[AdminTokenStore]:
    database = open_service_database(settings, SERVICE_SCHEMA)
    yield AdminTokenStore(database)
    database.close()


def create(store: AdminTokenStore, name: str, expires_at: int = 0, now: int = NOW) -> str:
    value = new_token_value()
    assert store.create(name, "operator", value, now, expires_at) is not None
    return value


def listed(store: AdminTokenStore, now: float) -> dict[str, tuple[str, int, int]]:
    """name -> (state, expires_at, last_used_at) of every token."""
    return {r.name: (r.state(now), r.expires_at, r.last_used_at) for r in store.tokens(True)}


def test_a_token_is_active_until_its_expiry_then_expired(store: AdminTokenStore) -> None:
    create(store, "temporary", expires_at=NOW + 3600)
    create(store, "forever")
    assert listed(store, NOW)["temporary"] == ("active", NOW + 3600, 0)
    assert listed(store, NOW + 3599)["temporary"][0] == "active"
    assert listed(store, NOW + 3600)["temporary"][0] == "expired"
    assert listed(store, NOW + 10**9)["forever"][0] == "active"
    store.revoke("temporary", NOW + 7200)
    assert listed(store, NOW + 7200)["temporary"][0] == "revoked"
    assert "temporary" not in {r.name for r in store.tokens(include_revoked=False)}


def test_resolve_carries_the_expiry_and_finds_an_expired_token(store: AdminTokenStore) -> None:
    value = create(store, "short", expires_at=NOW + 60)
    principal = store.resolve(hash_token(value), NOW)
    assert principal is not None and principal.expires_at == NOW + 60
    assert not principal.expired(NOW + 59) and principal.expired(NOW + 60)
    # Found after expiry, so the caller can say it expired; refused there (next test).
    assert store.resolve(hash_token(value), NOW + 120) == principal
    assert store.resolve(hash_token("qt_made-up"), NOW) is None


def test_an_expired_token_is_refused_with_its_own_message_an_unknown_one_is_not(
    store: AdminTokenStore,
) -> None:
    gate = AdminGate(LocalTokenAuthority(store), "enroll", "service-token-of-this-test")
    # The gate reads the real clock: this token expired years ago.
    expired = create(store, "gone", expires_at=PAST, now=PAST - 60)
    valid = create(store, "valid")

    with pytest.raises(Refused) as refused:
        asyncio.run(gate.admit(LIST_SECRETS, expired))
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.message == "admin token 'gone' expired at 2023-11-14T22:13:20Z"
    assert refused.value.principal is not None and refused.value.principal.name == "gone"

    with pytest.raises(Refused) as refused:
        asyncio.run(gate.admit(LIST_SECRETS, "qt_made-up"))
    assert refused.value.message == "unknown or revoked admin token"
    assert refused.value.principal is None

    assert asyncio.run(gate.admit(LIST_SECRETS, valid)).name == "valid"


def test_refusals_without_a_valid_token_are_audited_up_to_a_budget_a_minute(
    store: AdminTokenStore,
) -> None:
    """Anyone who reaches a gRPC port can be refused; only so many of those become rows."""
    gate = AdminGate(LocalTokenAuthority(store), "enroll", "service-token-of-this-test")
    valid = create(store, "valid")

    async def refused_then_recorded(calls: int) -> None:
        for _ in range(calls):
            try:
                await gate.admit(LIST_SECRETS, "qt_made-up")
            except Refused as refused:
                await gate.record(LIST_SECRETS, refused.principal, refused.code.name, None)
        principal = await gate.admit(LIST_SECRETS, valid)
        await gate.record(LIST_SECRETS, principal, "OK", None)

    asyncio.run(refused_then_recorded(ANONYMOUS_AUDIT_PER_MINUTE + 25))

    entries = store.audit(0, "", 10_000)
    assert sum(1 for e in entries if e.token_name == "") == ANONYMOUS_AUDIT_PER_MINUTE
    assert [e.outcome for e in entries if e.token_name == "valid"] == ["OK"]


def test_last_use_is_written_at_most_once_a_minute(store: AdminTokenStore) -> None:
    value = create(store, "busy", expires_at=NOW + 3600)
    assert listed(store, NOW)["busy"][2] == 0
    store.resolve(hash_token(value), NOW + 5)
    assert listed(store, NOW)["busy"][2] == NOW + 5
    store.resolve(hash_token(value), NOW + 5 + LAST_USED_RESOLUTION_S - 1)
    assert listed(store, NOW)["busy"][2] == NOW + 5
    store.resolve(hash_token(value), NOW + 5 + LAST_USED_RESOLUTION_S)
    assert listed(store, NOW)["busy"][2] == NOW + 5 + LAST_USED_RESOLUTION_S
    # Presenting it after expiry is no use of it.
    store.resolve(hash_token(value), NOW + 7200)
    assert listed(store, NOW)["busy"][2] == NOW + 5 + LAST_USED_RESOLUTION_S


def test_a_token_table_of_version_1_gets_expiry_and_last_use(settings: Settings) -> None:
    database: StateDatabase = open_state_database(settings, "enroll")
    try:
        migrate(database, COMPONENT, MIGRATIONS[:1])
        value = new_token_value()
        with database.transaction() as tx:
            tx.execute(
                "INSERT INTO admin_tokens (name, role, token_sha256, created_at)"
                " VALUES (?, ?, ?, ?)",
                ("veteran", "admin", hash_token(value), NOW),
            )
        steps = migrate(database, COMPONENT, MIGRATIONS)
        assert [(s.version, s.applied, s.already) for s in steps] == [
            (1, False, True),
            (2, True, False),
        ]
        store = AdminTokenStore(database)
        assert listed(store, NOW) == {"veteran": ("active", 0, 0)}
        store.resolve(hash_token(value), NOW + 10)
        assert listed(store, NOW) == {"veteran": ("active", 0, NOW + 10)}
        # Milliseconds-scale values fit: the columns are 64-bit on PostgreSQL too.
        far = 2**40
        assert store.create("far", "read-only", new_token_value(), NOW, far) is not None
        assert listed(store, NOW)["far"][1] == far
    finally:
        database.close()


# --- audit delivery -------------------------------------------------------------------


def entry(number: int) -> enroll_pb2.AuditEntry:
    return enroll_pb2.AuditEntry(at_ms=number, method="/quarry.v1.ConfigService/GetConfig")


class FlakyEnroll:
    """RecordAudit's stand-in for the queue's own rules: fails until told to store."""

    def __init__(self) -> None:
        self.up = False
        self.stored: list[int] = []

    async def send(self, audit_entry: enroll_pb2.AuditEntry) -> None:
        if not self.up:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        self.stored.append(audit_entry.at_ms)


def test_the_audit_queue_keeps_order_and_drops_the_oldest_past_its_bound() -> None:
    enroll = FlakyEnroll()

    async def outage_then_recovery() -> AuditDelivery:
        delivery = AuditDelivery(enroll.send, max_pending=3, first_retry_s=0.01)
        for number in range(1, 6):
            await delivery.deliver(entry(number))
        assert (delivery.pending, delivery.dropped) == (3, 2)
        enroll.up = True
        # Queued behind the others, not sent first; the queue is full, so 3 is dropped.
        await delivery.deliver(entry(6))
        while delivery.pending:
            await asyncio.sleep(0.01)
        return delivery

    delivery = asyncio.run(outage_then_recovery())
    assert enroll.stored == [4, 5, 6]
    assert delivery.dropped == 3


def metric(service: ServiceProcess, name: str) -> float:
    url = f"http://{service.settings.bind_host}:{service.settings.metrics_port(service.name)}"
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"metric {name} not exported")


def audit_list(state_dir: Path, port_base: int) -> list[dict]:
    """`quarry audit list --json` as an admin runs it (the root token of the tests)."""
    where = ["--state-dir", str(state_dir), "--port-base", str(port_base)]
    result = subprocess.run(
        [sys.executable, "-m", "quarry", *where, "audit", "list", "--json"],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_audit_entry_made_while_enroll_is_down_is_stored_when_it_is_back(
    tmp_path: Path,
) -> None:
    port_base = free_port_base()
    enroll = ServiceProcess("enroll", tmp_path, port_base).start()
    config = ServiceProcess("config", tmp_path, port_base).start()
    try:
        enroll.stop()
        # The root token (QUARRY_ADMIN_TOKEN, see conftest) is known without enroll.
        stub = config_pb2_grpc.ConfigServiceStub(sync_channel(config.addr))
        stub.GetConfig(config_pb2.GetConfigRequest(), timeout=30)
        assert metric(config, "quarry_admin_audit_pending") == 1
        assert "audit entry not stored yet (UNAVAILABLE)" in config.log_text()

        enroll.start()

        def stored_get_config() -> list[dict]:
            return [
                e
                for e in audit_list(tmp_path, port_base)
                if e["method"].endswith("/GetConfig") and e["service"] == "config"
            ]

        [stored] = eventually(stored_get_config, timeout_s=60)
        assert (stored["token_name"], stored["role"], stored["outcome"]) == ("root", "admin", "OK")
        assert eventually(lambda: metric(config, "quarry_admin_audit_pending") == 0)
        assert metric(config, "quarry_admin_audit_dropped_total") == 0
    finally:
        config.stop()
        enroll.stop()
