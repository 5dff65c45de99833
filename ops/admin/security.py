"""Who may call the admin API: bearer tokens from the settings, compared in constant time.

A read-write token (``ADMIN_TOKENS``) may do everything; a read-only token
(``ADMIN_READONLY_TOKENS``) may read but gets 403 on anything that changes state. With no token
configured the server refuses to start, unless it runs in dev mode bound to loopback
(:func:`check_can_serve`); then every request is let in.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ops.admin.errors import ApiError

READ_WRITE, READ_ONLY = "read-write", "read-only"
Role = Literal["read-write", "read-only"]
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "localhost")


class CannotServe(Exception):
    """The server must not start as configured; the message says why and what to do."""


def check_can_serve(*, tokens: int, bind: str, dev: bool) -> None:
    if tokens:
        return
    if not dev:
        raise CannotServe(
            "no admin token is configured: set ADMIN_TOKENS (and ADMIN_READONLY_TOKENS), or pass --dev to serve "
            "without authentication on 127.0.0.1"
        )
    if bind not in LOOPBACK_ADDRESSES:
        raise CannotServe(
            f"--dev without tokens serves only on 127.0.0.1, not on {bind}; set ADMIN_TOKENS to bind there"
        )


@dataclass(frozen=True)
class Caller:
    role: Role
    #: A short fingerprint of the token, for logs (never the token itself).
    fingerprint: str


class TokenAuthority:
    """Maps a presented bearer token to a :class:`Caller`, without timing leaks."""

    def __init__(self, *, read_write: tuple[str, ...], read_only: tuple[str, ...], open_access: bool = False) -> None:
        # Digests have one length, so compare_digest's time depends on neither token's length.
        self._known = [(_digest(token), READ_WRITE) for token in read_write]
        self._known += [(_digest(token), READ_ONLY) for token in read_only]
        self.open_access = open_access and not self._known

    def caller(self, token: str | None) -> Caller:
        if self.open_access:
            return Caller(role=READ_WRITE, fingerprint="dev-mode")
        if not token:
            raise ApiError(
                401,
                "unauthenticated",
                "send a token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = _digest(token)
        role: Role | None = None
        for known, known_role in self._known:  # every token is compared, a match does not stop early
            if hmac.compare_digest(presented, known):
                role = known_role
        if role is None:
            raise ApiError(
                401,
                "invalid_token",
                "the token is not valid",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Caller(role=role, fingerprint=presented.hex()[:8])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).digest()


_bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKENS (read-write) or ADMIN_READONLY_TOKENS (read-only)")


def reader(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    authority: TokenAuthority = request.app.state.authority
    return authority.caller(credentials.credentials if credentials is not None else None)


def writer(caller: Annotated[Caller, Depends(reader)]) -> Caller:
    if caller.role != READ_WRITE:
        raise ApiError(403, "read_only_token", "this token is read-only; changes need a token from ADMIN_TOKENS")
    return caller


Reader = Annotated[Caller, Depends(reader)]
Writer = Annotated[Caller, Depends(writer)]
