"""The tracker as a real process, with a real Redis and a real SQS endpoint, used over HTTP."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from adclick import _native
from adclick.core.links import publish_link
from support.load import Load
from support.procs import ProcessGuard, free_port, port_open, wait_until, within_a_second
from support.roles import request
from support.seeding import seed_database
from support.servers import QueueReader, RedisServer, SqsServer
from support.tracker import (
    UA_DESKTOP,
    UA_IPHONE,
    UA_SLACKBOT,
    TrackerProc,
    click_id_from,
    click_path,
    collect_events,
    events_in,
)

TEMPLATE = (
    "https://shop.example/landing?cid={click_id}&l={link_id}&o={offer_id}&a={aff_id}"
    "&s1={sub1}&s2={sub2}&s3={sub3}&s4={sub4}&s5={sub5}&c={country}&d={device}&os={os}&t={ts}"
    "&src={p:clickid}&g={p:gclid}"
)


def link(slug: str = "summer", url: str = TEMPLATE, **extra: object) -> dict[str, object]:
    return {"v": 1, "id": 42, "slug": slug, "offer_id": 7, "affiliate_id": 3, "status": "active", "url": url, **extra}


@pytest.fixture
def tracker(start_tracker: Callable[..., TrackerProc], clicks_queue: str) -> TrackerProc:
    return start_tracker()


def events_read(reader: QueueReader, want: set[str], timeout: float) -> list[dict]:
    """Wait until the reader, which drains the queue all along, has read every ClickID in `want`."""
    bodies = reader.wait_for(
        lambda bodies: want <= {str(e["click_id"]) for e in events_in(bodies)},
        timeout=timeout,
        message=f"{len(want)} click events in SQS",
    )
    return events_in(bodies)


def test_click_redirects_with_every_macro_encoded_and_its_event_reaches_sqs(
    tracker: TrackerProc, redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), link())
    path = click_path("summer", sub1="a b&c=d", sub2="é/ü", sub3="x", sub4="", sub5="<s>", gclid="G1", clickid="abc")
    reply = request(
        tracker.port,
        "GET",
        path,
        headers={
            "User-Agent": UA_IPHONE,
            "Referer": "https://news.example/article",
            "CF-IPCountry": "br",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert reply.status == 302
    assert reply.headers["cache-control"] == "no-store"
    location = reply.location
    assert location is not None
    parts = urllib.parse.urlsplit(location)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example", "/landing")
    assert "a%20b%26c%3Dd" in parts.query and "%C3%A9%2F%C3%BC" in parts.query and "%3Cs%3E" in parts.query
    q = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    assert q["l"] == "42" and q["o"] == "7" and q["a"] == "3"
    assert q["s1"] == "a b&c=d" and q["s2"] == "é/ü" and q["s3"] == "x" and q["s4"] == "" and q["s5"] == "<s>"
    assert q["c"] == "BR" and q["d"] == "smartphone" and q["os"] == "iOS"
    assert q["src"] == "abc" and q["g"] == "G1"  # the click's own parameters, forwarded
    codec = _native.ClickIdCodec(1, b"dev-only-click-secret-change-me")
    version, key_id, ts_ms, link_id, flags = codec.verify(q["cid"])
    assert (version, key_id, link_id, flags) == (1, 1, 42, 0)
    assert abs(ts_ms - int(q["t"])) == 0 and abs(ts_ms / 1000 - time.time()) < 60

    [event] = collect_events(sqs_server, clicks_queue, {q["cid"]})
    assert event["click_id"] == q["cid"] and event["ts"] == ts_ms
    assert (event["link_id"], event["offer_id"], event["aff_id"], event["slug"]) == (42, 7, 3, "summer")
    assert event["method"] == "GET" and event["ua"] == UA_IPHONE and event["referer"] == "https://news.example/article"
    assert event["country"] == "BR" and event["device"] == "smartphone" and event["os"] == "iOS"
    assert event["bot"] is False and event["fallback"] is False and event["dest"] == 0
    subs = (event["sub1"], event["sub2"], event["sub3"], event["sub4"], event["sub5"])
    assert subs == ("a b&c=d", "é/ü", "x", "", "<s>")
    assert event["params"] == {"gclid": "G1", "clickid": "abc"}
    assert event["ip"] == "127.0.0.1"  # no trusted proxy configured: X-Forwarded-For is not believed


def test_trusted_proxy_cookie_bot_and_head(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    tracker = start_tracker(trusted_proxies=1, anonymize_ip="true")
    publish_link(redis_server.client(), link(cookie=True))
    reply = request(
        tracker.port,
        "GET",
        click_path("summer"),
        headers={"X-Forwarded-For": "203.0.113.77, 10.0.0.1", "User-Agent": UA_DESKTOP},
    )
    assert reply.status == 302
    cid = click_id_from(reply.location or "")
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"adclick_cid={cid};") and "HttpOnly" in cookie and "SameSite=Lax" in cookie

    bot = request(tracker.port, "GET", click_path("summer"), headers={"User-Agent": UA_SLACKBOT})
    assert bot.status == 302
    bot_cid = click_id_from(bot.location or "")

    head = request(tracker.port, "HEAD", click_path("summer"), headers={"User-Agent": UA_DESKTOP})
    assert head.status == 302 and head.location and head.location.startswith("https://shop.example/landing")
    head_cid = click_id_from(head.location)

    events = collect_events(sqs_server, clicks_queue, {cid, bot_cid})
    by_id = {e["click_id"]: e for e in events}
    assert by_id[cid]["ip"] == "10.0.0.0"  # the proxy's view of the client, anonymised to /24
    assert by_id[bot_cid]["bot"] is True
    time.sleep(0.5)
    events += events_in(sqs_server.drain(clicks_queue))
    assert head_cid not in {e["click_id"] for e in events}, "HEAD requests are not clicks"
    m = tracker.metrics()
    assert m['adclick_click_requests_total{outcome="head"}'] == 1
    assert m['adclick_click_requests_total{outcome="bot"}'] == 1


def test_link_change_redirects_to_the_new_url_within_a_second(tracker: TrackerProc, redis_server: RedisServer) -> None:
    client = redis_server.client()
    publish_link(client, link(url="https://old.example/?cid={click_id}"))
    assert (request(tracker.port, "GET", "/c/summer").location or "").startswith("https://old.example/")
    publish_link(client, link(url="https://new.example/?cid={click_id}"))
    within_a_second(
        lambda: (request(tracker.port, "GET", "/c/summer").location or "").startswith("https://new.example/"),
        message="the new destination",
    )


def test_links_put_cli_changes_a_live_link(
    tracker: TrackerProc, adclick_env: dict[str, str], database_url: str
) -> None:
    import asyncio
    import os
    import subprocess

    campaign = asyncio.run(seed_database(database_url, affiliate={}))
    env = {**os.environ, **adclick_env, "ADCLICK_DATABASE_URL": database_url}

    def put(url: str) -> None:
        argv = [sys.executable, "-m", "adclick.cli", "links", "put", "cli-link", url]
        argv += ["--offer", str(campaign.offer_id), "--affiliate", str(campaign.affiliate_id)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
        assert done.returncode == 0, done.stderr

    put("https://one.example/?c={click_id}")
    assert (request(tracker.port, "GET", "/c/cli-link").location or "").startswith("https://one.example/")
    put("https://two.example/?c={click_id}")
    wait_until(
        lambda: (request(tracker.port, "GET", "/c/cli-link").location or "").startswith("https://two.example/"),
        timeout=1.0,
        interval=0.01,
        message="the CLI's new destination",
    )


def test_redis_outage_cached_links_keep_redirecting_and_the_tracker_recovers(
    tracker: TrackerProc, redis_server: RedisServer
) -> None:
    publish_link(redis_server.client(), link())
    # The tracker hears its own invalidation a moment later; let it, so the entry cached next stays cached.
    wait_until(lambda: tracker.metrics()["adclick_cache_invalidations_total"] >= 1, message="the invalidation")
    assert request(tracker.port, "GET", "/c/summer").status == 302
    redis_server.stop(save=True)  # a restart that keeps its data, as a persistent Redis does
    for _ in range(20):
        assert request(tracker.port, "GET", "/c/summer").status == 302
    unknown = request(tracker.port, "GET", "/c/never-seen")
    assert unknown.status == 503  # cannot tell unknown from not-yet-cached without Redis
    assert tracker.health() == 503
    redis_server.start()
    wait_until(lambda: tracker.health() == 200, timeout=10, message="health back after Redis restart")
    publish_link(redis_server.client(), link(slug="after", url="https://after.example/?cid={click_id}"))
    wait_until(
        lambda: request(tracker.port, "GET", "/c/after").status == 302, timeout=5, message="new link after recovery"
    )
    assert request(tracker.port, "GET", "/c/summer").status == 302
    redis_server.client().delete("adclick:link:summer")  # gone from Redis without an invalidation...
    redis_server.stop(save=True)
    redis_server.start()  # ...and across a restart: the resubscribed cache refetches instead of trusting itself
    wait_until(lambda: tracker.health() == 200, timeout=10, message="health back after the second restart")
    wait_until(lambda: request(tracker.port, "GET", "/c/summer").status == 404, timeout=5, message="stale link dropped")


def test_unknown_slugs_get_404_and_junk_floods_stay_off_redis(tracker: TrackerProc, redis_server: RedisServer) -> None:
    for _ in range(50):
        assert request(tracker.port, "GET", "/c/no-such-link").status == 404
    m = tracker.metrics()
    assert m["adclick_cache_misses_total"] <= 2
    # The replica does not hold them, so the cache's negative caching answers them from memory.
    assert m["adclick_cache_negative_hits_total"] >= 48


def tracker_with_own_sqs(
    guard: ProcessGuard, env: dict[str, str], redis_server: RedisServer
) -> tuple[SqsServer, str, TrackerProc]:
    """A tracker on an SQS endpoint of its own (with the clicks queue) that a test may stop or freeze, failing fast
    on it (0.5 s timeout, 2 attempts), and the test link published."""
    sqs = SqsServer(guard)
    sqs.start()
    queue = sqs.create_queue("adclick-clicks")
    env = {**env, "ADCLICK_SQS_ENDPOINT_URL": sqs.endpoint_url}
    tracker = TrackerProc(guard, env, sqs_timeout_seconds=0.5, sqs_retry_attempts=2)
    publish_link(redis_server.client(), link())
    return sqs, queue, tracker


def test_sqs_outage_under_load_loses_no_click(
    process_guard: ProcessGuard, adclick_env: dict[str, str], redis_server: RedisServer
) -> None:
    # An SQS endpoint of its own: frozen for 10 s mid-load, it must not take other tests' endpoint with it.
    sqs, queue, tracker = tracker_with_own_sqs(process_guard, adclick_env, redis_server)
    # A consumer reads all along, as the worker does: moto slows down with queue depth (see QueueReader).
    with sqs.reader(queue) as reader:
        with Load(tracker.port, "summer") as load:
            time.sleep(1.0)
            sqs.pause()
            try:
                time.sleep(10.0)
            finally:
                sqs.resume()
            time.sleep(1.0)
        assert load.errors == 0 and set(load.statuses) == {302}
        assert len(load.answered) > 200
        m = tracker.metrics()
        assert m["adclick_spilled_messages_total"] >= 1, "an outage of 10 s must have spilled to Redis"
        events = events_read(reader, load.answered, timeout=60)
    ids = [e["click_id"] for e in events]
    assert load.answered <= set(ids)


def test_sigterm_under_load_drains_then_ships_every_answered_click(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    tracker = start_tracker(drain_seconds=2, flush_interval_ms=1000)
    publish_link(redis_server.client(), link())
    with sqs_server.reader(clicks_queue) as reader:
        with Load(tracker.port, "summer") as load:
            time.sleep(1.0)
            tracker.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert tracker.health() == 503, "health turns 503 while draining"
            served_during_drain = sum(load.statuses.values())
            time.sleep(1.0)
            assert sum(load.statuses.values()) > served_during_drain, "clicks are still served while draining"
            assert tracker.proc.wait(20) == 0
        assert len(load.answered) > 100
        events = events_read(reader, load.answered, timeout=30)
    assert load.answered <= {e["click_id"] for e in events}
    assert "still buffered" not in tracker.proc.output()


def test_sigterm_as_soon_as_the_port_opens_still_drains_and_ships_every_answered_click(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), link())
    tracker = start_tracker(wait=False, drain_seconds=1.5, flush_interval_ms=1000)
    wait_until(
        lambda: port_open(tracker.port),
        timeout=20,
        interval=0.001,
        message="the tracker's port open",
        proc=tracker.proc,
    )
    tracker.proc.send_signal(signal.SIGTERM)  # before /health says ok: the window in which actix used to get it
    with Load(tracker.port, "summer") as load:
        time.sleep(1.0)
    assert tracker.proc.wait(20) == 0
    assert load.answered, "clicks are served while draining"
    assert load.answered <= {e["click_id"] for e in collect_events(sqs_server, clicks_queue, load.answered)}
    assert "SIGTERM: draining" in tracker.proc.output()


def test_a_fresh_sqs_endpoint_after_an_outage_gets_every_click(
    process_guard: ProcessGuard, adclick_env: dict[str, str], redis_server: RedisServer
) -> None:
    # An endpoint of its own, replaced mid-test by a fresh one on the same port that has no queue yet.
    sqs, queue, tracker = tracker_with_own_sqs(process_guard, adclick_env, redis_server)

    def clicks(n: int, tag: str) -> set[str]:
        replies = [request(tracker.port, "GET", click_path("summer", sub1=tag, sub2=str(i))) for i in range(n)]
        assert {r.status for r in replies} == {302}
        return {click_id_from(r.location or "") for r in replies}

    before = clicks(5, "before")
    collect_events(sqs, queue, before)
    sqs.stop()
    during = clicks(20, "during")
    wait_until(lambda: tracker.metrics().get("adclick_spilled_messages_total", 0) >= 1, message="a spill to Redis")
    sqs.start()
    after = clicks(20, "after")
    wait_until(lambda: _queue_exists(sqs, "adclick-clicks"), timeout=30, message="the tracker re-creating its queue")
    events = collect_events(sqs, sqs.queue_url("adclick-clicks"), during | after, timeout=30)
    assert during | after <= {e["click_id"] for e in events}
    assert sqs.queue_url("adclick-clicks-dlq").endswith("/adclick-clicks-dlq")


def _queue_exists(sqs: SqsServer, name: str) -> bool:
    try:
        sqs.queue_url(name)
    except Exception:  # botocore's QueueDoesNotExist, generated at run time
        return False
    return True


def test_two_processes_share_the_port_and_both_flush_on_sigterm(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    tracker = start_tracker(processes=2, drain_seconds=0.5, flush_interval_ms=5000)
    publish_link(redis_server.client(), link())
    with Load(tracker.port, "summer", connections=8) as load:
        time.sleep(1.5)
    tracker.proc.send_signal(signal.SIGTERM)
    assert tracker.proc.wait(20) == 0
    events = collect_events(sqs_server, clicks_queue, load.answered, timeout=30)
    assert load.answered <= {e["click_id"] for e in events}


def test_busy_port_fails_fast_without_prompting(process_guard: ProcessGuard, adclick_env: dict[str, str]) -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        proc = process_guard.spawn(
            [sys.executable, "-m", "adclick.cli", "tracker", "--host", "127.0.0.1", "--port", str(port)],
            env={**adclick_env, "PATH": "/usr/bin:/bin"},
        )
        assert proc.wait(30) == 2
    assert "already in use" in proc.output()


def time_wait_on(port: int) -> None:
    """Leave a server-side connection in TIME_WAIT on `port` and nothing listening, as a stopped tracker does."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server closes first, so its side waits
            client.recv(1)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the state a plain bind refuses


def test_a_port_left_in_time_wait_by_a_stopped_tracker_is_taken_again(
    start_tracker: Callable[..., TrackerProc],
) -> None:
    port = free_port()
    time_wait_on(port)
    tracker = start_tracker(port=port)
    assert tracker.health() == 200


BAD_REQUESTS = [
    ("GET", "/c/" + "a" * 10_000, {}, None),
    ("GET", "/c/bad%zzslug", {}, None),
    ("GET", "/c/summer?sub1=%E0%A4%A", {}, None),
    ("GET", "/c/summer?sub1=%ZZ", {}, None),
    ("GET", "/c/summer?sub1=line%0D%0ASet-Cookie:%20x=1", {}, None),
    ("GET", "/c/summer?sub2=%00", {}, None),
    ("POST", "/c/summer", {"Content-Type": "application/octet-stream"}, b"x" * 1_000_000),
    ("GET", "/c/summer", {f"X-Junk-{i}": "v" for i in range(500)}, None),
    ("GET", "/c/summer", {"User-Agent": "evil\x01agent"}, None),
    ("GET", "/c/summer?" + "&".join(f"p{i}=v" for i in range(200)), {}, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_input_gets_a_4xx_and_changes_nothing(
    tracker: TrackerProc,
    redis_server: RedisServer,
    sqs_server: SqsServer,
    clicks_queue: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    publish_link(redis_server.client(), link())
    try:
        reply = request(tracker.port, method, path, headers=headers, body=body)
        assert 400 <= reply.status < 500, (reply.status, reply.body[:200])
        assert "set-cookie" not in reply.headers and "location" not in reply.headers
    except ConnectionError:
        pass  # refusing to read an abusive request at all is also a fine answer
    assert tracker.health() == 200 and tracker.proc.alive()
    time.sleep(0.3)
    assert sqs_server.drain(clicks_queue) == []
    assert request(tracker.port, "GET", "/c/summer").status == 302


def test_forged_clickid_cookie_is_ignored(
    tracker: TrackerProc, redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), link(cookie=True))
    forged = "0" * 40
    reply = request(tracker.port, "GET", "/c/summer", headers={"Cookie": f"adclick_cid={forged}"})
    assert reply.status == 302
    assert forged not in (reply.location or "") and forged not in reply.headers.get("set-cookie", "")
    cid = click_id_from(reply.location or "")
    [event] = collect_events(sqs_server, clicks_queue, {cid})
    assert forged not in str(event)


def test_stalled_and_idle_connections_are_closed(start_tracker: Callable[..., TrackerProc], clicks_queue: str) -> None:
    tracker = start_tracker(header_timeout_seconds=1, keepalive_timeout_seconds=2)

    def closed_by_server(sock: socket.socket, trickle: bool, limit: float) -> float:
        sock.settimeout(0.2)
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if trickle:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return time.monotonic() - started
            try:
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError("the server kept the connection open")

    slow = socket.create_connection(("127.0.0.1", tracker.port))
    slow.sendall(b"GET /c/summer HTTP/1.1\r\nHost: x\r\n")
    assert closed_by_server(slow, trickle=True, limit=8) >= 0.9
    slow.close()

    idle = socket.create_connection(("127.0.0.1", tracker.port))
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed_by_server(idle, trickle=False, limit=10) >= 1.5
    idle.close()

    silent = socket.create_connection(("127.0.0.1", tracker.port))
    assert closed_by_server(silent, trickle=False, limit=8) >= 0.9
    silent.close()
    assert tracker.health() == 200


def test_metrics_expose_outcomes_latency_cache_and_shipping(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), link())
    tracker = start_tracker()
    for _ in range(10):
        request(tracker.port, "GET", "/c/summer", headers={"User-Agent": UA_DESKTOP})
    request(tracker.port, "GET", "/c/nope")
    request(tracker.port, "GET", "/c/bad%25")

    def shipped() -> bool:
        # The ten clicks may span two flush cycles on a slow machine: wait for the buffer to empty too.
        m = tracker.metrics()
        return m.get("adclick_sqs_messages_sent_total", 0) >= 1 and m.get("adclick_event_buffer_depth") == 0

    wait_until(shipped, timeout=10, message="every buffered click shipped")
    m = tracker.metrics()
    assert m['adclick_click_requests_total{outcome="redirect"}'] == 10
    assert m['adclick_click_requests_total{outcome="not_found"}'] == 1
    assert m['adclick_click_requests_total{outcome="bad_request"}'] == 1
    assert m["adclick_click_seconds_count"] == 12
    assert m["adclick_cache_hits_total"] + m["adclick_replica_hits_total"] >= 9
    assert m["adclick_events_buffered_total"] == 10
    assert m["adclick_event_buffer_depth"] == 0
    # The link cache against both of its bounds (it holds "summer" and "nope" unless the replica answered first).
    assert m["adclick_cache_entries"] <= 2
    assert (m["adclick_cache_max_entries"], m["adclick_cache_max_bytes"]) == (100_000, 64 << 20)
    assert 0 <= m["adclick_cache_bytes"] <= 2 * 2000
    assert m["adclick_link_routes"] >= 1 and m["adclick_link_routes_bytes"] > 0
    # The link replica holds the one live link, within its budget, and serves.
    wait_until(lambda: tracker.metrics()["adclick_replica_state"] == 2, timeout=10, message="the replica serving")
    m = tracker.metrics()
    assert (m["adclick_replica_links"], m["adclick_replica_loads_total"]) == (1, 1)
    assert 0 < m["adclick_replica_bytes"] <= m["adclick_replica_max_bytes"] == 80 << 20
    assert m["adclick_replica_over_budget"] == 0


def test_cache_bounds_come_from_settings_and_a_byte_bound_too_small_is_refused(
    start_tracker: Callable[..., TrackerProc],
) -> None:
    tracker = start_tracker(cache_max_entries=5000, cache_max_bytes=8 << 20)
    m = tracker.metrics()
    assert (m["adclick_cache_max_entries"], m["adclick_cache_max_bytes"]) == (5000, 8 << 20)
    refused = start_tracker(wait=False, cache_max_entries=100_000, cache_max_bytes=1 << 20)
    assert refused.proc.wait(30) != 0
    assert "max_bytes" in refused.proc.output()


def _threads(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread of `pid`: (name, nice), read from /proc."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(entry.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[16]))
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread priorities from /proc")
def test_shipping_and_sweeping_threads_yield_the_core_to_clicks(
    start_tracker: Callable[..., TrackerProc], clicks_queue: str
) -> None:
    tracker = start_tracker()
    assert request(tracker.port, "GET", "/c/none").status == 404  # the actix worker has served a request
    threads = _threads(tracker.proc.pid)
    # The shipper (Rust) and the reaper have threads of their own; the event loop runs on the main thread.
    assert [nice for name, nice in threads.values() if name == "adclick-ship"] == [10], threads
    assert [nice for name, nice in threads.values() if name == "adclick-reaper"] == [10], threads
    # The link replica's loader too (it renices itself as it starts).
    wait_until(
        lambda: [n for name, n in _threads(tracker.proc.pid).values() if name == "adclick-replica"] == [10],
        timeout=10,
        message="the replica's loader at nice 10",
    )
    assert threads[tracker.proc.pid][1] == 10, threads
    actix = [nice for name, nice in threads.values() if name.startswith("actix-rt")]
    assert actix and set(actix) == {0}, threads
    # SIGTERM and SIGINT are blocked in every thread but the one that takes them with sigwait (the kernel unblocks
    # them there while it waits): no handler of actix's can run.
    threads = _threads(tracker.proc.pid)
    assert [name for name, _ in threads.values()].count("adclick-signals") == 1, threads
    for tid, (name, _) in threads.items():
        if name == "adclick-signals":
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{tracker.proc.pid}/task/{tid}/status").read_text()
            blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
            assert all(blocked >> (sig - 1) & 1 for sig in (signal.SIGTERM, signal.SIGINT)), (name, hex(blocked))

    quiet = start_tracker(background_nice=0)
    assert {nice for _, nice in _threads(quiet.proc.pid).values()} == {0}
