"""The DetectionService gRPC servicer, thin: the rules' status for `quarry detection list`,
and `quarry detection test` (a rule over past logs, nothing stored or delivered)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from detection_service.engine import Engine, RuleFailed, group_hits
from osquery_config.detections import Detection, InvalidDetection, check_detection, parse_detection
from protos.v1 import detection_pb2, detection_pb2_grpc
from quarry.access.admin_auth import Refused

# What `detection test` shows of each would-be alert.
ROWS_SHOWN = 20


class DetectionServicer(detection_pb2_grpc.DetectionServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def ListDetections(
        self, request: detection_pb2.ListDetectionsRequest, context: grpc.aio.ServicerContext
    ) -> detection_pb2.ListDetectionsResponse:
        store = self.engine.store
        states = await asyncio.to_thread(store.rule_states)
        open_counts = await asyncio.to_thread(store.open_counts)
        now = int(time.time())
        listed = []
        for rule in sorted(self.engine.rules.values(), key=lambda r: r.name):
            state = states.get(rule.name)
            listed.append(
                detection_pb2.DetectionStatus(
                    name=rule.name,
                    severity=rule.severity,
                    schedule_s=rule.schedule,
                    last_run_at=state.last_run_at if state else 0,
                    watermark=state.watermark if state else 0,
                    lag_s=max(0, now - state.watermark) if state else 0,
                    last_hits=state.last_hits if state else 0,
                    total_hits=state.total_hits if state else 0,
                    open_alerts=open_counts.get(rule.name, 0),
                    last_error=state.last_error if state else "",
                )
            )
        return detection_pb2.ListDetectionsResponse(detections=listed, leader=self.engine.leader)

    async def TestDetection(
        self, request: detection_pb2.TestDetectionRequest, context: grpc.aio.ServicerContext
    ) -> detection_pb2.TestDetectionResponse:
        rule = self._rule(request)
        if request.since_s <= 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "since must be a positive duration")
        end = int(time.time()) + 1  # up to now: nothing waits on these rows
        start = end - request.since_s
        sql = rule.window_sql(start, end)
        response = detection_pb2.TestDetectionResponse(sql=sql, window_start=start, window_end=end)
        try:
            columns, rows = await self.engine.reader.query(sql)
            hits = group_hits(rule, columns, rows)
        except RuleFailed as exc:
            response.error = str(exc)
            return response
        response.rows = len(rows)
        for hit in hits:
            response.alerts.append(
                detection_pb2.WouldRaise(
                    dedup_key=hit.dedup_key,
                    host_identifier=hit.host_identifier,
                    hits=len(hit.rows),
                    rows_json=[json.dumps(r, default=str) for r in hit.rows[:ROWS_SHOWN]],
                )
            )
        return response

    def _rule(self, request: detection_pb2.TestDetectionRequest) -> Detection:
        if not request.rule_json:
            rule = self.engine.rules.get(request.name)
            if rule is None:
                known = ", ".join(sorted(self.engine.rules)) or "none"
                raise Refused(
                    grpc.StatusCode.NOT_FOUND,
                    f"no live detection {request.name!r} (live: {known}); give the rule's "
                    "file with -f to test one not applied yet",
                )
            return rule
        try:
            rule = parse_detection(request.name, json.loads(request.rule_json))
            check_detection(rule)
        except (InvalidDetection, ValueError) as exc:
            reason = "; ".join(str(exc).splitlines())
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, reason) from None
        return rule
