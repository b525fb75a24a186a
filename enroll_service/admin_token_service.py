"""The enroll service's RPCs for admin tokens and the audit log (a part of its servicer):
they translate messages and call token_admin.py and the token store."""

from __future__ import annotations

import time

import grpc

from enroll_service.admin_tokens import AdminTokenStore
from enroll_service.token_admin import TokenAdmin
from protos.v1 import enroll_pb2
from quarry.access.admin_auth import current_caller


class AdminTokenRpcs:
    """CreateToken, ListTokens, RevokeToken, ResolveToken, WhoAmI, RecordAudit, ListAudit.

    Who may call each is decided before they run (quarry/access/admin_auth.py ADMIN_METHODS).
    """

    _tokens: AdminTokenStore
    _token_admin: TokenAdmin

    async def CreateToken(
        self, request: enroll_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedToken:
        new = self._token_admin.create(request.name, request.role, request.expires_in_seconds)
        return enroll_pb2.CreatedToken(token=new.record.message(new.now), value=new.value)

    async def ListTokens(
        self, request: enroll_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListTokensResponse:
        records = self._tokens.tokens(request.include_revoked)
        now = time.time()
        return enroll_pb2.ListTokensResponse(tokens=[record.message(now) for record in records])

    async def RevokeToken(
        self, request: enroll_pb2.TokenRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.AdminToken:
        return self._token_admin.revoke(request.name).message(time.time())

    async def ResolveToken(
        self, request: enroll_pb2.ResolveTokenRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.AdminToken:
        principal = self._tokens.resolve(request.token_sha256, int(time.time()))
        if principal is None:
            return enroll_pb2.AdminToken(found=False)
        return enroll_pb2.AdminToken(
            name=principal.name, role=principal.role, expires_at=principal.expires_at, found=True
        )

    async def WhoAmI(
        self, request: enroll_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.AdminToken:
        """The caller's own token, as the admin gate admitted it (quarry/access/admin_auth.py)."""
        caller = current_caller()
        if caller is None:  # only reachable through the gate, which sets the caller
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
            raise AssertionError("unreachable")
        return enroll_pb2.AdminToken(
            name=caller.name, role=caller.role, expires_at=caller.expires_at, found=True
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
