"""The postback HTTP app against a real SQS endpoint (moto server) and a real Redis, driven over ASGI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from adclick.core.settings import PostbackSettings
from adclick.postback.app import create_app
from adclick.postback.intake import GIF, Intake
from postback_helpers import QUEUE, click_id, conversions, publish_advertiser, tampered, token
from support.procs import free_port
from support.servers import RedisServer, SqsServer

T = TypeVar("T")
Scenario = Callable[[httpx.AsyncClient, Intake], Awaitable[T]]


def run(settings: PostbackSettings, scenario: Scenario[T]) -> T:
    """Run `scenario` against a fresh app, with its lifespan, over an in-process ASGI client."""

    async def main() -> T:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://postback.test") as client:
                return await scenario(client, app.state.intake)

    return asyncio.run(main())


@pytest.fixture
def settings(adclick_env: dict[str, str]) -> PostbackSettings:
    # Roomy for an SQS endpoint that answers, on a CI machine running two suites on two cores; the tests of a
    # hung or absent endpoint set their own short timeout.
    return PostbackSettings(postback_sqs_timeout_seconds=5.0)


@pytest.fixture
def queue(sqs_server: SqsServer) -> str:
    return sqs_server.create_queue(QUEUE)


def sample(intake: Intake, name: str, **labels: str) -> float:
    value = intake.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_valid_postback_queues_one_message_with_every_field(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    cid = click_id(42)
    params = {
        "click_id": cid,
        "txid": "ORDER-123",
        "amount": "49.90",
        "currency": "usd",
        "status": "Approved",
        "event": "sale",
        "token": token(5),
        "sku": "A-1",
    }
    before = int(time.time() * 1000)

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params=params)

    response = run(settings, scenario)
    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "click_id": cid, "txid": "ORDER-123"}
    [message] = conversions(sqs_server, queue)
    received_at = message.pop("received_at")
    assert before <= received_at <= int(time.time() * 1000)
    assert message == {
        "v": 1,
        "click_id": cid,
        "txid": "ORDER-123",
        "event": "sale",
        "amount": "49.90",
        "currency": "USD",
        "status": "approved",
        "advertiser_id": 5,
        "source": "s2s",
        "params": {"sku": "A-1"},
        "ip": "127.0.0.1",  # the sender, for the advertiser's allowlist
    }


def test_form_and_json_posts_queue_the_same_conversion_and_defaults_fill_in(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    cid = click_id()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        form = {"click_id": cid, "txid": "F-1", "amount": "10.5", "token": token(7)}
        # Written out by hand: Python's json would send 49.9 for the float 49.90.
        as_json = f'{{"click_id": "{cid}", "txid": "J-1", "amount": 49.90, "token": "{token(7)}", "n": 3}}'
        bare = {"click_id": cid, "token": token(7), "amount": "", "currency": "", "status": ""}
        return [
            await client.post("/postback", data=form),
            await client.post("/postback", content=as_json, headers={"content-type": "application/json"}),
            await client.post(f"/postback?token={token(7)}", data={"click_id": cid}),
            await client.get("/postback", params=bare),
        ]

    responses = run(settings, scenario)
    assert [r.status_code for r in responses] == [200, 200, 200, 200], [r.text for r in responses]
    by_txid = {m["txid"]: m for m in conversions(sqs_server, queue)}
    assert set(by_txid) == {"F-1", "J-1", cid}  # no txid: the ClickID stands in, so retries share one key
    assert by_txid["F-1"]["amount"] == "10.5"
    assert by_txid["J-1"]["amount"] == "49.90"  # the JSON number's text, never a float
    assert by_txid["J-1"]["params"] == {"n": "3"}
    default = by_txid[cid]
    assert (default["event"], default["amount"], default["currency"], default["status"]) == (
        "conversion",
        None,
        None,
        None,
    )
    assert default["advertiser_id"] == 7


@pytest.mark.parametrize(
    ("token_value", "reason"),
    [
        (None, "missing_token"),
        ("5.1", "malformed_token"),
        ("05.1." + "A" * 32, "malformed_token"),
        ("5.1." + "A" * 32, "invalid_token"),
        # advertiser 6's MAC under advertiser 5's id: the MAC binds the id
        ("5.1." + token(6).split(".")[2], "invalid_token"),
        # a version bumped by hand keeps the old MAC
        ("5.2." + token(5, 1).split(".")[2], "invalid_token"),
    ],
)
def test_forged_token_is_401_and_nothing_queued(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str, token_value: str | None, reason: str
) -> None:
    params = {"click_id": click_id(), "txid": "T-1"}
    if token_value is not None:
        params["token"] = token_value

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> tuple[httpx.Response, float]:
        response = await client.get("/postback", params=params)
        return response, sample(intake, "adclick_postbacks_rejected_total", source="s2s", reason=reason)

    response, rejected = run(settings, scenario)
    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert rejected == 1
    assert sqs_server.count(queue) == 0


def test_token_signed_with_another_secret_is_401(
    adclick_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, sqs_server: SqsServer, queue: str
) -> None:
    monkeypatch.setenv("ADCLICK_POSTBACK_SECRET", "another-secret-the-advertiser-never-had")
    settings = PostbackSettings()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params={"click_id": click_id(), "token": token(5)})

    response = run(settings, scenario)
    assert (response.status_code, response.json()["reason"]) == (401, "invalid_token")
    assert sqs_server.count(queue) == 0


@pytest.mark.parametrize(
    ("make_click_id", "reason"),
    [
        (lambda: tampered(click_id()), "invalid_click_id"),
        (lambda: click_id()[:-1], "invalid_click_id"),
        (lambda: "not-a-click-id", "invalid_click_id"),
        (lambda: "", "missing_click_id"),
    ],
)
def test_tampered_click_id_is_400_and_nothing_queued(
    settings: PostbackSettings,
    sqs_server: SqsServer,
    queue: str,
    make_click_id: Callable[[], str],
    reason: str,
) -> None:
    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params={"click_id": make_click_id(), "token": token(5)})

    response = run(settings, scenario)
    assert response.status_code == 400
    assert response.json()["reason"] == reason
    assert sqs_server.count(queue) == 0


def test_click_id_signed_by_another_secret_is_400(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    from adclick import _native

    foreign = _native.ClickIdCodec(1, b"someone-elses-click-secret").generate(42, int(time.time() * 1000))

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params={"click_id": foreign, "token": token(5)})

    response = run(settings, scenario)
    assert (response.status_code, response.json()["reason"]) == (400, "invalid_click_id")
    assert sqs_server.count(queue) == 0


def test_revoked_token_version_is_401_and_the_current_one_passes(
    settings: PostbackSettings, sqs_server: SqsServer, redis_server: RedisServer, queue: str
) -> None:
    publish_advertiser(redis_server, 2)
    cid = click_id()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        return [
            await client.get("/postback", params={"click_id": cid, "txid": "old", "token": token(5, 1)}),
            await client.get("/postback", params={"click_id": cid, "txid": "new", "token": token(5, 2)}),
            # no key for advertiser 9: version 1 stands
            await client.get("/postback", params={"click_id": cid, "txid": "other", "token": token(9, 1)}),
        ]

    old, new, other = run(settings, scenario)
    assert (old.status_code, old.json()["reason"]) == (401, "revoked_token")
    assert (new.status_code, other.status_code) == (200, 200)
    assert sorted(m["txid"] for m in conversions(sqs_server, queue)) == ["new", "other"]


def test_redis_down_skips_the_version_floor_and_still_queues(
    settings: PostbackSettings, sqs_server: SqsServer, redis_server: RedisServer, queue: str
) -> None:
    publish_advertiser(redis_server, 2)
    redis_server.stop()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> tuple[httpx.Response, float]:
        response = await client.get("/postback", params={"click_id": click_id(), "txid": "X", "token": token(5, 1)})
        return response, sample(intake, "adclick_postback_redis_failures_total")

    response, redis_failures = run(settings, scenario)
    # The worker re-checks the version against the database; the postback role must not lose conversions.
    assert response.status_code == 200
    assert redis_failures == 1
    [message] = conversions(sqs_server, queue)
    assert message["advertiser_id"] == 5


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("amount", "abc", "invalid_amount"),
        ("amount", "49,90", "invalid_amount"),
        ("amount", "NaN", "invalid_amount"),
        ("amount", "Infinity", "invalid_amount"),
        ("amount", "1.1234567", "invalid_amount"),
        ("amount", "1000000000000", "invalid_amount"),
        ("amount", "1e12", "invalid_amount"),
        ("amount", "1_000", "invalid_amount"),
        ("currency", "US", "invalid_currency"),
        ("currency", "USDX", "invalid_currency"),
        ("currency", "U$D", "invalid_currency"),
        ("status", "paid", "invalid_status"),
        ("txid", "ORDER-1\r\nX-Injected: 1", "invalid_txid"),
        ("txid", "T" * 129, "invalid_txid"),
        ("event", "sale\x00", "invalid_event"),
        ("note", "line\nbreak", "malformed_param"),
        ("note", "x" * 513, "malformed_param"),
    ],
)
def test_malformed_field_is_400_with_its_reason_and_nothing_queued(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str, field: str, value: str, reason: str
) -> None:
    params = {"click_id": click_id(), "txid": "T-1", "token": token(5), field: value}

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params=params)

    response = run(settings, scenario)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "rejected"
    assert response.json()["reason"] == reason
    assert response.json()["detail"]
    assert sqs_server.count(queue) == 0


def test_amounts_at_the_edges_are_kept_exactly(settings: PostbackSettings, sqs_server: SqsServer, queue: str) -> None:
    amounts = {"a": "0.000001", "b": "999999999999.999999", "c": "-12.50", "d": "1.5000000", "e": "2E+1"}

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[int]:
        statuses = []
        for txid, amount in amounts.items():
            params = {"click_id": click_id(), "txid": txid, "amount": amount, "token": token(5)}
            statuses.append((await client.get("/postback", params=params)).status_code)
        return statuses

    assert run(settings, scenario) == [200] * len(amounts)
    got = {m["txid"]: m["amount"] for m in conversions(sqs_server, queue)}
    assert got == {"a": "0.000001", "b": "999999999999.999999", "c": "-12.50", "d": "1.5", "e": "20"}


def test_a_known_field_given_twice_must_agree(settings: PostbackSettings, sqs_server: SqsServer, queue: str) -> None:
    cid = click_id()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        return [
            await client.post(f"/postback?click_id={cid}&amount=1", data={"amount": "2", "token": token(5)}),
            await client.post(f"/postback?click_id={cid}&amount=1", data={"amount": "1", "token": token(5)}),
        ]

    conflicting, agreeing = run(settings, scenario)
    assert (conflicting.status_code, conflicting.json()["reason"]) == (400, "conflicting_field")
    assert agreeing.status_code == 200
    assert [m["amount"] for m in conversions(sqs_server, queue)] == ["1"]


def test_oversized_body_is_413_and_nothing_queued(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    padding = "x" * (settings.postback_max_body_bytes + 1)

    async def chunks() -> Any:
        # No Content-Length: the limit must hold while the body streams in.
        yield f"click_id={click_id()}&token={token(5)}&pad=".encode()
        for start in range(0, len(padding), 4096):
            yield padding[start : start + 4096].encode()

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        form = {"click_id": click_id(), "token": token(5), "pad": padding}
        headers = {"content-type": "application/x-www-form-urlencoded"}
        return [
            await client.post("/postback", data=form),
            await client.post("/postback", content=chunks(), headers=headers),
        ]

    declared, streamed = run(settings, scenario)
    assert (declared.status_code, declared.json()["reason"]) == (413, "body_too_large")
    assert (streamed.status_code, streamed.json()["reason"]) == (413, "body_too_large")
    assert sqs_server.count(queue) == 0


def test_unknown_body_type_is_415_and_broken_json_400(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        query = f"/postback?click_id={click_id()}&token={token(5)}"
        return [
            await client.post(query, content=b"<xml/>", headers={"content-type": "application/xml"}),
            await client.post(query, content=b"{not json", headers={"content-type": "application/json"}),
            await client.post(query, content=b"[]", headers={"content-type": "application/json"}),
            await client.post(query, json={"amount": {"nested": 1}}),
            await client.get(query + "&txid=%FF"),
        ]

    responses = run(settings, scenario)
    assert [(r.status_code, r.json()["reason"]) for r in responses] == [
        (415, "unsupported_media_type"),
        (400, "malformed_body"),
        (400, "malformed_body"),
        (400, "malformed_body"),
        (400, "malformed_query"),
    ]
    assert sqs_server.count(queue) == 0


def test_sqs_hung_answers_503_and_the_advertisers_retry_is_accepted(
    adclick_env: dict[str, str], sqs_server: SqsServer, queue: str
) -> None:
    settings = PostbackSettings(postback_sqs_timeout_seconds=1.5)
    cid = click_id()
    params = {"click_id": cid, "txid": "RETRY-1", "amount": "5", "token": token(5)}

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> dict[str, Any]:
        warm = await client.get("/postback", params={**params, "txid": "WARM"})  # queue URL resolved
        sqs_server.pause()
        try:
            during = await client.get("/postback", params=params)
            accepted_during = sample(intake, "adclick_postbacks_accepted_total", source="s2s")
            failures = sample(intake, "adclick_postback_sqs_failures_total")
        finally:
            sqs_server.resume()
        after = await client.get("/postback", params=params)
        return {"warm": warm, "during": during, "after": after, "accepted": accepted_during, "failures": failures}

    outcome = run(settings, scenario)
    assert outcome["warm"].status_code == 200
    assert outcome["during"].status_code == 503
    assert outcome["during"].json()["reason"] == "queue_unavailable"
    assert outcome["during"].headers["retry-after"]
    assert outcome["accepted"] == 1  # only the warm-up: the hung one was never reported accepted
    assert outcome["failures"] == 1
    assert outcome["after"].status_code == 200
    # The hung request may still land once SQS wakes up; it then carries the same txid, which the worker
    # deduplicates on, so the retry counts once.
    retried = [m for m in conversions(sqs_server, queue) if m["txid"] == "RETRY-1"]
    assert retried
    assert {(m["click_id"], m["txid"], m["amount"]) for m in retried} == {(cid, "RETRY-1", "5")}


def test_sqs_unreachable_answers_503(adclick_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADCLICK_SQS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    settings = PostbackSettings(postback_sqs_timeout_seconds=0.5)

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> tuple[httpx.Response, float]:
        response = await client.get("/postback", params={"click_id": click_id(), "token": token(5)})
        return response, sample(intake, "adclick_postbacks_accepted_total", source="s2s")

    response, accepted = run(settings, scenario)
    assert (response.status_code, response.json()["reason"]) == (503, "queue_unavailable")
    assert accepted == 0


def test_missing_queue_is_created_with_its_dead_letter_queue(settings: PostbackSettings, sqs_server: SqsServer) -> None:
    async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
        return await client.get("/postback", params={"click_id": click_id(), "token": token(5)})

    assert run(settings, scenario).status_code == 200
    assert len(conversions(sqs_server, sqs_server.queue_url(QUEUE))) == 1
    assert sqs_server.queue_url(f"{QUEUE}-dlq")


def test_pixel_is_always_a_gif_and_queues_only_valid_conversions(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    cid, from_cookie = click_id(1), click_id(2)

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        return [
            await client.get("/pixel.gif", params={"click_id": cid, "txid": "P-1", "amount": "3.20", "token": "x"}),
            await client.get("/pixel.gif", params={"click_id": tampered(cid), "txid": "P-2"}),
            await client.get("/pixel.gif", params={"click_id": cid, "txid": "P-3", "amount": "oops"}),
            await client.get("/pixel.gif"),
            await client.get("/pixel.gif?txid=%FF"),
            await client.get("/pixel.gif", params={"txid": "P-4"}, headers={"cookie": f"adclick_cid={from_cookie}"}),
        ]

    responses = run(settings, scenario)
    for response in responses:
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert "no-store" in response.headers["cache-control"]
        assert response.content == GIF
    by_txid = {m["txid"]: m for m in conversions(sqs_server, queue)}
    assert set(by_txid) == {"P-1", "P-4"}
    pixel = by_txid["P-1"]
    assert (pixel["click_id"], pixel["amount"], pixel["source"], pixel["advertiser_id"]) == (cid, "3.20", "pixel", None)
    assert pixel["params"] == {}  # a stray token is not passed on
    assert by_txid["P-4"]["click_id"] == from_cookie


def test_pixel_with_sqs_down_still_answers_the_gif(
    adclick_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADCLICK_SQS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    settings = PostbackSettings(postback_sqs_timeout_seconds=0.5)

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> tuple[httpx.Response, float]:
        response = await client.get("/pixel.gif", params={"click_id": click_id()})
        return response, sample(intake, "adclick_postback_sqs_failures_total")

    response, failures = run(settings, scenario)
    assert (response.status_code, response.content) == (200, GIF)
    assert failures == 1


def test_health_and_metrics(settings: PostbackSettings, queue: str) -> None:
    async def scenario(client: httpx.AsyncClient, intake: Intake) -> list[httpx.Response]:
        await client.get("/postback", params={"click_id": click_id(), "token": token(5)})
        await client.get("/postback", params={"click_id": click_id(), "token": "bad"})
        return [await client.get("/health"), await client.get("/metrics")]

    health, metrics = run(settings, scenario)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert metrics.status_code == 200
    text = metrics.text
    assert 'adclick_postbacks_accepted_total{source="s2s"} 1.0' in text
    assert 'adclick_postbacks_rejected_total{reason="malformed_token",source="s2s"} 1.0' in text
    assert 'adclick_postback_latency_seconds_count{endpoint="postback"} 2.0' in text
    assert "adclick_postback_sqs_failures_total 0.0" in text


def test_a_postback_from_outside_the_advertisers_allowlist_is_403_and_nothing_queued(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer, queue: str
) -> None:
    publish_advertiser(redis_server, 1, postback_ips=["198.51.100.0/24", "2001:db8::/32"])
    behind_alb = PostbackSettings(postback_sqs_timeout_seconds=5.0, postback_trusted_proxies=1)
    direct = PostbackSettings(postback_sqs_timeout_seconds=5.0)

    def send(txid: str, forwarded_for: str | None = None, advertiser_id: int = 5) -> Scenario[httpx.Response]:
        async def scenario(client: httpx.AsyncClient, intake: Intake) -> httpx.Response:
            headers = {"x-forwarded-for": forwarded_for} if forwarded_for else {}
            params = {"click_id": click_id(), "txid": txid, "token": token(advertiser_id)}
            return await client.get("/postback", params=params, headers=headers)

        return scenario

    allowed = run(behind_alb, send("IN", "10.0.0.1, 198.51.100.7"))  # the ALB appended the sender's address
    allowed_v6 = run(behind_alb, send("IN6", "2001:db8::42"))
    outside = run(behind_alb, send("OUT", "198.51.100.7, 203.0.113.9"))  # a forged first hop changes nothing
    spoofed = run(direct, send("SPOOF", "198.51.100.7"))  # no trusted proxy: the header is not believed
    no_list = run(direct, send("ANY", None, advertiser_id=9))  # an advertiser without a list: from anywhere

    assert (allowed.status_code, allowed_v6.status_code, no_list.status_code) == (200, 200, 200)
    for refused in (outside, spoofed):
        assert (refused.status_code, refused.json()["reason"]) == (403, "ip_not_allowed")
    by_txid = {m["txid"]: m for m in conversions(sqs_server, queue)}
    assert set(by_txid) == {"IN", "IN6", "ANY"}
    assert (by_txid["IN"]["ip"], by_txid["IN6"]["ip"]) == ("198.51.100.7", "2001:db8::42")


def test_a_pixel_never_carries_a_status_and_says_which_page_fired_it(
    settings: PostbackSettings, sqs_server: SqsServer, queue: str
) -> None:
    cid = click_id(3)

    async def scenario(client: httpx.AsyncClient, intake: Intake) -> None:
        params = {"click_id": cid, "txid": "P-1", "status": "approved"}
        await client.get("/pixel.gif", params=params, headers={"origin": "https://Shop.Example"})
        params = {"click_id": cid, "txid": "P-2"}
        await client.get("/pixel.gif", params=params, headers={"referer": "https://www.shop.example/thanks?o=1"})
        await client.get("/pixel.gif", params={"click_id": cid, "txid": "P-3"})

    run(settings, scenario)
    by_txid = {m["txid"]: m for m in conversions(sqs_server, queue)}
    assert {txid: m["status"] for txid, m in by_txid.items()} == {"P-1": None, "P-2": None, "P-3": None}
    assert by_txid["P-1"]["origin"] == "shop.example"
    assert by_txid["P-2"]["origin"] == "www.shop.example"
    assert "origin" not in by_txid["P-3"]
