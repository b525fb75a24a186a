"""The enroll service's RPCs for admin tokens and the audit log (a part of its servicer)."""

from __future__ import annotations

import re
import time

import grpc

from enroll_service.admin_tokens import AdminTokenStore
from protos.v1 import enroll_pb2
from quarry.admin_auth import ROLES, ROOT_TOKEN_NAME, new_token_value, root_token_from_env

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class AdminTokenRpcs:
    """CreateToken, ListTokens, RevokeToken, ResolveToken, RecordAudit, ListAudit.

    Who may call each is decided before they run (quarry/admin_auth.py ADMIN_METHODS).
    """

    _tokens: AdminTokenStore

    async def CreateToken(
        self, request: enroll_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedToken:
        if not TOKEN_NAME.fullmatch(request.name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.name!r}: a token name is letters, digits, '.', '_', '@', '-'",
            )
        if request.role not in ROLES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.role!r}: the role is one of {', '.join(ROLES)}",
            )
        if request.expires_in_seconds < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expires_in_seconds {request.expires_in_seconds}: 0 (never) or more",
            )
        value = new_token_value()
        now = int(time.time())
        expires_at = now + request.expires_in_seconds if request.expires_in_seconds else 0
        record = self._tokens.create(request.name, request.role, value, now, expires_at)
        if record is None:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"a token named {request.name!r} exists"
            )
        return enroll_pb2.CreatedToken(token=record.message(now), value=value)

    async def ListTokens(
        self, request: enroll_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListTokensResponse:
        records = self._tokens.tokens(request.include_revoked)
        now = time.time()
        return enroll_pb2.ListTokensResponse(tokens=[record.message(now) for record in records])

    async def RevokeToken(
        self, request: enroll_pb2.TokenRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.AdminToken:
        if request.name == ROOT_TOKEN_NAME and root_token_from_env():
            # Every process accepts QUARRY_ADMIN_TOKEN itself, and enroll re-installs it at
            # start: a revocation here would be listed but not enforced.
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "root is QUARRY_ADMIN_TOKEN: change that secret on every process to rotate it",
            )
        record = self._tokens.revoke(request.name, int(time.time()))
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no token named {request.name!r}")
        return record.message(time.time())

    async def ResolveToken(
        self, request: enroll_pb2.ResolveTokenRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.AdminToken:
        principal = self._tokens.resolve(request.token_sha256, int(time.time()))
        if principal is None:
            return enroll_pb2.AdminToken(found=False)
        return enroll_pb2.AdminToken(
            name=principal.name, role=principal.role, expires_at=principal.expires_at, found=True
        )

    async def RecordAudit(
        self, request: enroll_pb2.AuditEntry, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.RecordAuditResponse:
        self._tokens.record(request)
        return enroll_pb2.RecordAuditResponse()

    async def ListAudit(
        self, request: enroll_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListAuditResponse:
        entries = self._tokens.audit(request.since_ms, request.token_name, request.limit)
        return enroll_pb2.ListAuditResponse(entries=entries)
