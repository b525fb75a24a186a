"""What a node named on the command line means: every command that takes a node asks the
enroll service (EnrollService.ResolveNodes), which holds the one rule (a node id, node
key, host identifier or hostname; an ambiguous or unknown name refused; docs/enrollment.md,
"Naming a node")."""

from __future__ import annotations

from collections.abc import Sequence

from protos.v1 import enroll_pb2
from quarry.cli.commands.admin import call_rpc, enroll_stub
from quarry.runtime.settings import Settings

NODE_NAME_HELP = "node id, host identifier or hostname"


def resolve_nodes(settings: Settings, refs: Sequence[str]) -> list[enroll_pb2.Node]:
    """The node each name means, in order; a CommandError names the first one refused."""
    if not refs:
        return []
    request = enroll_pb2.ResolveNodesRequest(refs=list(refs))
    return list(call_rpc(enroll_stub(settings).ResolveNodes, request).nodes)


def resolve_node(settings: Settings, ref: str) -> enroll_pb2.Node:
    return resolve_nodes(settings, [ref])[0]
