"""The managed config state: live version, versions, apply (with a dry run that answers
the per-group diffs), rollback to a version, and promoting or aborting a staged rollout,
through the config service (docs/config.md)."""

from __future__ import annotations

import json

from api_service.backends import call
from api_service.errors import not_found
from api_service.json_messages import message_json
from api_service.routing import Call, Endpoint, Param, page
from api_service.schemas import Schema, message_schema, page_of
from protos.v1 import config_pb2

STATE_VERSION = message_schema(config_pb2.StateVersion.DESCRIPTOR)
ROLLOUT_STATUS = message_schema(config_pb2.RolloutStatusResponse.DESCRIPTOR)
APPLIED = message_schema(config_pb2.ApplyStateResponse.DESCRIPTOR)
CONFIG_STATE: Schema = {
    "type": "object",
    "properties": {"live": STATE_VERSION, "rollout": ROLLOUT_STATUS},
    "required": ["live", "rollout"],
    "additionalProperties": False,
}
APPLY_BODY: Schema = {
    "type": "object",
    "properties": {
        "state": {"type": "object", "description": "blocks, labels, node_tags (docs/config.md)"},
        "dry_run": {"type": "boolean"},
        "comment": {"type": "string"},
        "author": {"type": "string"},
        "canary_percent": {"type": "integer", "minimum": 0, "maximum": 99},
        "canary_count": {"type": "integer", "minimum": 0},
    },
    "required": ["state"],
    "additionalProperties": False,
}


async def config_state(call_: Call) -> dict:
    live = await call(
        call_.backends.config.ExportState, config_pb2.ExportStateRequest(), call_.token
    )
    rollout = await call(
        call_.backends.config.RolloutStatus, config_pb2.RolloutStatusRequest(), call_.token
    )
    return {"live": message_json(live), "rollout": message_json(rollout)}


async def config_versions(call_: Call) -> dict:
    reply = await call(
        call_.backends.config.ListVersions, config_pb2.ListVersionsRequest(), call_.token
    )
    newest_first = sorted(reply.versions, key=lambda v: v.version, reverse=True)
    return page([message_json(v) for v in newest_first], call_)


async def config_version(call_: Call) -> dict:
    version = await call(
        call_.backends.config.ExportState,
        config_pb2.ExportStateRequest(version=call_.params["version"]),
        call_.token,
    )
    if not version.version:
        raise not_found(f"no config version {call_.params['version']}")
    return message_json(version)


async def apply_config(call_: Call) -> dict:
    body = call_.body
    request = config_pb2.ApplyStateRequest(
        state_json=json.dumps(body["state"]),
        author=body.get("author", "") or "api",
        dry_run=body.get("dry_run", False),
        comment=body.get("comment", ""),
        canary_percent=body.get("canary_percent", 0),
        canary_count=body.get("canary_count", 0),
    )
    return message_json(await call(call_.backends.config.ApplyState, request, call_.token))


AUTHOR_BODY: Schema = {
    "type": "object",
    "properties": {"author": {"type": "string"}},
    "additionalProperties": False,
}
VERSION_PARAM = Param("version", "the version number", "integer", where="path", minimum=1)


async def rollback_config(call_: Call) -> dict:
    """A new live version with the state of an older one (the history keeps both)."""
    request = config_pb2.RollbackRequest(
        version=call_.params["version"], author=call_.body.get("author", "") or "api"
    )
    return message_json(await call(call_.backends.config.Rollback, request, call_.token))


async def promote_rollout(call_: Call) -> dict:
    request = config_pb2.RolloutRequest(author=call_.body.get("author", "") or "api")
    return message_json(await call(call_.backends.config.PromoteRollout, request, call_.token))


async def abort_rollout(call_: Call) -> dict:
    request = config_pb2.RolloutRequest(author=call_.body.get("author", "") or "api")
    return message_json(await call(call_.backends.config.AbortRollout, request, call_.token))


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/config",
        config_state,
        "the live config state and its rollout",
        "read-only",
        CONFIG_STATE,
        tags=("config",),
    ),
    Endpoint(
        "GET",
        "/api/v1/config/versions",
        config_versions,
        "config versions, newest first",
        "read-only",
        page_of(STATE_VERSION),
        paged=True,
        tags=("config",),
    ),
    Endpoint(
        "GET",
        "/api/v1/config/versions/{version}",
        config_version,
        "one config version",
        "read-only",
        STATE_VERSION,
        (VERSION_PARAM,),
        tags=("config",),
    ),
    Endpoint(
        "POST",
        "/api/v1/config/versions/{version}/rollback",
        rollback_config,
        "make an older version's state live again, as a new version",
        "admin",
        STATE_VERSION,
        (VERSION_PARAM,),
        body=AUTHOR_BODY,
        tags=("config",),
    ),
    Endpoint(
        "POST",
        "/api/v1/config/rollout/promote",
        promote_rollout,
        "finish a staged rollout: its candidate becomes live for every host",
        "admin",
        STATE_VERSION,
        body=AUTHOR_BODY,
        tags=("config",),
    ),
    Endpoint(
        "POST",
        "/api/v1/config/rollout/abort",
        abort_rollout,
        "drop a staged rollout: every host gets the live version again",
        "admin",
        STATE_VERSION,
        body=AUTHOR_BODY,
        tags=("config",),
    ),
    Endpoint(
        "POST",
        "/api/v1/config/apply",
        apply_config,
        "apply a config state, or with dry_run only answer its diffs per node group",
        "admin",
        APPLIED,
        body=APPLY_BODY,
        tags=("config",),
    ),
]
