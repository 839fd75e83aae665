"""The test fixtures themselves: real servers that really go away and come back."""

from __future__ import annotations

import redis

from support.servers import RedisServer, SqsServer


def test_redis_restart_on_same_port_keeps_saved_data(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("k", "v")
    port = redis_server.port
    redis_server.stop(save=True)
    try:
        client.ping()
        raise AssertionError("a stopped redis answered")
    except redis.ConnectionError:
        pass
    redis_server.start()
    assert redis_server.port == port
    assert client.get("k") == "v"
    client.close()


def test_redis_stop_without_save_loses_data(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set("k", "v")
    redis_server.stop()
    redis_server.start()
    with redis_server.client() as client:
        assert client.get("k") is None


def test_redis_pause_makes_commands_time_out(redis_server: RedisServer) -> None:
    with redis_server.client(socket_timeout=0.2) as client:
        client.set("k", "v")
        redis_server.pause()
        try:
            client.get("k")
            raise AssertionError("a paused redis answered")
        except redis.TimeoutError:
            pass
        redis_server.resume()
    with redis_server.client() as client:
        assert client.get("k") == "v"


def test_sqs_drain_returns_every_message_once(sqs_server: SqsServer) -> None:
    url = sqs_server.create_queue("probe")
    client = sqs_server.client()
    for i in range(23):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")
    client.close()
    assert sqs_server.count(url) == 23
    assert sorted(sqs_server.drain(url)) == sorted(f"m{i}" for i in range(23))
    assert sqs_server.drain(url) == []


def test_sqs_reset_between_tests_and_pause_keeps_state(sqs_server: SqsServer) -> None:
    url = sqs_server.create_queue("probe")
    client = sqs_server.client()
    client.send_message(QueueUrl=url, MessageBody="kept")
    client.close()
    sqs_server.pause()
    sqs_server.resume()
    assert sqs_server.drain(url) == ["kept"]


def test_env_points_at_the_servers(
    adclick_env: dict[str, str], redis_server: RedisServer, sqs_server: SqsServer
) -> None:
    from adclick.core.settings import Settings

    settings = Settings()
    assert settings.redis_url == redis_server.url
    assert settings.sqs_endpoint_url == sqs_server.endpoint_url
    assert adclick_env["AWS_ACCESS_KEY_ID"] == "test"
