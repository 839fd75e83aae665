"""`adclick worker`: consume the clicks and conversions queues into the database until SIGTERM, then exit 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import redis.asyncio as aioredis
from botocore.exceptions import BotoCoreError, ClientError

from adclick import _native
from adclick.core.logs import setup_logging
from adclick.core.publisher import redis_client
from adclick.core.settings import WorkerSettings
from adclick.core.sqs import SQSClient, create_client, ensure_queues
from adclick.worker.batches import describe
from adclick.worker.clicks import ClickHandler
from adclick.worker.consumer import Consumer
from adclick.worker.conversions import ConversionHandler
from adclick.worker.deliverer import Deliverer
from adclick.worker.health import Heartbeat, WorkerMetrics, start_health_server

log = logging.getLogger("adclick.worker")

SQS_CONNECT_TIMEOUT = 5.0
REDIS_TIMEOUT = 5.0
# Republishing links after a cap fills: a Redis outage delays one consumer this long, then the reconciler catches up.
LINKS_REDIS_TIMEOUT_MS = 1000
# The long poll answers after WaitTimeSeconds; the read timeout leaves room for a slow answer on top.
READ_TIMEOUT_MARGIN = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="adclick worker",
        description="Consume click and conversion messages from SQS into the database; /health and /metrics.",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="consumer tasks per queue, each with one batch in flight (ADCLICK_WORKER_CONCURRENCY, default 2)",
    )
    p.add_argument("--health-port", type=int, help="port of /health and /metrics (ADCLICK_WORKER_HEALTH_PORT, 8002)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    overrides = {
        key: value
        for key, value in {"worker_concurrency": args.concurrency, "worker_health_port": args.health_port}.items()
        if value is not None
    }
    return WorkerSettings(**overrides)


def make_codec(settings: WorkerSettings) -> _native.ClickIdCodec:
    previous = settings.click_previous_secret
    return _native.ClickIdCodec(
        settings.click_key_id,
        settings.click_secret.get_secret_value().encode(),
        settings.click_previous_key_id if previous is not None else None,
        previous.get_secret_value().encode() if previous is not None else None,
    )


async def queue_urls(client: SQSClient, settings: WorkerSettings, stop: asyncio.Event) -> dict[str, str] | None:
    """The queue URLs, creating the queues and their dead-letter queues if needed; waits for SQS to answer."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await ensure_queues(client, settings)
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
            log.warning("SQS not ready (%s); retrying in %.1f s", describe(error), delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 5.0)
    return None


async def run(settings: WorkerSettings) -> int:
    from adclick.core.db.session import create_engine, session_factory

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = WorkerMetrics()
    heartbeat = Heartbeat()
    runner = await start_health_server(
        heartbeat,
        metrics,
        settings.worker_health_host,
        settings.worker_health_port,
        settings.worker_heartbeat_stale_seconds,
    )
    concurrency = settings.worker_concurrency
    # Every consumer task may hold a connection, and the split of a failed batch needs no second one.
    engine = create_engine(settings, pool_size=max(settings.database_pool_size, 2 * concurrency))
    sessions = session_factory(engine)
    redis = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    try:
        read_timeout = settings.worker_wait_seconds + READ_TIMEOUT_MARGIN
        async with create_client(settings, connect_timeout=SQS_CONNECT_TIMEOUT, read_timeout=read_timeout) as client:
            urls = await queue_urls(client, settings, stop)
            if urls is None:
                return 0
            clicks = ClickHandler(
                sessions,
                settings.clicks_queue,
                metrics,
                redis,
                settings.unique_window_hours * 3600,
                settings.sub_values_per_link_day,
            )
            conversions = ConversionHandler(
                sessions,
                settings.conversions_queue,
                metrics,
                make_codec(settings),
                redis_client(settings.redis_url, LINKS_REDIS_TIMEOUT_MS),
            )
            consumers = [
                Consumer(
                    f"{key}-{n}",
                    client,
                    urls[key],
                    handler,  # type: ignore[arg-type]
                    metrics,
                    heartbeat,
                    wait_seconds=settings.worker_wait_seconds,
                    visibility_timeout=settings.worker_visibility_timeout,
                )
                for key, handler in (("clicks", clicks), ("conversions", conversions))
                for n in range(concurrency)
            ]
            log.info(
                "worker consuming %s and %s with %d tasks each; health on %s:%d",
                settings.clicks_queue,
                settings.conversions_queue,
                concurrency,
                settings.worker_health_host,
                settings.worker_health_port,
            )
            deliverer = Deliverer(sessions, settings, metrics)
            await asyncio.gather(*(consumer.run(stop) for consumer in consumers), deliverer.run(stop))
            log.info("worker stopped")
    finally:
        await redis.aclose()
        await engine.dispose()
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = settings_from(args)
    setup_logging(settings.log_level, role="worker")
    return asyncio.run(run(settings))
