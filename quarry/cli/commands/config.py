"""Admin commands for the managed osquery config: `quarry config ...`.

The config is kept as files (YAML or JSON) in a repository and applied with
`quarry config apply -f DIR`; `export` writes the live state back as such files.
Each command is one or two ConfigService calls (see protos/v1/config.proto); the
files are parsed here, with osquery_config, so a typo is reported with its file name
before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from osquery_config.diff import DETECTIONS_GROUP
from osquery_config.state import InvalidState, State, read_state_files
from osquery_config.validation import parse_config_json, validate_state
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.cli.commands.admin import CommandError, call_rpc
from quarry.cli.commands.get import add_get_command
from quarry.cli.commands.node_names import NODE_NAME_HELP, resolve_node
from quarry.runtime.command_output import emit_json, emit_table, proto_to_json, utc_iso
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel

AddCommand = Callable[..., argparse.ArgumentParser]

PERCENT_PATTERN = re.compile(r"^(\d{1,2})%?$")


def parse_canary_percent(text: str) -> int:
    """A rollout percentage: "10%" or "10", from 1 to 99."""
    match = PERCENT_PATTERN.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= 99:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 1% to 99%")
    return int(match.group(1))


def parse_node_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes (1 or more)")
    return int(text)


# --- the commands' arguments ----------------------------------------------------------


def add_config_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry config ...` and `quarry get`; `add` is cli._admin (adds --json)."""
    add_get_command(sub, add)
    config = sub.add_parser("config", help="the osquery config served to nodes")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    cmd = add(
        actions,
        "apply",
        "validate config files (blocks, labels, node tags) and make them live, "
        "or roll them out to some nodes first",
        config_apply,
    )
    cmd.add_argument(
        "-f",
        "--file",
        required=True,
        action="append",
        help="a YAML or JSON file, or a directory of them (repeatable)",
    )
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change per node group; apply nothing",
    )
    canary = cmd.add_mutually_exclusive_group()
    canary.add_argument(
        "--canary",
        type=parse_canary_percent,
        metavar="PERCENT",
        help="staged rollout: this share of nodes gets it first (e.g. 10%%)",
    )
    canary.add_argument(
        "--canary-count",
        type=parse_node_count,
        metavar="N",
        help="staged rollout: this many nodes get it first",
    )
    cmd.add_argument("--comment", default="", help="why: recorded with the version")
    _add_author(cmd)

    cmd = add(
        actions,
        "export",
        "write the live state as files that `config apply` takes back unchanged",
        config_export,
    )
    cmd.add_argument("-o", "--out-dir", required=True, help="the directory to write into")
    cmd.add_argument("--version", type=int, default=0, help="an earlier version (default: live)")
    cmd.add_argument(
        "--replace",
        action="store_true",
        help="remove the other state files of the directory (apply would read them too)",
    )

    cmd = add(
        actions,
        "show",
        "print the live config, or exactly what one node receives (--node)",
        config_show,
    )
    cmd.add_argument("--node", help=f"a node: {NODE_NAME_HELP}")

    add(actions, "history", "every version of the state, newest first", config_history)

    cmd = add(actions, "rollback", "make an earlier version live again", config_rollback)
    cmd.add_argument("version", type=int)
    _add_author(cmd)

    cmd = add(
        actions,
        "set",
        "validate one osquery config file and make it live for every node",
        config_set,
    )
    cmd.add_argument("-f", "--file", required=True, help="JSON config file, or - for stdin")
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change per node group; change nothing",
    )
    _add_author(cmd)

    rollout = actions.add_parser("rollout", help="the staged rollout in progress")
    rollout_actions = rollout.add_subparsers(
        dest="rollout_command", required=True, metavar="ACTION"
    )
    add(rollout_actions, "status", "which nodes run which version", rollout_status)
    cmd = add(rollout_actions, "promote", "make the candidate live for every node", rollout_promote)
    _add_author(cmd)
    cmd = add(rollout_actions, "abort", "drop the candidate: every node gets live", rollout_abort)
    _add_author(cmd)


def _add_author(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--author", default=os.environ.get("USER", ""), help="recorded with it")


def config_stub(settings: Settings) -> config_pb2_grpc.ConfigServiceStub:
    return config_pb2_grpc.ConfigServiceStub(sync_channel(settings.service_addr("config")))


# --- apply, export --------------------------------------------------------------------


def config_apply(settings: Settings, args: argparse.Namespace) -> int:
    state = read_state(args.file)
    return _apply_state(settings, args, state)


def _apply_state(settings: Settings, args: argparse.Namespace, state: State) -> int:
    request = config_pb2.ApplyStateRequest(
        state_json=state.to_json(),
        author=args.author,
        dry_run=args.dry_run,
        comment=args.comment,
        canary_percent=args.canary or 0,
        canary_count=args.canary_count or 0,
    )
    reply = call_rpc(config_stub(settings).ApplyState, request)
    if args.json:
        emit_json(proto_to_json(reply))
        return 0
    _print_notes(reply)
    if args.dry_run:
        _print_diffs(reply.diffs)
    else:
        print(_apply_outcome(reply, request))
    return 0


def read_state(paths: list[str]) -> State:
    """The state the files describe, checked here first so that every problem is named
    with its file and key at once (the config service checks it again, against the fleet)."""
    try:
        files = read_state_files([Path(p) for p in paths])
        validate_state(files.state, files.origins)
    except InvalidState as exc:
        raise _problems(exc) from exc
    return files.state


def _problems(exc: InvalidState) -> CommandError:
    """Every problem on its own line of standard error; the error itself sums them up."""
    problems = [one_line(problem) for problem in exc.problems] or [one_line(str(exc))]
    if len(problems) == 1:
        return CommandError(problems[0])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return CommandError(f"{len(problems)} problems in the state; nothing was applied")


def one_line(message: str) -> str:
    """A parser's multi-line message (YAML's points at the spot with a caret) as one line."""
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line for line in lines if line.strip("^ "))


def _print_notes(reply: config_pb2.ApplyStateResponse) -> None:
    for warning in reply.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for conflict in reply.conflicts:
        print(f"conflict: {conflict}", file=sys.stderr)


def _print_diffs(diffs: list[config_pb2.GroupDiff]) -> None:
    changed = [d for d in diffs if d.diff and d.group != DETECTIONS_GROUP]
    for group_diff in changed:
        nodes = f"{group_diff.nodes} node{'s' if group_diff.nodes != 1 else ''}"
        print(f"## {group_diff.group} ({nodes})")
        print(group_diff.diff.rstrip("\n"))
    rules = [d for d in diffs if d.diff and d.group == DETECTIONS_GROUP]
    for rules_diff in rules:
        print(f"## {DETECTIONS_GROUP} (run by the detection service, not sent to nodes)")
        print(rules_diff.diff.rstrip("\n"))
    also = "; the detection rules would change" if rules else ""
    print(f"dry run: {len(changed)} node group(s) would change{also}; nothing applied")


def _apply_outcome(
    reply: config_pb2.ApplyStateResponse, request: config_pb2.ApplyStateRequest
) -> str:
    version = reply.version.version
    if not reply.changed:
        return f"unchanged: version {version} is live"
    if request.canary_percent:
        return f"version {version} is rolling out to {request.canary_percent}% of nodes"
    if request.canary_count:
        return f"version {version} is rolling out to {request.canary_count} node(s)"
    return f"version {version} is live"


def config_export(settings: Settings, args: argparse.Namespace) -> int:
    stub = config_stub(settings)
    exported = call_rpc(stub.ExportState, config_pb2.ExportStateRequest(version=args.version))
    state = State.from_json(exported.state_json)
    try:
        written = state.export_files(Path(args.out_dir), replace=args.replace)
    except InvalidState as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        emit_json(
            {
                "version": exported.version,
                "files": [str(p) for p in written],
                "removed": [str(p) for p in written.removed],
            }
        )
    else:
        print(f"version {exported.version} written to {args.out_dir}:")
        for path in written:
            print(f"  {path}")
        for path in written.removed:
            print(f"  removed {path}")
    return 0


# --- show -----------------------------------------------------------------------------


def config_show(settings: Settings, args: argparse.Namespace) -> int:
    if args.node:
        return _show_node_config(settings, args.node, args.json)
    doc = call_rpc(config_stub(settings).GetConfig, config_pb2.GetConfigRequest())
    if args.json:
        emit_json(proto_to_json(doc) | {"config_json": json.loads(doc.config_json)})
    else:
        print(f"# version {doc.version} by {doc.author or '-'} sha256 {doc.sha256}")
        print(json.dumps(json.loads(doc.config_json), indent=2))
    return 0


def _show_node_config(settings: Settings, node: str, as_json: bool) -> int:
    node_id = resolve_node(settings, node).node_id
    reply = call_rpc(
        config_stub(settings).NodeConfig, config_pb2.NodeConfigRequest(node_id=node_id)
    )
    if as_json:
        emit_json(
            proto_to_json(reply) | {"node_id": node_id, "config": json.loads(reply.config_json)}
        )
        return 0
    for name, value in _node_config_facts(node_id, reply):
        print(f"# {name:<13} {value}")
    print(json.dumps(json.loads(reply.config_json), indent=2))
    return 0


def _node_config_facts(node_id: str, reply: config_pb2.NodeConfigResponse) -> list[tuple[str, str]]:
    version = f"{reply.version}{' (rollout candidate)' if reply.candidate else ''}"
    return [
        ("node", node_id + (" (pending approval: gets {})" if reply.pending else "")),
        ("version", version),
        ("group", reply.group or "-"),
        ("sha1", reply.sha1),
        ("config_hash", f"{reply.osquery_info_config_hash} (osquery_info)"),
        ("blocks", ", ".join(reply.blocks) or "-"),
        ("tags", ", ".join(reply.tags) or "-"),
        ("labels", ", ".join(reply.labels) or "-"),
        *(("conflict", conflict) for conflict in reply.conflicts),
    ]


# --- versions -------------------------------------------------------------------------


def config_history(settings: Settings, args: argparse.Namespace) -> int:
    stub = config_stub(settings)
    versions = call_rpc(stub.ListVersions, config_pb2.ListVersionsRequest()).versions
    if args.json:
        emit_json([proto_to_json(v) for v in versions])
        return 0
    live = call_rpc(stub.ExportState, config_pb2.ExportStateRequest()).version
    rows = [
        (
            f"{v.version}{' *' if v.version == live else ''}",
            utc_iso(v.created_at),
            v.author or "-",
            v.sha256[:12],
            v.comment,
        )
        for v in versions
    ]
    emit_table(["version", "created", "author", "sha256", "comment"], rows)
    print("* live")
    return 0


def config_rollback(settings: Settings, args: argparse.Namespace) -> int:
    request = config_pb2.RollbackRequest(version=args.version, author=args.author)
    version = call_rpc(config_stub(settings).Rollback, request)
    if args.json:
        emit_json(proto_to_json(version))
    else:
        print(f"version {version.version} (the state of version {args.version}) is live")
    return 0


def config_set(settings: Settings, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    # Checked here first, so that every problem is named at once, one a line.
    try:
        state = State.single_block(parse_config_json(text))
        validate_state(state)
    except InvalidState as exc:
        raise _problems(exc) from exc
    if args.dry_run:
        # The state `set` stores (one block, "default", for every node), applied dry.
        dry = argparse.Namespace(**vars(args), comment="config set", canary=None, canary_count=None)
        return _apply_state(settings, dry, state)
    doc = call_rpc(
        config_stub(settings).SetConfig,
        config_pb2.SetConfigRequest(config_json=text, author=args.author),
    )
    if args.json:
        emit_json(proto_to_json(doc) | {"config_json": json.loads(doc.config_json)})
    else:
        print(f"config version {doc.version} is live ({len(doc.config_json)} bytes)")
    return 0


# --- rollout --------------------------------------------------------------------------


def rollout_status(settings: Settings, args: argparse.Namespace) -> int:
    status = call_rpc(config_stub(settings).RolloutStatus, config_pb2.RolloutStatusRequest())
    if args.json:
        emit_json(proto_to_json(status))
        return 0
    print(_rollout_summary(status.rollout, status.live_version))
    running = [(r.version, r.sha1, r.nodes) for r in status.running]
    emit_table(["version", "sha1", "nodes"], running)
    return 0


def _rollout_summary(rollout: config_pb2.Rollout, live_version: int) -> str:
    if not rollout.candidate_version:
        return f"no rollout in progress; version {live_version} is live"
    share = f"{rollout.percent}% of nodes" if rollout.percent else f"{len(rollout.node_ids)} nodes"
    return (
        f"version {rollout.candidate_version} rolling out to {share} since "
        f"{utc_iso(rollout.started_at)} (by {rollout.author or '-'}); version {live_version} "
        "is live for the others"
    )


def rollout_promote(settings: Settings, args: argparse.Namespace) -> int:
    request = config_pb2.RolloutRequest(author=args.author)
    version = call_rpc(config_stub(settings).PromoteRollout, request)
    _print_rollout_end(version, args.json, "promoted: version {} is live for every node")
    return 0


def rollout_abort(settings: Settings, args: argparse.Namespace) -> int:
    request = config_pb2.RolloutRequest(author=args.author)
    version = call_rpc(config_stub(settings).AbortRollout, request)
    _print_rollout_end(version, args.json, "aborted: version {} stays live for every node")
    return 0


def _print_rollout_end(version: config_pb2.StateVersion, as_json: bool, message: str) -> None:
    if as_json:
        emit_json(proto_to_json(version))
    else:
        print(message.format(version.version))
