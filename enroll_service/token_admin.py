"""The admin of admin tokens: create (a name, a role, a lifetime), list and revoke.

Who may call each is decided before they run (quarry/access/admin_auth.py ADMIN_METHODS); a
token's value is shown once, when it is made, and only its hash is stored
(enroll_service/admin_tokens.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import grpc

from enroll_service.admin_tokens import AdminTokenStore, TokenRecord
from quarry.access.admin_auth import (
    ROLES,
    ROOT_TOKEN_NAME,
    Refused,
    new_token_value,
    root_token_from_env,
)

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class NewToken:
    """A token just made, and its value (never stored)."""

    record: TokenRecord
    value: str
    now: int


class TokenAdmin:
    def __init__(self, tokens: AdminTokenStore) -> None:
        self._tokens = tokens

    def create(self, name: str, role: str, expires_in_seconds: int) -> NewToken:
        if not TOKEN_NAME.fullmatch(name):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{name!r}: a token name is letters, digits, '.', '_', '@', '-'",
            )
        if role not in ROLES:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{role!r}: the role is one of {', '.join(ROLES)}",
            )
        if expires_in_seconds < 0:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expires_in_seconds {expires_in_seconds}: 0 (never) or more",
            )
        value = new_token_value()
        now = int(time.time())
        expires_at = now + expires_in_seconds if expires_in_seconds else 0
        record = self._tokens.create(name, role, value, now, expires_at)
        if record is None:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"a token named {name!r} exists")
        return NewToken(record, value, now)

    def revoke(self, name: str) -> TokenRecord:
        if name == ROOT_TOKEN_NAME and root_token_from_env():
            # Every process accepts QUARRY_ADMIN_TOKEN itself, and enroll re-installs it at
            # start: a revocation here would be listed but not enforced.
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                "root is QUARRY_ADMIN_TOKEN: change that secret on every process to rotate it",
            )
        record = self._tokens.revoke(name, int(time.time()))
        if record is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no token named {name!r}")
        return record
