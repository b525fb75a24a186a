"""Starting a live query campaign: the request checked, its targets resolved against the
fleet (node ids, tags, platforms, labels, a percentage, a minimum osquery version), each
chosen host's first state, and the campaign announced (docs/live-queries.md).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import grpc

from distributed_service import metrics
from distributed_service.campaign_feed import announce_open
from distributed_service.messages import campaign_message
from distributed_service.node_directory import NodeDirectory
from distributed_service.store import OFFLINE, TARGETED, CampaignRecord, CampaignStore
from distributed_service.targeting import (
    DEFAULT_OFFLINE_AFTER_S,
    TargetNode,
    Targets,
    is_offline,
    select,
)
from osquery_config.targeting import FAMILIES, known_platform
from protos.v1 import distributed_pb2
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"\d+(\.\d+)*")


class Launcher:
    def __init__(
        self,
        store: CampaignStore,
        nodes: NodeDirectory,
        changes: ChangeLog,
        default_ttl_s: int,
        started: Callable[[], None],
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._changes = changes
        self._default_ttl_s = default_ttl_s
        # Called once a campaign is stored (the gauges of the open campaigns follow).
        self._started = started

    async def start(self, request: distributed_pb2.StartQueryRequest) -> distributed_pb2.Campaign:
        problem = request_problem(request)
        if problem:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, problem)
        targets = targets_of(request)
        campaign_id = "q_" + uuid.uuid4().hex  # letters, digits, "_": a safe osquery query id
        chosen = select(campaign_id, targets, *await self._directory(targets))
        if request.dry_run:
            return dry_run_answer(request, targets, len(chosen))
        if not chosen and not targets.is_open:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "no active node matches the targets")
        now = int(time.time())
        offline_after = request.offline_after_seconds or DEFAULT_OFFLINE_AFTER_S
        campaign = CampaignRecord(
            campaign_id=campaign_id,
            sql=request.sql,
            target_all=targets.is_open and not (targets.tags or targets.platforms),
            node_ids=[] if targets.is_open else [n.node_id for n in chosen],
            created_at=now,
            expires_at=now + (request.ttl_seconds or self._default_ttl_s),
            cancelled=False,
            author=request.author,
            targeting={
                "tags": sorted(targets.tags),
                "platforms": sorted(targets.platforms),
                "labels": sorted(targets.labels),
                "percent": targets.percent,
                "min_osquery_version": targets.min_osquery_version,
            },
            discovery_sql=request.discovery_sql,
            open_targeting=targets.is_open,
            targeted=len(chosen),
        )
        message = campaign_message(campaign)
        with self._changes.recording() as record:
            self._store.create(campaign, first_states(chosen, now, offline_after))
            announce_open(record, message)
        await self._changes.settled()
        metrics.CAMPAIGNS_STARTED.inc()
        self._started()
        log.info(
            "campaign %s started by %r for %d hosts%s",
            campaign.campaign_id,
            campaign.author,
            len(chosen),
            " (and matching late joiners)" if targets.is_open else "",
        )
        return message

    async def _directory(
        self, targets: Targets
    ) -> tuple[list[TargetNode], dict[str, frozenset[str]]]:
        """Every active node, and label memberships when the targets need them."""
        try:
            nodes = await self._nodes.active_nodes()
        except grpc.aio.AioRpcError as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot list nodes from the enroll service at {self._nodes.addr}:"
                f" {exc.code().name} {exc.details()}",
            ) from exc
        if not targets.labels:
            return nodes, {}
        try:
            labels = await self._nodes.labels()
        except grpc.aio.AioRpcError as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read label memberships from the config service at"
                f" {self._nodes.config_addr}: {exc.code().name} {exc.details()}",
            ) from exc
        unknown = sorted(targets.labels - labels.keys())
        if unknown:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"unknown label {', '.join(unknown)}: `quarry label list` shows those defined",
            )
        return nodes, memberships(labels)


def memberships(labels: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """node id -> its labels, from label -> its node ids."""
    found: dict[str, set[str]] = {}
    for label, node_ids in labels.items():
        for node_id in node_ids:
            found.setdefault(node_id, set()).add(label)
    return {node_id: frozenset(names) for node_id, names in found.items()}


def request_problem(request: distributed_pb2.StartQueryRequest) -> str:
    """What is wrong with a StartQuery request, or "" when nothing is."""
    if not request.sql.strip() and not request.dry_run:
        return "the query SQL is empty"
    if request.ttl_seconds < 0 or request.offline_after_seconds < 0:
        return "ttl_seconds and offline_after_seconds must be >= 0"
    if not 0 <= request.percent <= 100:
        return f"percent must be between 0 and 100, not {request.percent}"
    unknown = sorted(p for p in request.platforms if not known_platform(p))
    if unknown:
        return (
            f"unknown platform {', '.join(unknown)}: use a family ({', '.join(FAMILIES)})"
            " or an os_version.platform name (ubuntu, rhel, debian...)"
        )
    version = request.min_osquery_version
    if version and not VERSION_PATTERN.fullmatch(version):
        return f"min_osquery_version must look like 5.12.0, not {version!r}"
    return ""


def dry_run_answer(
    request: distributed_pb2.StartQueryRequest, targets: Targets, reached: int
) -> distributed_pb2.Campaign:
    """What a launch would target now, stored nowhere: no campaign id. With a percentage
    the count is of one draw of the shard (each campaign id draws its own), so it may
    differ from the launch's by a few hosts."""
    return distributed_pb2.Campaign(
        sql=request.sql,
        node_ids=list(targets.node_ids),
        tags=sorted(targets.tags),
        platforms=sorted(targets.platforms),
        labels=sorted(targets.labels),
        percent=targets.percent,
        min_osquery_version=targets.min_osquery_version,
        open_targeting=targets.is_open,
        target_all=targets.is_open and not (targets.tags or targets.platforms),
        targeted=reached,
    )


def targets_of(request: distributed_pb2.StartQueryRequest) -> Targets:
    return Targets(
        node_ids=tuple(dict.fromkeys(n for n in request.node_ids if n)),
        tags=frozenset(t for t in request.tags if t),
        platforms=frozenset(p.strip().lower() for p in request.platforms),
        labels=frozenset(label for label in request.labels if label),
        percent=request.percent,
        min_osquery_version=request.min_osquery_version,
    )


def first_states(
    chosen: list[TargetNode], launched_at: int, offline_after_s: int
) -> list[tuple[str, str, str]]:
    """(node id, host identifier, targeted or offline) for each host at launch."""
    return [
        (
            node.node_id,
            node.host_identifier,
            OFFLINE if is_offline(node, launched_at, offline_after_s) else TARGETED,
        )
        for node in chosen
    ]
