"""The worker's small HTTP server: `GET /health` (liveness: the consumers' heartbeat is fresh) and `GET /metrics`.

Liveness only: it never touches the database or Redis, so an outage of either does not get the pod restarted
(the consumers wait for it and keep beating); a consumer stuck for longer than the stale limit does.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """Prometheus metrics of one worker process (own registry, so tests can run several side by side)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "adclick_worker_processed",
            "Events handled, by kind: click, duplicate_click, conversion, status_change, rejection",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "adclick_worker_conversions_rejected", "Postbacks rejected, by reason", ["reason"], registry=r
        )
        self.failed = Counter(
            "adclick_worker_failed",
            "Messages or events that failed and were recorded in failed jobs",
            ["queue"],
            registry=r,
        )
        self.messages = Counter(
            "adclick_worker_messages", "SQS messages deleted after their batch committed", ["queue"], registry=r
        )
        self.batch_seconds = Histogram(
            "adclick_worker_batch_seconds",
            "Time from receiving a batch to deleting its messages",
            ["queue"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.oldest_age = Gauge(
            "adclick_worker_oldest_message_age_seconds",
            "Age (now - SentTimestamp) of the oldest message in the last batch received",
            ["queue"],
            registry=r,
        )
        self.affiliate_postbacks = Counter(
            "adclick_worker_affiliate_postbacks",
            "Postbacks sent to affiliates' servers, by result: delivered, error (retried), failed (retries over)",
            ["result"],
            registry=r,
        )
        self.affiliate_postback_seconds = Histogram(
            "adclick_worker_affiliate_postback_seconds",
            "Time an affiliate's server took to answer a postback",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "adclick_worker_batch_retries",
            "Batches retried because the database or Redis failed",
            ["queue"],
            registry=r,
        )
        self.visibility_extensions = Counter(
            "adclick_worker_visibility_extensions", "ChangeMessageVisibilityBatch calls for slow batches", registry=r
        )
        self.heartbeat_age = Gauge(
            "adclick_worker_heartbeat_age_seconds", "Seconds since the stalest consumer last made progress", registry=r
        )


class Heartbeat:
    """Each consumer beats at every step (receive returned, batch done, retry wait); health reads the stalest."""

    def __init__(self) -> None:
        self._beats: dict[str, float] = {}

    def beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def forget(self, name: str) -> None:
        self._beats.pop(name, None)

    def age(self) -> float:
        """Seconds since the stalest consumer beat; infinite before any consumer started."""
        if not self._beats:
            return float("inf")
        return time.monotonic() - min(self._beats.values())


def make_app(heartbeat: Heartbeat, metrics: WorkerMetrics, stale_seconds: float) -> web.Application:
    async def health(_request: web.Request) -> web.Response:
        age = heartbeat.age()
        if age <= stale_seconds:
            return web.json_response({"status": "ok", "heartbeat_age": round(age, 3)})
        return web.json_response({"status": "stale", "heartbeat_age": None if age == float("inf") else age}, status=503)

    async def prometheus(_request: web.Request) -> web.Response:
        age = heartbeat.age()
        metrics.heartbeat_age.set(age if age != float("inf") else -1)
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    return app


async def start_health_server(
    heartbeat: Heartbeat, metrics: WorkerMetrics, host: str, port: int, stale_seconds: float
) -> web.AppRunner:
    """Serve /health and /metrics on host:port until `await runner.cleanup()`."""
    runner = web.AppRunner(make_app(heartbeat, metrics, stale_seconds), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
