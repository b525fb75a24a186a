"""Enroll secrets, API tokens and the audit log: the enroll service's admin calls.

A secret's or a token's value is in the answer of the call that makes it, once, as with
the CLI: the service keeps only its hash (docs/enrollment.md, docs/security.md).
"""

from __future__ import annotations

from api_service.backends import call
from api_service.errors import bad_request
from api_service.json_messages import message_json, parse_time
from api_service.routing import LIMIT, OFFSET, Call, Endpoint, Param, page
from api_service.schemas import Schema, message_schema, page_of
from protos.v1 import enroll_pb2
from quarry.access.admin_auth import ROLES

DEFAULT_ROTATION_GRACE_S = 24 * 3600
# Audit entries come newest first; a page deeper than this is refused (use `since`).
MAX_AUDIT_DEPTH = 100_000

SECRET = message_schema(enroll_pb2.EnrollSecret.DESCRIPTOR)
CREATED_SECRET = message_schema(
    enroll_pb2.EnrollSecret.DESCRIPTOR,
    "CreatedEnrollSecret",
    extra={"value": {"type": "string", "description": "the secret, shown only now"}},
)
TOKEN = message_schema(enroll_pb2.AdminToken.DESCRIPTOR, "ApiToken", drop=("found",))
CREATED_TOKEN = message_schema(
    enroll_pb2.AdminToken.DESCRIPTOR,
    "CreatedApiToken",
    drop=("found",),
    extra={"value": {"type": "string", "description": "the token, shown only now"}},
)
AUDIT_ENTRY = message_schema(enroll_pb2.AuditEntry.DESCRIPTOR)
AUDIT_PAGE: Schema = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": AUDIT_ENTRY},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "next_offset": {"type": ["integer", "null"]},
    },
    "required": ["items", "limit", "offset", "next_offset"],
    "additionalProperties": False,
}
STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
SECRET_BODY: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": STRINGS,
        "group": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
        "max_enrollments": {"type": "integer", "minimum": 1},
        "one_time": {"type": "boolean"},
        "requires_approval": {"type": "boolean"},
        "allows_reenrollment_after_revocation": {"type": "boolean"},
    },
    "required": ["name"],
    "additionalProperties": False,
}
ROTATE_BODY: Schema = {
    "type": "object",
    "properties": {"grace_seconds": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}
TOKEN_BODY: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string", "enum": list(ROLES)},
        "expires_in_seconds": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "role"],
    "additionalProperties": False,
}


def _without_found(token: enroll_pb2.AdminToken) -> dict:
    out = message_json(token)
    del out["found"]
    return out


async def list_secrets(call_: Call) -> dict:
    reply = await call(
        call_.backends.enroll.ListSecrets,
        enroll_pb2.ListSecretsRequest(include_inactive=call_.params["include_inactive"]),
        call_.token,
    )
    return page([message_json(s) for s in reply.secrets], call_)


async def create_secret(call_: Call) -> dict:
    body = call_.body
    expires_at = 0
    if body.get("expires_at"):
        try:
            expires_at = int(parse_time(body["expires_at"]))
        except ValueError:
            raise bad_request("field 'expires_at' must be an ISO 8601 time") from None
    request = enroll_pb2.CreateSecretRequest(
        name=body["name"],
        tags=body.get("tags", []),
        group=body.get("group", ""),
        expires_at=expires_at,
        max_enrollments=body.get("max_enrollments", 0),
        one_time=body.get("one_time", False),
        requires_approval=body.get("requires_approval", False),
        allows_reenrollment_after_revocation=body.get(
            "allows_reenrollment_after_revocation", False
        ),
    )
    created = await call(call_.backends.enroll.CreateSecret, request, call_.token)
    return message_json(created.secret) | {"value": created.value}


async def revoke_secret(call_: Call) -> dict:
    secret = await call(
        call_.backends.enroll.RevokeSecret,
        enroll_pb2.SecretRef(secret=call_.params["secret"]),
        call_.token,
    )
    return message_json(secret)


async def rotate_secret(call_: Call) -> dict:
    request = enroll_pb2.RotateSecretRequest(
        secret=call_.params["secret"],
        grace_seconds=call_.body.get("grace_seconds", DEFAULT_ROTATION_GRACE_S),
    )
    created = await call(call_.backends.enroll.RotateSecret, request, call_.token)
    return message_json(created.secret) | {"value": created.value}


async def list_tokens(call_: Call) -> dict:
    reply = await call(
        call_.backends.enroll.ListTokens,
        enroll_pb2.ListTokensRequest(include_revoked=call_.params["include_revoked"]),
        call_.token,
    )
    return page([_without_found(t) for t in reply.tokens], call_)


async def create_token(call_: Call) -> dict:
    body = call_.body
    request = enroll_pb2.CreateTokenRequest(
        name=body["name"], role=body["role"], expires_in_seconds=body.get("expires_in_seconds", 0)
    )
    created = await call(call_.backends.enroll.CreateToken, request, call_.token)
    return _without_found(created.token) | {"value": created.value}


async def revoke_token(call_: Call) -> dict:
    token = await call(
        call_.backends.enroll.RevokeToken,
        enroll_pb2.TokenRef(name=call_.params["token"]),
        call_.token,
    )
    return _without_found(token)


async def list_audit(call_: Call) -> dict:
    """Newest first; a page is the newest offset+limit entries less the newest offset."""
    p = call_.params
    limit, offset = p["limit"], p["offset"]
    if offset > MAX_AUDIT_DEPTH:
        raise bad_request(f"parameter offset must be at most {MAX_AUDIT_DEPTH}; narrow with since")
    request = enroll_pb2.ListAuditRequest(
        since_ms=int((p["since"] or 0) * 1000), token_name=p["token"] or "", limit=offset + limit
    )
    entries = list(
        reversed((await call(call_.backends.enroll.ListAudit, request, call_.token)).entries)
    )
    chosen = entries[offset : offset + limit]
    more = len(entries) == offset + limit
    return {
        "items": [message_json(e) for e in chosen],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


SECRET_PARAM = Param("secret", "a secret id, or a name (every secret of that name)", where="path")
TOKEN_PARAM = Param("token", "the token's name", where="path")

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/secrets",
        list_secrets,
        "enroll secrets (never their values)",
        "read-only",
        page_of(SECRET),
        (Param("include_inactive", "also revoked and expired ones", "boolean", default=False),),
        paged=True,
        tags=("enroll secrets",),
    ),
    Endpoint(
        "POST",
        "/api/v1/secrets",
        create_secret,
        "create an enroll secret; its value once",
        "admin",
        CREATED_SECRET,
        body=SECRET_BODY,
        status=201,
        tags=("enroll secrets",),
    ),
    Endpoint(
        "POST",
        "/api/v1/secrets/{secret}/revoke",
        revoke_secret,
        "revoke an enroll secret",
        "admin",
        SECRET,
        (SECRET_PARAM,),
        tags=("enroll secrets",),
    ),
    Endpoint(
        "POST",
        "/api/v1/secrets/{secret}/rotate",
        rotate_secret,
        "a new value; the old one works for grace_seconds (default a day)",
        "admin",
        CREATED_SECRET,
        (SECRET_PARAM,),
        body=ROTATE_BODY,
        tags=("enroll secrets",),
    ),
    Endpoint(
        "GET",
        "/api/v1/tokens",
        list_tokens,
        "API tokens (never their values)",
        "admin",
        page_of(TOKEN),
        (Param("include_revoked", "also revoked ones", "boolean", default=False),),
        paged=True,
        tags=("tokens",),
    ),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        create_token,
        "create an API token; its value once",
        "admin",
        CREATED_TOKEN,
        body=TOKEN_BODY,
        status=201,
        tags=("tokens",),
    ),
    Endpoint(
        "POST",
        "/api/v1/tokens/{token}/revoke",
        revoke_token,
        "revoke an API token",
        "admin",
        TOKEN,
        (TOKEN_PARAM,),
        tags=("tokens",),
    ),
    Endpoint(
        "GET",
        "/api/v1/audit",
        list_audit,
        "who did what, newest first",
        "admin",
        AUDIT_PAGE,
        (
            Param("since", "only entries at or after this time", "time"),
            Param("token", "only this token's entries"),
            LIMIT,
            OFFSET,
        ),
        tags=("audit",),
    ),
]
