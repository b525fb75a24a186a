"""Process entry point of the enroll service: its parts, run by quarry.serving.service_process."""

from __future__ import annotations

import asyncio
import logging

from enroll_service.admin_tokens import (
    AdminTokenStore,
    LocalTokenAuthority,
    bootstrap_root_token,
)
from enroll_service.config_tags import ConfigTags
from enroll_service.node_identity import check_identity_settings
from enroll_service.service import EnrollServicer
from enroll_service.store import SERVICE_SCHEMA, NodeStore
from protos.v1 import enroll_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.service_process import ServiceParts, run_service
from quarry.state.database import StateDatabase
from quarry.state.directory import ensure_enroll_secret_file

log = logging.getLogger(__name__)

# Secret expiry and the clone window move with the clock alone; their gauges follow.
GAUGE_REFRESH_S = 15.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    check_identity_settings(settings)
    # `quarry up` creates it too; a service started alone must not refuse everyone.
    secret_path = ensure_enroll_secret_file(settings)
    if not settings.enroll_secret:
        log.info("enroll secret read from %s", secret_path)
    await run_service(
        settings, SERVICE_SCHEMA, settings.enroll_port, lambda database: _parts(settings, database)
    )


def _parts(settings: Settings, database: StateDatabase) -> ServiceParts:
    tokens = AdminTokenStore(database)
    bootstrap_root_token(settings, tokens)
    config_tags = ConfigTags(settings.service_addr("config"))
    servicer = EnrollServicer(settings, NodeStore(database), tokens, config_tags)
    return ServiceParts(
        register=lambda s: enroll_pb2_grpc.add_EnrollServiceServicer_to_server(servicer, s),
        changes=servicer.changes,
        close_watches=servicer.close_watches,
        loops=[
            lambda: _refresh_gauges(servicer),
            lambda: _announce_seen(servicer, settings.node_seen_interval_s),
            config_tags.run,
        ],
        finish=[servicer.close],
        close=[config_tags.close],
        token_authority=LocalTokenAuthority(tokens),
    )


async def _announce_seen(servicer: EnrollServicer, interval_s: float) -> None:
    """Every interval, the last-seen times that moved, as one SEEN event (ADR 0020)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            servicer.announce_seen()
        except Exception:
            log.exception("announcing last-seen times failed; trying again later")


async def _refresh_gauges(servicer: EnrollServicer) -> None:
    while True:
        await asyncio.sleep(GAUGE_REFRESH_S)
        try:
            servicer.refresh_gauges()
        except Exception:
            log.exception("refreshing the enroll gauges failed; trying again later")
