"""Advertiser postback tokens, `{advertiser_id}.{version}.{mac}`, minted and checked with no database.

Standard library only, so that any role (the postback role checks them, the manager shows postback URLs) can use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

MAC_CHARS = 32
MAX_ADVERTISER_ID = 2**63 - 1
MAX_VERSION = 2**31 - 1
# Decimal numbers without leading zeros keep one spelling per token, so a token is also a stable log key.
_TOKEN = re.compile(rf"([1-9][0-9]{{0,18}})\.([1-9][0-9]{{0,9}})\.([A-Za-z0-9_-]{{{MAC_CHARS}}})")


class TokenError(ValueError):
    """A token that is malformed (`code` "malformed_token") or whose MAC is wrong (`code` "invalid_token")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: bytes, advertiser_id: int, version: int) -> str:
    digest = hmac.new(secret, f"adv:{advertiser_id}:{version}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:MAC_CHARS]


def make_token(secret: str | bytes, advertiser_id: int, version: int = 1) -> str:
    """The token an advertiser puts in its postback URL; bumping `version` revokes the older ones."""
    if not 1 <= advertiser_id <= MAX_ADVERTISER_ID:
        raise ValueError(f"advertiser_id must be between 1 and {MAX_ADVERTISER_ID}")
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version must be between 1 and {MAX_VERSION}")
    return f"{advertiser_id}.{version}.{_mac(_secret_bytes(secret), advertiser_id, version)}"


def verify_token(secret: str | bytes, token: str) -> tuple[int, int]:
    """(advertiser_id, version) of a token whose MAC is right (compared in constant time); else TokenError.

    The version floor (revocation) needs Redis or the database and is the caller's to check.
    """
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise TokenError("malformed_token", "token must look like {advertiser_id}.{version}.{32-character MAC}")
    advertiser_id, version = int(match[1]), int(match[2])
    if advertiser_id > MAX_ADVERTISER_ID or version > MAX_VERSION:
        raise TokenError("malformed_token", "token advertiser id or version out of range")
    expected = _mac(_secret_bytes(secret), advertiser_id, version)
    if not hmac.compare_digest(expected.encode(), match[3].encode()):
        raise TokenError("invalid_token", "token signature does not match")
    return advertiser_id, version
