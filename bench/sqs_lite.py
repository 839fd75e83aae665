"""A small in-memory SQS endpoint (JSON protocol) for the worker benchmark, with O(1) sends and receives.

moto's SQS recomputes every queue attribute over every message on each send and receive, so a backlog of
twenty thousand messages takes it many minutes to accept and the benchmark would measure moto. This speaks
just the calls the roles and the benchmarks make (create/get queue, attributes, a send, send/receive/delete batches,
visibility changes, long polling) with SQS's semantics for them: a received message is invisible for its
visibility timeout, then comes back with its receive count increased. Benchmark only; tests use moto.

Run: `python bench/sqs_lite.py --port 9324`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ACCOUNT = "000000000000"


@dataclass
class Message:
    id: str
    body: str
    sent_ms: int
    receives: int = 0
    receipt: str | None = None


@dataclass
class Queue:
    name: str
    attributes: dict[str, str]
    visible: deque[Message] = field(default_factory=deque)
    in_flight: dict[str, tuple[Message, float]] = field(default_factory=dict)  # receipt -> (message, deadline)
    deadlines: list[tuple[float, int, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def requeue_expired(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, receipt = heapq.heappop(self.deadlines)
            held = self.in_flight.get(receipt)
            if held is not None and held[1] <= now:
                del self.in_flight[receipt]
                self.visible.append(held[0])


class Server:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.queues: dict[str, Queue] = {}
        self.seq = itertools.count()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{ACCOUNT}/{name}"

    def queue(self, body: dict[str, Any]) -> Queue:
        name = str(body["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]
        if name not in self.queues:
            raise KeyError(name)
        return self.queues[name]

    def hold(self, queue: Queue, message: Message, seconds: float) -> str:
        receipt = uuid.uuid4().hex
        message.receipt = receipt
        deadline = time.monotonic() + seconds
        queue.in_flight[receipt] = (message, deadline)
        heapq.heappush(queue.deadlines, (deadline, next(self.seq), receipt))
        return receipt

    async def CreateQueue(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["QueueName"]
        if name not in self.queues:
            self.queues[name] = Queue(name, dict(body.get("Attributes") or {}))
        else:
            self.queues[name].attributes.update(body.get("Attributes") or {})
        return {"QueueUrl": self.url(name)}

    async def GetQueueUrl(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["QueueName"] not in self.queues:
            raise KeyError(body["QueueName"])
        return {"QueueUrl": self.url(body["QueueName"])}

    async def SetQueueAttributes(self, body: dict[str, Any]) -> dict[str, Any]:
        self.queue(body).attributes.update(body.get("Attributes") or {})
        return {}

    async def GetQueueAttributes(self, body: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(body)
        queue.requeue_expired()
        values = {
            **queue.attributes,
            "QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue.name}",
            "ApproximateNumberOfMessages": str(len(queue.visible)),
            "ApproximateNumberOfMessagesNotVisible": str(len(queue.in_flight)),
        }
        wanted = body.get("AttributeNames") or ["All"]
        if "All" not in wanted:
            values = {k: v for k, v in values.items() if k in wanted}
        return {"Attributes": values}

    async def SendMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        # The postback role sends one conversion per request (bench/hpa_tune.py drives it).
        queue = self.queue(body)
        message = Message(uuid.uuid4().hex, body["MessageBody"], int(time.time() * 1000))
        queue.visible.append(message)
        queue.arrived.set()
        return {"MessageId": message.id, "MD5OfMessageBody": hashlib.md5(message.body.encode()).hexdigest()}

    async def SendMessageBatch(self, body: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(body)
        successful = []
        for entry in body["Entries"]:
            message = Message(uuid.uuid4().hex, entry["MessageBody"], int(time.time() * 1000))
            queue.visible.append(message)
            md5 = hashlib.md5(message.body.encode()).hexdigest()
            successful.append({"Id": entry["Id"], "MessageId": message.id, "MD5OfMessageBody": md5})
        queue.arrived.set()
        return {"Successful": successful, "Failed": []}

    async def ReceiveMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(body)
        wanted = int(body.get("MaxNumberOfMessages", 1))
        visibility = float(body.get("VisibilityTimeout", queue.attributes.get("VisibilityTimeout", 30)))
        deadline = time.monotonic() + float(body.get("WaitTimeSeconds", 0))
        while True:
            queue.requeue_expired()
            if queue.visible or time.monotonic() >= deadline:
                break
            queue.arrived.clear()
            try:
                await asyncio.wait_for(queue.arrived.wait(), min(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        messages = []
        while queue.visible and len(messages) < wanted:
            message = queue.visible.popleft()
            message.receives += 1
            receipt = self.hold(queue, message, visibility)
            messages.append(
                {
                    "MessageId": message.id,
                    "ReceiptHandle": receipt,
                    "MD5OfBody": hashlib.md5(message.body.encode()).hexdigest(),
                    "Body": message.body,
                    "Attributes": {
                        "ApproximateReceiveCount": str(message.receives),
                        "SentTimestamp": str(message.sent_ms),
                    },
                }
            )
        return {"Messages": messages} if messages else {}

    async def DeleteMessageBatch(self, body: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(body)
        for entry in body["Entries"]:
            queue.in_flight.pop(entry["ReceiptHandle"], None)
        return {"Successful": [{"Id": entry["Id"]} for entry in body["Entries"]], "Failed": []}

    async def ChangeMessageVisibilityBatch(self, body: dict[str, Any]) -> dict[str, Any]:
        queue = self.queue(body)
        for entry in body["Entries"]:
            held = queue.in_flight.get(entry["ReceiptHandle"])
            if held is not None:
                deadline = time.monotonic() + float(entry["VisibilityTimeout"])
                queue.in_flight[entry["ReceiptHandle"]] = (held[0], deadline)
                heapq.heappush(queue.deadlines, (deadline, next(self.seq), entry["ReceiptHandle"]))
        return {"Successful": [{"Id": entry["Id"]} for entry in body["Entries"]], "Failed": []}

    async def handle(self, request: web.Request) -> web.Response:
        action = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        method = getattr(self, action, None) if action[:1].isupper() else None
        if method is None:
            return self.error(400, "UnsupportedOperation", f"sqs_lite does not do {action!r}")
        try:
            result = await method(json.loads(await request.read() or b"{}"))
        except KeyError as missing:
            return self.error(400, "AWS.SimpleQueueService.NonExistentQueue", f"no queue {missing}")
        return web.json_response(result, content_type="application/x-amz-json-1.0")

    @staticmethod
    def error(status: int, code: str, message: str) -> web.Response:
        body = {"__type": f"com.amazonaws.sqs#{code}", "message": message}
        return web.json_response(body, status=status, content_type="application/x-amz-json-1.0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9324)
    args = parser.parse_args()
    server = Server(f"http://{args.host}:{args.port}")
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/", server.handle)
    app.router.add_post("/{tail:.*}", server.handle)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
