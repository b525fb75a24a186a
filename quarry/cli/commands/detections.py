"""`quarry detection list|test`: the detection rules' last run, lag and hits, and a rule
tried over past logs before it goes live (docs/detections.md).

Both ask the detection service (DetectionService); the rules themselves are applied with
`quarry config apply` like the rest of the state. `test -f FILE` reads the rule from state
files, so a rule can be tried before it is applied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from osquery_config.state import InvalidState, read_state_files
from protos.v1 import detection_pb2, detection_pb2_grpc
from quarry.cli.commands.admin import call_rpc
from quarry.cli.commands.enrollment import parse_duration
from quarry.runtime.command_output import emit_json, emit_table, progress, utc_iso
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel


def add_detection_commands(sub: argparse._SubParsersAction, admin: Callable) -> None:
    detection = sub.add_parser(
        "detection", aliases=["detections"], help="detection rules over the logs, and alerts"
    )
    actions = detection.add_subparsers(dest="detection_command", required=True, metavar="ACTION")
    admin(actions, "list", "the live rules: last run, lag, hits, open alerts", detection_list)
    cmd = admin(
        actions,
        "test",
        "run a rule over past logs and show the alerts it would raise (nothing is stored)",
        detection_test,
    )
    cmd.add_argument("rule", help="the rule's name (live, or in the files given with -f)")
    cmd.add_argument(
        "--since",
        type=parse_duration,
        default=86400,
        help="look at the rows stored in this last while: 30m, 24h, 7d (default 24h)",
    )
    cmd.add_argument(
        "-f",
        "--file",
        action="append",
        type=Path,
        default=[],
        help="state files or a directory holding the rule (default: the live rule)",
    )


def _stub(settings: Settings) -> detection_pb2_grpc.DetectionServiceStub:
    return detection_pb2_grpc.DetectionServiceStub(sync_channel(settings.service_addr("detection")))


def detection_list(settings: Settings, args: argparse.Namespace) -> int:
    answer = call_rpc(_stub(settings).ListDetections, detection_pb2.ListDetectionsRequest())
    rules = list(answer.detections)
    if args.json:
        emit_json(
            {
                "leader": answer.leader,
                "detections": [
                    {
                        "name": r.name,
                        "severity": r.severity,
                        "schedule_s": r.schedule_s,
                        "last_run_at": r.last_run_at,
                        "lag_s": r.lag_s,
                        "last_hits": r.last_hits,
                        "total_hits": r.total_hits,
                        "open_alerts": r.open_alerts,
                        "last_error": r.last_error,
                    }
                    for r in rules
                ],
            }
        )
        return 0
    rows = [
        (
            r.name,
            r.severity,
            f"{r.schedule_s}s",
            utc_iso(r.last_run_at) if r.last_run_at else "never",
            f"{r.lag_s}s",
            r.last_hits,
            r.total_hits,
            r.open_alerts,
            r.last_error,
        )
        for r in rules
    ]
    emit_table(
        ["rule", "severity", "schedule", "last_run", "lag", "last_hits", "hits", "open", "error"],
        rows,
    )
    if not answer.leader:
        progress("answered by a standby replica: the leader runs the rules (docs/detections.md)")
    return 0


def detection_test(settings: Settings, args: argparse.Namespace) -> int:
    request = detection_pb2.TestDetectionRequest(name=args.rule, since_s=args.since)
    if args.file:
        rule_json = _rule_from_files(args.file, args.rule)
        if rule_json is None:
            return 1
        request.rule_json = rule_json
    if not args.json:
        progress(f"running {args.rule} over the rows stored in the last {args.since}s")
    started = time.monotonic()
    answer = call_rpc(_stub(settings).TestDetection, request)
    if args.json:
        emit_json(
            {
                "rule": args.rule,
                "sql": answer.sql,
                "window_start": answer.window_start,
                "window_end": answer.window_end,
                "error": answer.error,
                "rows": answer.rows,
                "alerts": [
                    {
                        "dedup_key": json.loads(a.dedup_key),
                        "host_identifier": a.host_identifier,
                        "hits": a.hits,
                        "rows": [json.loads(row) for row in a.rows_json],
                    }
                    for a in answer.alerts
                ],
            }
        )
        return 1 if answer.error else 0
    if answer.error:
        print(f"detection test {args.rule}: the rule's SQL failed: {answer.error}", file=sys.stderr)
        return 1
    emit_table(
        ["dedup_key", "host", "hits", "first row"],
        [(a.dedup_key, a.host_identifier, a.hits, a.rows_json[0] if a.rows_json else "")
         for a in answer.alerts],
    )  # fmt: skip
    progress(
        f"{len(answer.alerts)} alerts from {answer.rows} rows ({time.monotonic() - started:.1f}s)"
    )
    return 0


def _rule_from_files(paths: list[Path], name: str) -> str | None:
    try:
        state = read_state_files(paths).state
    except InvalidState as exc:
        for problem in exc.problems:
            print(f"detection test: {problem}", file=sys.stderr)
        return None
    rules = {rule.name: rule for rule in state.detections}
    if name not in rules:
        known = ", ".join(sorted(rules)) or "none"
        print(
            f"detection test: no detection {name!r} in those files (found: {known})",
            file=sys.stderr,
        )
        return None
    return json.dumps(rules[name].to_document())
