"""Click events as the worker decodes them: the `blocked` field of docs/contracts.md."""

from __future__ import annotations

import json

from adclick import _native
from adclick.worker.messages import decode_clicks, pack_clicks
from workerkit import click_event


def test_blocked_is_read_from_the_event_and_false_when_absent() -> None:
    blocked = {**click_event(7, 1_764_284_000_000), "blocked": True}
    body = pack_clicks([blocked, click_event(7, 1_764_284_000_001)])
    batch = decode_clicks(body)
    assert batch.invalid == []
    assert [e.blocked for e in batch.events] == [True, False]


def test_pack_clicks_writes_blocked_only_when_true_as_the_tracker_does() -> None:
    clean = {**click_event(7, 1_764_284_000_000), "blocked": False}
    flagged = {**click_event(7, 1_764_284_000_001), "blocked": True}
    texts = _native.unpack_clicks(pack_clicks([clean, flagged]))
    assert "blocked" not in json.loads(texts[0])
    assert json.loads(texts[1])["blocked"] is True
    assert [e.blocked for e in decode_clicks(pack_clicks([clean, flagged])).events] == [False, True]
