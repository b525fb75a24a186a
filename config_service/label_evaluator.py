"""Dynamic labels: each label's SQL runs on the fleet as a live query every `interval` seconds.

One evaluation starts a campaign (DistributedService.StartQuery) for the active nodes
of the label's platforms, waits for the campaign's account (GetCampaign) until every
targeted node answered or failed, or the interval ran out, then sets the membership: a
node that answered with at least one row is a member, one that answered with none is
not, and a node that failed or did not answer keeps what it had (an offline laptop
does not lose its config). Memberships live in the store, so a restart keeps them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from config_service import metrics
from config_service.fleet_directory import FleetDirectory, FleetNode
from config_service.store import ConfigStore
from osquery_config.state import Label
from osquery_config.targeting import platform_family, platform_matches
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.serving.grpc_runtime import aio_channel

log = logging.getLogger(__name__)

# How often the loop looks for labels that are due (and for labels added or removed).
TICK_S = 1.0
# How often a running campaign's account is read while waiting for answers.
ACCOUNT_POLL_S = 2.0
RPC_TIMEOUT_S = 30.0
# States after which a host will not answer this run: waiting longer for them only delays
# every other host's new membership (an offline host keeps its previous one).
SETTLED = (
    distributed_pb2.HostState.ANSWERED,
    distributed_pb2.HostState.FAILED,
    distributed_pb2.HostState.OFFLINE,
    distributed_pb2.HostState.EXPIRED,
)


def next_members(
    previous: set[str], targeted: set[str], hosts: Iterable[distributed_pb2.HostState]
) -> set[str]:
    """A label's members after one evaluation; nodes the label no longer targets leave it."""
    members = previous & targeted
    for host in hosts:
        if host.node_id not in targeted or host.state != distributed_pb2.HostState.ANSWERED:
            continue
        if host.row_count >= 1:
            members.add(host.node_id)
        else:
            members.discard(host.node_id)
    return members


def label_runs_on(label: Label, node: FleetNode) -> bool:
    """Whether the label's query is sent to this node (its platforms; none means all)."""
    if not label.platforms:
        return True
    family = platform_family(node.platform)
    return bool(family) and any(platform_matches(p, family) for p in label.platforms)


class LabelEvaluator:
    """Runs every defined label on its interval, one evaluation per label at a time."""

    def __init__(
        self,
        store: ConfigStore,
        directory: FleetDirectory,
        distributed_addr: str,
        defined_labels: Callable[[], Iterable[Label]],
        write_members: Callable[[str, set[str]], set[str]],
        forget_labels_except: Callable[[Iterable[str]], set[str]],
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._directory = directory
        self._channel = aio_channel(distributed_addr)
        self._distributed = distributed_pb2_grpc.DistributedServiceStub(self._channel)
        self._defined_labels = defined_labels
        # Each stores and announces in one transaction, returning the nodes that moved.
        self._write_members = write_members
        self._forget_labels_except = forget_labels_except
        # With replicas sharing PostgreSQL only one evaluates labels: one campaign per label.
        self._leads = leads
        self._running: dict[str, asyncio.Task[None]] = {}
        self._due_at: dict[str, float] = {}

    async def run(self) -> None:
        """Forever: start the evaluations that are due."""
        try:
            while True:
                try:
                    # Asking for the lead may connect to PostgreSQL: off the event loop.
                    if await asyncio.to_thread(self._leads):
                        self._start_due_evaluations()
                except Exception:
                    log.exception("label evaluation loop failed; retrying")
                await asyncio.sleep(TICK_S)
        finally:
            for task in self._running.values():
                task.cancel()

    async def close(self) -> None:
        await self._channel.close()

    def _start_due_evaluations(self) -> None:
        labels = {label.name: label for label in self._defined_labels()}
        self._forget_labels_except(labels)
        for name in set(self._due_at) - set(labels):
            del self._due_at[name]
        now = time.monotonic()
        for name, label in labels.items():
            task = self._running.get(name)
            if (task is not None and not task.done()) or now < self._due_at.get(name, 0.0):
                continue
            self._due_at[name] = now + label.interval
            self._running[name] = asyncio.create_task(self._evaluate(label))

    async def _evaluate(self, label: Label) -> None:
        try:
            members = await self._members_after_query(label)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            metrics.LABEL_EVALUATIONS.labels("failed").inc()
            log.warning("label %r not evaluated: %s %s", label.name, exc.code().name, exc.details())
            return
        except Exception:
            metrics.LABEL_EVALUATIONS.labels("failed").inc()
            log.exception("label %r not evaluated", label.name)
            return
        # The label may have been removed (or redefined) while its campaign ran.
        if label not in self._defined_labels():
            return
        changed = self._write_members(label.name, members)
        metrics.LABEL_EVALUATIONS.labels("done").inc()
        metrics.LABEL_MEMBERS.labels(label.name).set(len(members))
        if changed:
            log.info("label %r: %d members, %d changed", label.name, len(members), len(changed))

    async def _members_after_query(self, label: Label) -> set[str]:
        nodes = await self._directory.active_nodes()
        targeted = {node.node_id for node in nodes if label_runs_on(label, node)}
        hosts: list[distributed_pb2.HostState] = []
        if targeted:
            campaign = await self._distributed.StartQuery(
                distributed_pb2.StartQueryRequest(
                    sql=label.query,
                    node_ids=sorted(targeted),
                    ttl_seconds=label.interval,
                    author=f"label {label.name}",
                ),
                timeout=RPC_TIMEOUT_S,
            )
            hosts = await self._account(
                campaign.campaign_id, deadline=time.monotonic() + label.interval
            )
        return next_members(self._store.label_members(label.name), targeted, hosts)

    async def _account(self, campaign_id: str, deadline: float) -> list[distributed_pb2.HostState]:
        """The campaign's hosts once all answered or failed, or as they are at the deadline."""
        while True:
            report = await self._distributed.GetCampaign(
                distributed_pb2.GetCampaignRequest(campaign_id=campaign_id), timeout=RPC_TIMEOUT_S
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0 or all(host.state in SETTLED for host in report.hosts):
                return list(report.hosts)
            await asyncio.sleep(min(ACCOUNT_POLL_S, remaining))
