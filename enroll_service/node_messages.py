"""Node records as protobuf messages, and client certificates to and from their stored JSON."""

from __future__ import annotations

import json

from enroll_service.node_identity import has_certificate
from enroll_service.store import NodeRecord
from protos.v1 import enroll_pb2


def node_message(record: NodeRecord, tags: frozenset[str] | None = None) -> enroll_pb2.Node:
    """The node as a message; `tags` every tag it has (ListNodes, ShowNode), by default
    its secret's alone (what the gateways' feed carries: they add the config's node_tags
    from the config they hold)."""
    return enroll_pb2.Node(
        node_id=record.node_id,
        node_key=record.node_key,
        host_identifier=record.host_identifier,
        platform=record.platform,
        platform_type=record.platform_type,
        osquery_version=record.osquery_version,
        enrolled_at=record.enrolled_at,
        last_seen_at=record.last_seen_at,
        revoked=record.revoked,
        found=True,
        hostname=record.hostname,
        tags=record.tags if tags is None else sorted(tags),
        secret_tags=record.tags,
        group=record.group,
        pending=record.pending,
        identity=record.identity,
        secret_name=record.secret_name,
        first_enrolled_at=record.first_enrolled_at,
        hardware_serial=record.hardware_serial,
        os_version=record.os_version,
    )


def key_only(node: enroll_pb2.Node, node_key: str) -> enroll_pb2.Node:
    """The node as it was under its replaced key (what a REMOVE names)."""
    old = enroll_pb2.Node()
    old.CopyFrom(node)
    old.node_key = node_key
    return old


def certificate_json(certificate: enroll_pb2.ClientCertificate) -> str:
    if not has_certificate(certificate):
        return ""
    return json.dumps(
        {
            "subject": certificate.subject,
            "subject_alt_names": list(certificate.subject_alt_names),
            "sha256_fingerprint": certificate.sha256_fingerprint,
        }
    )


def certificate_from_json(certificate_json: str) -> enroll_pb2.ClientCertificate | None:
    return (
        enroll_pb2.ClientCertificate(**json.loads(certificate_json)) if certificate_json else None
    )
