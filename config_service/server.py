"""Process entry point of the config service: its parts and the label loop, run by
quarry/serving/service_process.py."""

from __future__ import annotations

import asyncio
import logging

from config_service.fleet_directory import FleetDirectory
from config_service.label_evaluator import LabelEvaluator
from config_service.service import ConfigServicer
from config_service.store import SERVICE_SCHEMA, ConfigStore
from osquery_config.validation import combined_targets_warnings
from protos.v1 import config_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.service_process import ServiceParts, run_service
from quarry.state.database import StateDatabase

log = logging.getLogger(__name__)

# Replicas on PostgreSQL: the one holding this lock evaluates the labels.
LABEL_EVALUATION_LOCK_KEY = 0x717561727279_12


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    await run_service(
        settings, SERVICE_SCHEMA, settings.config_port, lambda database: _parts(settings, database)
    )


def _parts(settings: Settings, database: StateDatabase) -> ServiceParts:
    store = ConfigStore(database)
    _warn_of_combined_targets(store)
    directory = FleetDirectory(settings.service_addr("enroll"))
    servicer = ConfigServicer(store, directory)
    labels = LabelEvaluator(
        store,
        directory,
        settings.service_addr("distributed"),
        defined_labels=servicer.defined_labels,
        write_members=servicer.set_label_members,
        forget_labels_except=servicer.forget_labels_except,
        leads=lambda: database.holds_lead(LABEL_EVALUATION_LOCK_KEY),
    )
    return ServiceParts(
        register=lambda s: config_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, s),
        changes=servicer.changes,
        close_watches=servicer.close_watches,
        loops=[labels.run],
        close=[labels.close, directory.close],
    )


def _warn_of_combined_targets(store: ConfigStore) -> None:
    """Say at start which live blocks mean AND where an earlier Quarry meant OR: after an
    upgrade their meaning changed before any apply could warn (docs/config.md)."""
    live = store.live()
    for warning in combined_targets_warnings(live.state):
        log.warning("live config version %d: %s", live.version, warning)
