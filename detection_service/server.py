"""Process entry point of the detection service: the engine, the delivery loop, the live
rules' feed and the logs through ingest, run by quarry/serving/service_process.py.

One leader runs rules and deliveries: with PostgreSQL, the replica holding the service's
leader lock (a session advisory lock, quarry/state/database.py); with SQLite, the one
process that owns the file. The others serve `quarry detection list` and `test`.
"""

from __future__ import annotations

import asyncio

from detection_service.delivery import Delivery, destination_names
from detection_service.engine import Engine
from detection_service.service import DetectionServicer
from detection_service.sources import IngestLogs, LiveRules
from detection_service.store import SERVICE_SCHEMA, DetectionStore
from protos.v1 import detection_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.service_process import ServiceParts, run_service
from quarry.state.change_log import ChangeLog
from quarry.state.database import SERVICE_LOCK_KEYS, StateDatabase

# The leader's session lock: the service's write lock key with its top bit set.
LEADER_LOCK_KEY = SERVICE_LOCK_KEYS["detection"] | (1 << 62)


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    await run_service(
        settings,
        SERVICE_SCHEMA,
        settings.detection_port,
        lambda database: _parts(settings, database),
    )


def _parts(settings: Settings, database: StateDatabase) -> ServiceParts:
    store = DetectionStore(database)
    logs = IngestLogs(settings.service_addr("ingest"))

    def leads() -> bool:
        return database.holds_lead(LEADER_LOCK_KEY)

    engine = Engine(
        store,
        logs,
        destination_names(settings.detection_alertmanager_url, settings.detection_webhook_urls),
        settings.detection_settle_s,
        settings.detection_max_window_s,
        leads=leads,
        store_clock=logs.store_now,
    )
    delivery = Delivery(
        store,
        logs.store_alerts,
        settings.detection_alertmanager_url,
        settings.detection_repost_s,
        settings.detection_retry_base_s,
        settings.detection_retry_max_s,
        describe=lambda rule: engine.rules[rule].description if rule in engine.rules else "",
    )
    rules = LiveRules(settings.service_addr("config"), engine.set_rules)
    servicer = DetectionServicer(engine)
    return ServiceParts(
        register=lambda s: detection_pb2_grpc.add_DetectionServiceServicer_to_server(servicer, s),
        changes=ChangeLog(database, "detection", {}),
        close_watches=lambda: None,
        loops=[rules.run, engine.run_forever, lambda: delivery.run_forever(lambda: engine.leader)],
        close=[rules.close, logs.close, delivery.close],
    )
