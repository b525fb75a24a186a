"""The ConfigService gRPC servicer: validates, stores and publishes config versions."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc

from config_service import metrics
from config_service.store import ConfigStore, ConfigVersion
from config_service.validation import InvalidConfig, canonical_config
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.change_feed import ChangeFeed

log = logging.getLogger(__name__)


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, store: ConfigStore) -> None:
        self._store = store
        self._feed: ChangeFeed[config_pb2.ConfigDocument] = ChangeFeed()
        _show_live(store.live())

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        try:
            config_json = canonical_config(request.config_json)
        except InvalidConfig as exc:
            metrics.CONFIG_CHANGES.labels("invalid").inc()
            log.warning("config from %r refused: %s", request.author, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid config: {exc}")
        stored, created = self._store.add(config_json, request.author, now=int(time.time()))
        document = document_message(stored)
        if created:
            self._feed.publish(document)
            _show_live(stored)
            log.info("config version %d set by %r", stored.version, stored.author)
        metrics.CONFIG_CHANGES.labels("stored" if created else "unchanged").inc()
        return document

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        return document_message(self._store.live())

    async def WatchConfig(
        self, request: config_pb2.WatchConfigRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.ConfigDocument]:
        metrics.WATCH_STREAMS.inc()
        try:
            # Subscribe before reading the live version: no new version can slip in between.
            with self._feed.subscribe() as new_versions:
                yield document_message(self._store.live())
                async for document in new_versions:
                    yield document
        finally:
            metrics.WATCH_STREAMS.dec()


def document_message(version: ConfigVersion) -> config_pb2.ConfigDocument:
    return config_pb2.ConfigDocument(
        version=version.version,
        config_json=version.config_json,
        author=version.author,
        created_at=version.created_at,
        sha256=version.sha256,
    )


def _show_live(version: ConfigVersion) -> None:
    metrics.LIVE_VERSION.set(version.version)
    metrics.LIVE_SIZE.set(len(version.config_json.encode()))
