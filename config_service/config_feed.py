"""The config change feed: what WatchConfig streams to the gateways, from every replica.

A stream opens with one snapshot event (the live state, any rollout, every label
membership), then each change as it commits: a version going live, a rollout starting or
ending, memberships moving (ADR 0007, ADR 0009). The config gauges follow each change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from config_service import metrics
from config_service.messages import global_config, membership_messages, version_message
from config_service.rollout import rollout_message
from config_service.store import ConfigStore
from osquery_config.state import Label
from protos.v1 import config_pb2
from quarry.state.change_feed import ChangeFeed, watch
from quarry.state.change_log import ChangeLog, protobuf_feed

FEED = "config"


class ConfigFeed:
    def __init__(self, store: ConfigStore) -> None:
        self._store = store
        self._feed: ChangeFeed[config_pb2.ConfigEvent] = ChangeFeed()
        self.changes = ChangeLog(
            store.database, "config", {FEED: protobuf_feed(self._relay, config_pb2.ConfigEvent)}
        )
        self.show_state()

    def watch(self) -> AsyncIterator[config_pb2.ConfigEvent]:
        return watch(self._feed, lambda: [self._snapshot()], metrics.WATCH_STREAMS)

    def close(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    def _relay(self, event: config_pb2.ConfigEvent) -> None:
        """Every change, from this replica or another, once committed."""
        self._feed.publish(event)
        if event.HasField("live") or event.HasField("rollout"):
            self.show_state()

    def _snapshot(self) -> config_pb2.ConfigEvent:
        memberships = self._store.memberships()
        return config_pb2.ConfigEvent(
            live=version_message(self._store.live()),
            rollout=rollout_message(self._store.rollout()),
            memberships=membership_messages(memberships, memberships),
            snapshot=True,
        )

    def show_state(self) -> None:
        live = self._store.live()
        rollout = self._store.rollout()
        metrics.LIVE_VERSION.set(live.version)
        metrics.LIVE_SIZE.set(len(global_config(live.state).config_json.encode()))
        metrics.VERSIONS_STORED.set(self._store.count_versions())
        metrics.ROLLOUT_IN_PROGRESS.set(1 if rollout else 0)
        metrics.ROLLOUT_CANDIDATE.set(rollout.candidate_version if rollout else 0)

    # Label memberships, as the label evaluator finds them

    def defined_labels(self) -> list[Label]:
        """Labels of the live state and of a rollout's candidate: both may target them."""
        rollout = self._store.rollout()
        labels = {label.name: label for label in rollout.candidate.state.labels} if rollout else {}
        labels.update({label.name: label for label in self._store.live().state.labels})
        return list(labels.values())

    def set_label_members(self, label: str, members: set[str]) -> set[str]:
        """Store the label's members and announce the nodes that joined or left."""
        with self.changes.recording() as record:
            changed = self._store.set_label_members(label, members)
            if changed:
                record(FEED, self._memberships_event(changed))
        return changed

    def forget_labels_except(self, labels: Iterable[str]) -> set[str]:
        """Drop memberships of labels no longer defined and announce the nodes affected."""
        with self.changes.recording() as record:
            left = self._store.forget_labels_except(labels)
            if left:
                record(FEED, self._memberships_event(left))
        return left

    def _memberships_event(self, node_ids: Iterable[str]) -> config_pb2.ConfigEvent:
        memberships = self._store.memberships()
        return config_pb2.ConfigEvent(memberships=membership_messages(memberships, node_ids))
