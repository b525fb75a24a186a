"""Config records as protobuf messages, and the global rendering of a state they show."""

from __future__ import annotations

from collections.abc import Iterable

from config_service.node_groups import GLOBAL_FACTS
from config_service.store import ConfigFetch, StateVersion, sha256_hex
from osquery_config.composition import Composed, compose
from osquery_config.state import State
from osquery_config.targeting import group_of
from protos.v1 import config_pb2


def global_config(state: State) -> Composed:
    """The state rendered for a node only global targets match (what GetConfig shows)."""
    return compose(state, group_of(state, GLOBAL_FACTS))


def document_message(version: StateVersion) -> config_pb2.ConfigDocument:
    """A version as one plain config (its global rendering)."""
    config_json = global_config(version.state).config_json
    return config_pb2.ConfigDocument(
        version=version.version,
        config_json=config_json,
        author=version.author,
        created_at=version.created_at,
        sha256=sha256_hex(config_json),
    )


def version_message(version: StateVersion) -> config_pb2.StateVersion:
    return config_pb2.StateVersion(
        version=version.version,
        state_json=version.state_json,
        author=version.author,
        created_at=version.created_at,
        sha256=version.sha256,
        comment=version.comment,
    )


def fetch_message(fetch: ConfigFetch) -> config_pb2.ConfigFetch:
    return config_pb2.ConfigFetch(
        node_id=fetch.node_id, sha1=fetch.sha1, version=fetch.version, fetched_at=fetch.fetched_at
    )


def membership_messages(
    memberships: dict[str, frozenset[str]], node_ids: Iterable[str]
) -> list[config_pb2.LabelMembership]:
    """Each node's full label list (empty: a member of none now)."""
    return [
        config_pb2.LabelMembership(node_id=node_id, labels=sorted(memberships.get(node_id, ())))
        for node_id in sorted(set(node_ids))
    ]
