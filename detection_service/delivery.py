"""Alert delivery: the outbox's events to ClickHouse (quarry.alerts, through ingest),
Alertmanager (`POST /api/v2/alerts`) and webhooks (a JSON body per event), each retried
with backoff until delivered, every attempt recorded; and open alerts re-posted to
Alertmanager while they stay open.

An event is written to the outbox in the transaction that raised it (engine.py), so it is
delivered at least once: a webhook may see an event twice (after a lost answer or a
restart) and can tell by its `event_id`, also sent as the Idempotency-Key header;
quarry.alerts stores it once. Only alert events go here; nothing about the rules does.
Policies reuse the same outbox and destinations (docs/detections.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import httpx

from detection_service import metrics
from detection_service.store import Alert, DetectionStore, OutboxEntry
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

CLICKHOUSE, ALERTMANAGER, WEBHOOK = "clickhouse", "alertmanager", "webhook"
# Events people are told about; "hits" (more rows for an open alert) only goes to ClickHouse.
NOTIFIED_EVENTS = ("firing", "resolved")
HTTP_TIMEOUT_S = 10.0

StoreAlerts = Callable[[list[logs_pb2.AlertEvent]], Awaitable[None]]


def destination_names(alertmanager_url: str, webhook_urls: str) -> Callable[[str], list[str]]:
    """event -> the outbox destinations it goes to."""
    people = ([ALERTMANAGER] if alertmanager_url else []) + [
        f"{WEBHOOK}:{url.strip()}" for url in webhook_urls.split(",") if url.strip()
    ]

    def destinations(event: str) -> list[str]:
        return [CLICKHOUSE, *(people if event in NOTIFIED_EVENTS else [])]

    return destinations


def kind_of(destination: str) -> str:
    return destination.split(":", 1)[0]


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alertmanager_alert(event: dict, ends_at: float) -> dict:
    """One alert as Alertmanager's API v2 takes it; the labels identify it there."""
    return {
        "labels": {
            "alertname": event["rule"],
            "rule": event["rule"],
            "host": event["host_identifier"],
            "severity": event["severity"],
            "dedup_key": event["dedup_key"],
        },
        "annotations": {
            "summary": f"{event['rule']} on {event['host_identifier'] or 'the fleet'}",
            "description": event.get("description", ""),
            "alert_id": event["alert_id"],
            "hits": str(event["hits"]),
        },
        "startsAt": iso(event["first_seen"]),
        "endsAt": iso(ends_at),
    }


def clickhouse_event(event: dict) -> logs_pb2.AlertEvent:
    return logs_pb2.AlertEvent(
        event_id=event["event_id"],
        alert_id=event["alert_id"],
        rule=event["rule"],
        severity=event["severity"],
        event=event["event"],
        dedup_key=event["dedup_key"],
        host_identifier=event["host_identifier"],
        at=event["at"],
        first_seen=event["first_seen"],
        hits=event["hits"],
        rows_json=[json.dumps(row, sort_keys=True) for row in event["rows"]],
    )


class Delivery:
    """Sends due outbox entries; one instance per process, run by the leader."""

    def __init__(
        self,
        store: DetectionStore,
        store_alerts: StoreAlerts,
        alertmanager_url: str,
        repost_s: float,
        retry_base_s: float,
        retry_max_s: float,
        clock: Callable[[], float] = time.time,
        describe: Callable[[str], str] = lambda rule: "",
    ) -> None:
        self.store = store
        self.store_alerts = store_alerts
        self.alertmanager_url = alertmanager_url.rstrip("/")
        self.repost_s = repost_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        # rule -> its description, for the re-posts (Alertmanager keeps the latest annotations).
        self.describe = describe
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
        self._reposted_at = 0.0

    async def run_forever(self, leads: Callable[[], bool], tick_s: float = 0.5) -> None:
        while True:
            try:
                if leads():
                    await self.deliver_due()
                    await self.repost_open()
            except Exception:
                log.exception("alert delivery failed; trying again")
            await asyncio.sleep(tick_s)

    async def deliver_due(self) -> int:
        entries = await asyncio.to_thread(self.store.due, int(self.clock()))
        if not entries:
            metrics.PENDING.set(await asyncio.to_thread(self.store.pending_count))
            return 0
        outcomes: list[tuple[OutboxEntry, str, str]] = []
        by_destination: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            by_destination.setdefault(entry.destination, []).append(entry)
        for destination, group in by_destination.items():
            outcomes += await self._send(destination, group)
        retry_at = {
            entry.id: int(self.clock() + self._backoff(entry.attempts))
            for entry, outcome, _ in outcomes
            if outcome != "delivered"
        }
        await asyncio.to_thread(
            self.store.record_attempts, outcomes, int(self.clock() * 1000), retry_at
        )
        for entry, outcome, _ in outcomes:
            metrics.DELIVERIES.labels(kind_of(entry.destination), outcome).inc()
        metrics.PENDING.set(await asyncio.to_thread(self.store.pending_count))
        return len(entries)

    def _backoff(self, attempts: int) -> float:
        return min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts, 20))

    async def _send(
        self, destination: str, entries: Sequence[OutboxEntry]
    ) -> list[tuple[OutboxEntry, str, str]]:
        kind = kind_of(destination)
        try:
            if kind == CLICKHOUSE:
                await self.store_alerts([clickhouse_event(e.payload) for e in entries])
            elif kind == ALERTMANAGER:
                await self._post_alertmanager([self._am_alert(e.payload) for e in entries])
            else:
                # One request per event, so a receiver's failure holds back only its own.
                return [await self._webhook(destination.split(":", 1)[1], e) for e in entries]
        except Exception as exc:
            detail = _reason(exc)
            log.warning("alert delivery to %s failed: %s", destination, detail)
            return [(entry, "failed", detail) for entry in entries]
        return [(entry, "delivered", "") for entry in entries]

    async def _webhook(self, url: str, entry: OutboxEntry) -> tuple[OutboxEntry, str, str]:
        try:
            response = await self.http.post(
                url, json=entry.payload, headers={"Idempotency-Key": entry.event_id}
            )
        except httpx.HTTPError as exc:
            return entry, "failed", _reason(exc)
        if response.is_success:
            return entry, "delivered", f"HTTP {response.status_code}"
        return entry, "failed", f"HTTP {response.status_code}"

    def _am_alert(self, event: dict) -> dict:
        if event["event"] == "resolved":
            return alertmanager_alert(event, event["at"])
        return alertmanager_alert(event, self.clock() + 3 * self.repost_s)

    async def _post_alertmanager(self, alerts: list[dict]) -> None:
        response = await self.http.post(f"{self.alertmanager_url}/api/v2/alerts", json=alerts)
        if not response.is_success:
            raise RuntimeError(f"Alertmanager answered HTTP {response.status_code}")

    async def repost_open(self) -> None:
        """Every repost_s, every open alert again, so Alertmanager keeps it firing (and the
        open-alerts gauge, which the dashboards show with or without an Alertmanager)."""
        if self.clock() - self._reposted_at < self.repost_s:
            return
        self._reposted_at = self.clock()
        alerts = await asyncio.to_thread(self.store.open_alerts)
        metrics.OPEN_ALERTS.set(len(alerts))
        if not alerts or not self.alertmanager_url:
            return
        ends_at = self.clock() + 3 * self.repost_s
        try:
            await self._post_alertmanager(
                [alertmanager_alert(_as_event(a, self.describe(a.rule)), ends_at) for a in alerts]
            )
        except Exception as exc:
            log.warning("re-posting open alerts to Alertmanager failed: %s", _reason(exc))

    async def close(self) -> None:
        await self.http.aclose()


def _as_event(alert: Alert, description: str) -> dict:
    return {
        "rule": alert.rule,
        "host_identifier": alert.host_identifier,
        "severity": alert.severity,
        "dedup_key": alert.dedup_key,
        "alert_id": alert.alert_id,
        "hits": alert.hits,
        "first_seen": alert.first_seen,
        "description": description,
    }


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
