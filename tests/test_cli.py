"""`adclick` as a user runs it: a real subprocess against a real redis-server."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from support.servers import RedisServer


def run_cli(*args: str, redis_url: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if redis_url is not None:
        env["ADCLICK_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "adclick.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("links", "tracker", "dev"):
        assert f"  {name}" in result.stdout


def test_no_command_prints_usage_and_fails() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: adclick" in result.stdout


def test_unknown_command_fails() -> None:
    result = run_cli("nope")
    assert result.returncode == 2
    assert "unknown command 'nope'" in result.stderr


@pytest.mark.parametrize("args", [["links"], ["links", "put"], ["links", "get"], ["links", "delete"]])
def test_links_help(args: list[str]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: adclick links")


@pytest.mark.parametrize(("command", "module"), [("tracker", "adclick.tracker.main"), ("dev", "adclick.dev")])
def test_role_help_reaches_the_role(command: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_put_then_get_round_trips_the_v1_config(redis_server: RedisServer) -> None:
    put = run_cli(
        "links", "put", "summer-sale", "https://shop.example/lp?cid={click_id}&s1={sub1}",
        "--id", "42", "--offer", "7", "--affiliate", "3", "--fallback", "https://shop.example/", "--cookie",
        redis_url=redis_server.url,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    expected = {
        "v": 1,
        "id": 42,
        "slug": "summer-sale",
        "offer_id": 7,
        "affiliate_id": 3,
        "status": "active",
        "expires_at": None,
        "url": "https://shop.example/lp?cid={click_id}&s1={sub1}",
        "fallback_url": "https://shop.example/",
        "cookie": True,
    }
    assert json.loads(put.stdout) == expected
    with redis_server.client() as client:
        assert json.loads(client.get("adclick:link:summer-sale")) == expected
    got = run_cli("links", "get", "summer-sale", redis_url=redis_server.url)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == expected


def test_put_publishes_the_slug_for_trackers(redis_server: RedisServer) -> None:
    client = redis_server.client()
    pubsub = client.pubsub()
    pubsub.subscribe("adclick:invalidate")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    put = run_cli("links", "put", "s1", "https://a.example/", "--id", "1", redis_url=redis_server.url)
    assert put.returncode == 0, put.stderr
    message = pubsub.get_message(timeout=10)
    assert message is not None and message["data"] == "s1"
    pubsub.close()
    client.close()


def test_put_without_id_allocates_distinct_ids(redis_server: RedisServer) -> None:
    ids = []
    for slug in ("a", "b", "c"):
        put = run_cli("links", "put", slug, "https://a.example/", redis_url=redis_server.url)
        assert put.returncode == 0, put.stderr
        ids.append(json.loads(put.stdout)["id"])
    assert len(set(ids)) == 3
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_put_paused_and_replacing_keeps_one_config(redis_server: RedisServer) -> None:
    run_cli("links", "put", "x", "https://a.example/", "--id", "5", redis_url=redis_server.url)
    again = run_cli("links", "put", "x", "https://b.example/", "--id", "5", "--paused", redis_url=redis_server.url)
    assert again.returncode == 0, again.stderr
    got = json.loads(run_cli("links", "get", "x", redis_url=redis_server.url).stdout)
    assert got["url"] == "https://b.example/"
    assert got["status"] == "paused"


def test_put_from_json_on_stdin_with_destinations(redis_server: RedisServer) -> None:
    config: dict[str, Any] = {
        "v": 1,
        "id": 9,
        "slug": "ignored-the-argument-wins",
        "destinations": [
            {"url": "https://a.example/?c={click_id}", "weight": 70},
            {"url": "https://b.example/?c={click_id}", "weight": 30},
        ],
        "rules": [{"countries": ["US"], "url": "https://us.example/?c={click_id}"}],
    }
    put = run_cli(
        "links", "put", "rot", "--json", "-", "--offer", "4", stdin=json.dumps(config), redis_url=redis_server.url
    )
    assert put.returncode == 0, put.stderr
    stored = json.loads(run_cli("links", "get", "rot", redis_url=redis_server.url).stdout)
    assert stored["slug"] == "rot"
    assert stored["destinations"] == config["destinations"]
    assert stored["rules"] == config["rules"]
    assert stored["offer_id"] == 4
    assert "url" not in stored


def test_put_from_json_file(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "link.json"
    path.write_text(json.dumps({"v": 1, "id": 11, "url": "https://f.example/"}))
    put = run_cli("links", "put", "file", "--json", str(path), redis_url=redis_server.url)
    assert put.returncode == 0, put.stderr
    assert json.loads(run_cli("links", "get", "file", redis_url=redis_server.url).stdout)["id"] == 11


@pytest.mark.parametrize(
    "args",
    [
        ["bad/slug", "https://a.example/", "--id", "1"],
        ["x" * 65, "https://a.example/", "--id", "1"],
        ["ok", "javascript:alert(1)", "--id", "1"],
        ["ok", "https://a.example/", "--id", "0"],
        ["ok"],
    ],
)
def test_put_refuses_bad_configs_and_writes_nothing(redis_server: RedisServer, args: list[str]) -> None:
    result = run_cli("links", "put", *args, redis_url=redis_server.url)
    assert result.returncode == 2
    assert "error" in result.stderr
    with redis_server.client() as client:
        assert [key for key in client.keys("adclick:link:*")] == []


def test_get_missing_link_fails(redis_server: RedisServer) -> None:
    result = run_cli("links", "get", "nope", redis_url=redis_server.url)
    assert result.returncode == 1
    assert result.stdout == ""


def test_delete_removes_and_publishes(redis_server: RedisServer) -> None:
    run_cli("links", "put", "gone", "https://a.example/", "--id", "3", redis_url=redis_server.url)
    client = redis_server.client()
    pubsub = client.pubsub()
    pubsub.subscribe("adclick:invalidate")
    pubsub.get_message(timeout=5)
    deleted = run_cli("links", "delete", "gone", redis_url=redis_server.url)
    assert deleted.returncode == 0, deleted.stderr
    message = pubsub.get_message(timeout=10)
    assert message is not None and message["data"] == "gone"
    assert client.get("adclick:link:gone") is None
    assert run_cli("links", "delete", "gone", redis_url=redis_server.url).returncode == 1
    pubsub.close()
    client.close()


def test_redis_down_is_reported(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    result = run_cli("links", "get", "x", redis_url=url)
    assert result.returncode == 3
    assert "Redis" in result.stderr


def test_concurrent_puts_without_id_never_share_an_id(redis_server: RedisServer) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                run_cli("links", "put", f"p{i}", "https://a.example/", redis_url=redis_server.url)
            )
        )
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({json.loads(r.stdout)["id"] for r in results}) == 6
