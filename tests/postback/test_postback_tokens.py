"""Postback tokens as docs/contracts.md defines them: `{advertiser_id}.{version}.{mac}`."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from adclick.core.tokens import TokenError, make_token, verify_token

SECRET = "s3cret-for-tokens"


def test_token_matches_the_contract_computed_independently() -> None:
    digest = hmac.new(SECRET.encode(), b"adv:42:7", hashlib.sha256).digest()
    expected = "42.7." + base64.urlsafe_b64encode(digest).decode()[:32]
    assert make_token(SECRET, 42, 7) == expected
    assert make_token(SECRET.encode(), 42, 7) == expected
    assert verify_token(SECRET, expected) == (42, 7)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("", "malformed_token"),
        ("42.7", "malformed_token"),
        ("42.0." + "A" * 32, "malformed_token"),
        ("042.7." + "A" * 32, "malformed_token"),
        ("42.7." + "A" * 31, "malformed_token"),
        ("42.7." + "A" * 33, "malformed_token"),
        ("42.7." + "A" * 31 + "=", "malformed_token"),
        ("99999999999999999999.1." + "A" * 32, "malformed_token"),
        ("42.7." + "A" * 32, "invalid_token"),
    ],
)
def test_malformed_and_forged_tokens_are_refused(token: str, code: str) -> None:
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token)
    assert caught.value.code == code


def test_every_single_character_change_of_the_mac_is_refused() -> None:
    good = make_token(SECRET, 3, 1)
    prefix, mac = good.rsplit(".", 1)
    for i in range(len(mac)):
        changed = mac[:i] + ("B" if mac[i] != "B" else "C") + mac[i + 1 :]
        with pytest.raises(TokenError):
            verify_token(SECRET, f"{prefix}.{changed}")
    with pytest.raises(TokenError):
        verify_token("another-secret", good)


@pytest.mark.parametrize(("advertiser_id", "version"), [(0, 1), (-1, 1), (1, 0), (2**63, 1), (1, 2**31)])
def test_make_token_refuses_ids_and_versions_out_of_range(advertiser_id: int, version: int) -> None:
    with pytest.raises(ValueError):
        make_token(SECRET, advertiser_id, version)
