"""The tags the live config gives nodes (`node_tags`), held from the config service's feed.

A node's tags are its enroll secret's and those the live config's `node_tags` lists under
its node id or host identifier (osquery_config.targeting.node_tags_for), so that `node
list --tag`, live queries and config blocks agree on who has a tag. The config service
owns node_tags; this service learns them from ConfigService.WatchConfig, the stream the
gateways hold too, and keeps the live state's node_tags in memory (ADR 0013): listing
nodes never waits on the config service, and without it nodes keep their secret's tags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from osquery_config.state import InvalidState, State
from osquery_config.targeting import node_tags_for
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.serving.grpc_runtime import aio_channel, run_forever_with_reconnect

log = logging.getLogger(__name__)

NO_TAGS: frozenset[str] = frozenset()


class ConfigTags:
    """node id or host identifier -> the tags the live config gives it."""

    def __init__(self, config_addr: str) -> None:
        self._channel = aio_channel(config_addr)
        self._stub = config_pb2_grpc.ConfigServiceStub(self._channel)
        self._state = State()
        self.synced = False

    @property
    def node_tags(self) -> Mapping[str, tuple[str, ...]]:
        return self._state.node_tags

    def of(self, node_id: str, host_identifier: str) -> frozenset[str]:
        if not self._state.node_tags:
            return NO_TAGS
        return node_tags_for(self._state, node_id, host_identifier)

    async def run(self) -> None:
        await run_forever_with_reconnect("config node_tags", self._watch_once)

    async def _watch_once(self) -> None:
        # The config service may start after this one (`quarry up` starts enroll first):
        # wait for it quietly rather than log a refused stream.
        await self._channel.channel_ready()
        async for event in self._stub.WatchConfig(config_pb2.WatchConfigRequest()):
            if event.HasField("live"):
                self._take(event.live.state_json, event.live.version)

    def _take(self, state_json: str, version: int) -> None:
        try:
            state = State.from_json(state_json)
        except InvalidState as exc:  # stored states were valid: a newer format, say
            log.warning("live config version %d not read for node_tags: %s", version, exc)
            return
        # Only node_tags matter here: keep a small state, not the whole config.
        self._state = State(node_tags=state.node_tags)
        self.synced = True
        log.info("node_tags of live config version %d: %d entries", version, len(state.node_tags))

    async def close(self) -> None:
        await self._channel.close()
