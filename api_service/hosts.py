"""Hosts (enrolled nodes), their approval, and labels: the enroll and config services.

Searches and filters the service has no field for (hostname or identifier text, label)
are applied here to the list it answered, as plain string comparison in Python: nothing a
caller types reaches SQL or a shell (docs/api.md, "Hosts").
"""

from __future__ import annotations

import json
from typing import Any

from api_service.backends import call, stream
from api_service.errors import ApiError
from api_service.json_messages import message_json
from api_service.routing import Call, Endpoint, Param, page
from api_service.schemas import Schema, message_schema, page_of
from protos.v1 import config_pb2, enroll_pb2

NODE_STATUSES = ("active", "pending", "revoked")

HOST: Schema = message_schema(
    enroll_pb2.Node.DESCRIPTOR,
    "Host",
    drop=("node_key", "found"),
    extra={"status": {"type": "string", "enum": list(NODE_STATUSES)}},
)
NODE_CONFIG = message_schema(config_pb2.NodeConfigResponse.DESCRIPTOR, "HostConfig")
HOST_DETAILS: Schema = {
    "type": "object",
    "properties": {
        "host": HOST,
        "host_details": {},
        "recent_enrollments": {"type": "integer"},
        "suspected_clone": {"type": "boolean"},
        "client_certificate": message_schema(enroll_pb2.ClientCertificate.DESCRIPTOR),
        "labels": {"type": "array", "items": {"type": "string"}},
        "config": NODE_CONFIG,
        "last_seen_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": ["host", "labels", "config", "last_seen_at"],
    "additionalProperties": False,
}


def host_json(node: enroll_pb2.Node) -> dict[str, Any]:
    """A node as the API shows it: never its node key, a credential."""
    out = message_json(node)
    del out["node_key"], out["found"]
    out["status"] = "revoked" if node.revoked else "pending" if node.pending else "active"
    return out


def matches_search(node: enroll_pb2.Node, text: str) -> bool:
    """Whether text is part of the node's hostname, host identifier or id (any case)."""
    needle = text.casefold()
    return any(
        needle in value.casefold() for value in (node.hostname, node.host_identifier, node.node_id)
    )


async def label_memberships(call_: Call) -> dict[str, set[str]]:
    """Every node's labels, from the first event of the config service's WatchConfig
    stream (its snapshot carries every membership): one call for the whole fleet.

    WatchConfig is the gateways' feed, not an admin call; callers reach this only after an
    admin call made with their token (ListNodes) was allowed and audited, so the caller's
    role is checked as for any read (docs/adr/0013-rest-api-over-grpc.md).
    """
    events = await stream(
        call_.backends.config.WatchConfig, config_pb2.WatchConfigRequest(), call_.token
    )
    try:
        async for event in events:
            return {m.node_id: set(m.labels) for m in event.memberships}
        return {}
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def nodes_in_label(call_: Call, nodes: list[enroll_pb2.Node], label: str) -> list:
    memberships = await label_memberships(call_)
    return [node for node in nodes if label in memberships.get(node.node_id, ())]


async def filtered_nodes(call_: Call) -> list[enroll_pb2.Node]:
    p = call_.params
    reply = await call(
        call_.backends.enroll.ListNodes,
        enroll_pb2.ListNodesRequest(
            status=p["status"] or "", tag=p["tag"] or "", platform=p["platform"] or ""
        ),
        call_.token,
    )
    nodes = list(reply.nodes)
    if p["q"]:
        nodes = [n for n in nodes if matches_search(n, p["q"])]
    if p["label"]:
        nodes = await nodes_in_label(call_, nodes, p["label"])
    return nodes


async def list_hosts(call_: Call) -> dict:
    return page([host_json(n) for n in await filtered_nodes(call_)], call_)


async def show_host(call_: Call) -> dict:
    details = await call(
        call_.backends.enroll.ShowNode, enroll_pb2.NodeRef(node=call_.params["host"]), call_.token
    )
    config = await call(
        call_.backends.config.NodeConfig,
        config_pb2.NodeConfigRequest(node_id=details.node.node_id),
        call_.token,
    )
    shown = message_json(details)
    del shown["node"]
    return {
        **shown,
        "host": host_json(details.node),
        "labels": list(config.labels),
        "config": message_json(config),
        "last_seen_at": host_json(details.node)["last_seen_at"],
    }


async def list_approvals(call_: Call) -> dict:
    reply = await call(
        call_.backends.enroll.ListNodes,
        enroll_pb2.ListNodesRequest(status="pending"),
        call_.token,
    )
    return page([host_json(n) for n in reply.nodes], call_)


async def approve_host(call_: Call) -> dict:
    return await _node_change(call_, call_.backends.enroll.ApproveNode)


async def reject_host(call_: Call) -> dict:
    return await _node_change(call_, call_.backends.enroll.RejectNode)


async def revoke_host(call_: Call) -> dict:
    return await _node_change(call_, call_.backends.enroll.RevokeNode)


async def _node_change(call_: Call, method: Any) -> dict:
    node = await call(method, enroll_pb2.NodeRef(node=call_.params["host"]), call_.token)
    return host_json(node)


# --- labels: defined in the managed config state, members computed by the config service


async def live_state(call_: Call) -> dict[str, Any]:
    version = await call(
        call_.backends.config.ExportState, config_pb2.ExportStateRequest(), call_.token
    )
    return json.loads(version.state_json) if version.state_json else {}


LABEL: Schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "definition": {}},
    "required": ["name", "definition"],
    "additionalProperties": False,
}


def _labels_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    labels = state.get("labels") or {}
    if isinstance(labels, dict):
        return [{"name": name, "definition": labels[name]} for name in sorted(labels)]
    return [{"name": item.get("name", ""), "definition": item} for item in labels]


async def list_labels(call_: Call) -> dict:
    return page(_labels_of(await live_state(call_)), call_)


async def label_members(call_: Call) -> dict:
    name = call_.params["label"]
    if name not in {label["name"] for label in _labels_of(await live_state(call_))}:
        raise ApiError(404, "not_found", f"no label {name!r} in the live config state")
    reply = await call(call_.backends.enroll.ListNodes, enroll_pb2.ListNodesRequest(), call_.token)
    members = await nodes_in_label(call_, list(reply.nodes), name)
    return page([host_json(n) for n in members], call_)


HOST_PARAM = Param("host", "a node id, host identifier or node key", where="path")
FILTERS = (
    Param("q", "text in the hostname, host identifier or node id (any case)"),
    Param("platform", "platform family: linux, darwin, windows, freebsd"),
    Param("tag", "an enroll-secret tag"),
    Param("label", "a dynamic label the host is in"),
    Param("status", "enrollment status", enum=NODE_STATUSES),
)

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/hosts",
        list_hosts,
        "enrolled hosts, filtered and searched",
        "read-only",
        page_of(HOST),
        FILTERS,
        paged=True,
        tags=("hosts",),
    ),
    Endpoint(
        "GET",
        "/api/v1/hosts/{host}",
        show_host,
        "one host: details, labels, config blocks, last check-in",
        "read-only",
        HOST_DETAILS,
        (HOST_PARAM,),
        tags=("hosts",),
    ),
    Endpoint(
        "POST",
        "/api/v1/hosts/{host}/approve",
        approve_host,
        "approve a pending host",
        "admin",
        HOST,
        (HOST_PARAM,),
        tags=("approvals",),
    ),
    Endpoint(
        "POST",
        "/api/v1/hosts/{host}/reject",
        reject_host,
        "reject a pending host (it may not enroll again)",
        "admin",
        HOST,
        (HOST_PARAM,),
        tags=("approvals",),
    ),
    Endpoint(
        "POST",
        "/api/v1/hosts/{host}/revoke",
        revoke_host,
        "revoke a host's node key",
        "admin",
        HOST,
        (HOST_PARAM,),
        tags=("hosts",),
    ),
    Endpoint(
        "GET",
        "/api/v1/approvals",
        list_approvals,
        "hosts waiting for approval",
        "read-only",
        page_of(HOST),
        paged=True,
        tags=("approvals",),
    ),
    Endpoint(
        "GET",
        "/api/v1/labels",
        list_labels,
        "dynamic labels of the live config state",
        "read-only",
        page_of(LABEL),
        paged=True,
        tags=("labels",),
    ),
    Endpoint(
        "GET",
        "/api/v1/labels/{label}/hosts",
        label_members,
        "the hosts in a label",
        "read-only",
        page_of(HOST),
        (Param("label", "the label's name", where="path"),),
        paged=True,
        tags=("labels",),
    ),
]
