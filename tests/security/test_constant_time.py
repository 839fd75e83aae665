"""Secrets are compared in constant time: postback tokens (and the manager's CSRF tokens) through
hmac.compare_digest, never `==`; the postback role checks tokens only through `verify_token`.

ClickID MACs are compared in Rust by `Mac::verify_truncated_left` (the `subtle` crate), see rust/core/src/clickid.rs.
"""

from __future__ import annotations

import ast
import hmac
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path

import adclick.core.tokens as tokens
import adclick.postback.intake as intake
import pytest
from adclick.manager import security

SECRET = "s" * 40


class Spy:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return spy


def test_postback_token_mac_goes_through_compare_digest(spy: Spy) -> None:
    good = tokens.make_token(SECRET, 5, 2)
    assert tokens.verify_token(SECRET, good) == (5, 2)
    mac = good.rsplit(".", 1)[1].encode()
    assert spy.calls == [(mac, mac)]

    forged = good[:-1] + ("A" if good[-1] != "A" else "B")
    with pytest.raises(tokens.TokenError) as refused:
        tokens.verify_token(SECRET, forged)
    assert refused.value.code == "invalid_token"
    assert spy.calls[-1] == (mac, forged.rsplit(".", 1)[1].encode())


def test_manager_csrf_tokens_go_through_compare_digest(spy: Spy) -> None:
    assert security.same_token("abc", "abc") and not security.same_token("abc", "abd")
    assert spy.calls == [(b"abc", b"abc"), (b"abc", b"abd")]
    assert not security.same_token(None, "") and len(spy.calls) == 2  # nothing to compare: no call at all


def equality_on_secrets(function: Callable[..., object], names: set[str]) -> list[str]:
    """`==`/`!=` comparisons in `function` that touch one of `names` (by variable, attribute or subscript)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            sides = [node.left, *node.comparators]
            touched = {n.id for side in sides for n in ast.walk(side) if isinstance(n, ast.Name)}
            if touched & names:
                found.append(ast.unparse(node))
    return found


def test_no_secret_is_compared_with_equality() -> None:
    assert equality_on_secrets(tokens.verify_token, {"expected", "match", "token", "secret"}) == []
    assert equality_on_secrets(security.same_token, {"expected", "sent"}) == []


def test_the_postback_role_checks_tokens_only_through_verify_token() -> None:
    source = Path(intake.__file__).read_text()
    assert "verify_token(" in source
    assert "compare_digest" not in source and "_mac(" not in source, "the postback role compares MACs itself"
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            text = ast.unparse(node)
            assert "token" not in text.lower() or "version" in text.lower(), text
