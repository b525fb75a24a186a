"""`quarry get KIND -o yaml|json`: one kind of the live state on standard output (a view
like `fleetctl get`).

`blocks`, `labels`, `node_tags` and `detections` are exactly the files `config export`
writes, ready for `config apply`. `queries` and `packs` are the blocks of the whole live
state (whatever nodes they target) that hold scheduled queries or packs, each with its
targets and only that part of its config; `apply` replaces the whole state, so such a
document applied alone would drop everything else: it is marked as a view (VIEW_KEY),
which `config apply` refuses in one line. `secrets` are the enroll secrets' policies,
never their values (only `quarry secret create` makes a value). Docs: docs/config.md,
"Views: quarry get".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import yaml

from osquery_config.state import VIEW_KEY, State
from protos.v1 import config_pb2, enroll_pb2
from quarry.cli.commands.admin import call_rpc, enroll_stub
from quarry.runtime.settings import Settings

KINDS = ("blocks", "labels", "node_tags", "detections", "queries", "packs", "secrets")
# Which part of a block's config each block view keeps.
BLOCK_VIEWS = {"queries": "schedule", "packs": "packs"}


def add_get_command(
    sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]
) -> None:
    cmd = add(sub, "get", "print one kind of the live state, ready for `config apply`", get)
    cmd.add_argument("kind", choices=KINDS)
    cmd.add_argument(
        "-o", "--output", choices=("yaml", "json"), default="yaml", help="format (default yaml)"
    )


def get(settings: Settings, args: argparse.Namespace) -> int:
    fmt = "json" if args.json else args.output
    if args.kind == "secrets":
        document: dict[str, object] = {"secrets": _secrets(settings)}
    else:
        document = view(_live_state(settings), args.kind)
    if fmt == "json":
        print(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(yaml.safe_dump(document, sort_keys=True, allow_unicode=True), end="")
    return 0


def view(state: State, kind: str) -> dict[str, object]:
    """One section of the state (blocks, labels, node_tags), or the view of the blocks'
    queries or packs."""
    document = state.to_document()
    if kind not in BLOCK_VIEWS:
        # A state without detection rules leaves the section out of its document.
        return {kind: document.get(kind, {})}
    part = BLOCK_VIEWS[kind]
    blocks = {
        name: {"targets": block["targets"], "config": {part: block["config"][part]}}
        for name, block in document["blocks"].items()
        if block["config"].get(part)
    }
    return {VIEW_KEY: kind, "blocks": blocks}


def _live_state(settings: Settings) -> State:
    # Imported here: the config commands' stub, without a cycle at import time.
    from quarry.cli.commands.config import config_stub

    exported = call_rpc(config_stub(settings).ExportState, config_pb2.ExportStateRequest())
    return State.from_json(exported.state_json)


def _secrets(settings: Settings) -> list[dict[str, object]]:
    """Each enroll secret's policy (what `secret create` takes), never its value."""
    request = enroll_pb2.ListSecretsRequest(include_inactive=True)
    listed = call_rpc(enroll_stub(settings).ListSecrets, request).secrets
    return [
        {
            "name": s.name,
            "id": s.secret_id,
            "tags": list(s.tags),
            "group": s.group,
            "expires_at": s.expires_at,
            "max_enrollments": s.max_enrollments,
            "one_time": s.one_time,
            "requires_approval": s.requires_approval,
            "allow_reenroll_after_revoke": s.allows_reenrollment_after_revocation,
            "state": s.state,
            "machines": s.enrollments,
        }
        for s in listed
    ]
