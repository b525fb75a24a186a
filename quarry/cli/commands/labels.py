"""`quarry label list|members`: the dynamic labels defined and the nodes in each.

Labels and their members come from the config service (ConfigService.ListLabels; the
label evaluator keeps them, docs/config.md); members are shown with their hostnames from
the enroll service.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from protos.v1 import config_pb2, config_pb2_grpc, enroll_pb2
from quarry.cli.commands.admin import call_rpc, enroll_stub
from quarry.cli.commands.enrollment import node_status
from quarry.runtime.command_output import emit_json, emit_table, utc_iso
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel


def add_label_commands(sub: argparse._SubParsersAction, admin: Callable) -> None:
    label = sub.add_parser("label", aliases=["labels"], help="dynamic labels and their members")
    actions = label.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    admin(actions, "list", "the labels defined, with their member counts", label_list)
    cmd = admin(actions, "members", "the nodes in one label", label_members)
    cmd.add_argument("name", help="the label's name (see `quarry label list`)")


def _labels(settings: Settings, name: str = "") -> list[config_pb2.LabelInfo]:
    stub = config_pb2_grpc.ConfigServiceStub(sync_channel(settings.service_addr("config")))
    return list(call_rpc(stub.ListLabels, config_pb2.ListLabelsRequest(name=name)).labels)


def label_list(settings: Settings, args: argparse.Namespace) -> int:
    labels = _labels(settings)
    if args.json:
        emit_json(
            [
                {
                    "name": label.name,
                    "query": label.query,
                    "interval": label.interval,
                    "platforms": list(label.platforms),
                    "members": len(label.member_node_ids),
                }
                for label in labels
            ]
        )
        return 0
    rows = [
        (
            label.name,
            len(label.member_node_ids),
            f"{label.interval}s",
            ",".join(label.platforms) or "all",
            " ".join(label.query.split()),
        )
        for label in labels
    ]
    emit_table(["label", "members", "interval", "platforms", "query"], rows)
    return 0


def label_members(settings: Settings, args: argparse.Namespace) -> int:
    (label,) = _labels(settings, args.name)
    members = set(label.member_node_ids)
    listed = call_rpc(enroll_stub(settings).ListNodes, enroll_pb2.ListNodesRequest()).nodes
    nodes = [n for n in listed if n.node_id in members]
    # A member the enroll service no longer lists (deleted since) is still shown.
    missing = sorted(members - {n.node_id for n in nodes})
    if args.json:
        emit_json(
            [
                {
                    "node_id": n.node_id,
                    "hostname": n.hostname,
                    "host_identifier": n.host_identifier,
                    "platform": n.platform,
                    "status": node_status(n),
                    "last_seen_at": n.last_seen_at,
                }
                for n in nodes
            ]
            + [{"node_id": node_id, "status": "unknown"} for node_id in missing]
        )
        return 0
    rows = [
        (n.node_id, n.hostname, n.host_identifier, n.platform, node_status(n),
         utc_iso(n.last_seen_at))
        for n in nodes
    ] + [(node_id, "", "", "", "unknown", "") for node_id in missing]  # fmt: skip
    emit_table(["node_id", "hostname", "host_identifier", "platform", "status", "last_seen"], rows)
    return 0
