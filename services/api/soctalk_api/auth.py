"""Authentication for the HTTP API, as in seed 001's ``auth`` block.

* ``internal``: SocTalk signs its own tokens (HS256 JWT with the ``soctalk-jwt-signing-key``); requests carry
  ``Authorization: Bearer <jwt>``; expiry and audience are checked.
* ``proxy``: an upstream OIDC proxy authenticates and forwards identity headers; they are trusted only
  when the TCP peer is inside ``trustedProxyCIDRs`` — from anywhere else they are refused, not ignored.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import jwt

AUDIENCE = "soctalk-mssp-api"


@dataclass(frozen=True)
class Principal:
    subject: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    via: str = "internal"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def issue_token(key: str, subject: str, *, ttl_s: int = 3600, groups: list[str] | None = None) -> str:
    now = int(time.time())
    claims = {"sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s, "groups": groups or []}
    return jwt.encode(claims, key, algorithm="HS256")


def verify_bearer(key: str | None, authorization: str | None) -> Principal:
    if not key:
        raise AuthError(503, "internal auth mode without a signing key configured")
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthError(401, "missing bearer token")
    try:
        claims = jwt.decode(authorization[7:], key, algorithms=["HS256"], audience=AUDIENCE,
                            options={"require": ["exp", "sub", "aud"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError(401, "token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, "invalid token") from exc  # never echo the token
    return Principal(subject=str(claims["sub"]), groups=tuple(claims.get("groups") or ()))


def verify_proxy(peer: str | None, headers: dict[str, str], *, cidrs: list[str], user_header: str,
                 email_header: str, groups_header: str) -> Principal:
    if peer is None or not _in_cidrs(peer, cidrs):
        raise AuthError(403, f"identity headers are accepted only from trusted proxies, not from {peer}")
    user = headers.get(user_header.lower())
    if not user:
        raise AuthError(401, f"missing {user_header} header from the proxy")
    groups = tuple(g.strip() for g in headers.get(groups_header.lower(), "").split(",") if g.strip())
    return Principal(subject=user, email=headers.get(email_header.lower()), groups=groups, via="proxy")


def _in_cidrs(peer: str, cidrs: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)
