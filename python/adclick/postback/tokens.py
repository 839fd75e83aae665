"""Postback tokens live in `adclick.core.tokens`, shared with the manager; re-exported for the postback role."""

from adclick.core.tokens import MAC_CHARS, MAX_ADVERTISER_ID, MAX_VERSION, TokenError, make_token, verify_token

__all__ = ["MAC_CHARS", "MAX_ADVERTISER_ID", "MAX_VERSION", "TokenError", "make_token", "verify_token"]
