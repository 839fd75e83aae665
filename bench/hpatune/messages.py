"""What the worker phase feeds the worker: click and conversion message bodies, and the SQS calls that send and
count them."""

from __future__ import annotations

from typing import Any

from .postback import BENCH_CLICK_SECRET


class ClickMessages:
    """Fresh `c1:` bodies of `per_message` click events each, over the seeded links, with genuine ClickIDs."""

    def __init__(self, per_message: int, links: list[tuple[int, int, int, int]]) -> None:
        from adclick import _native
        from adclick.worker.messages import pack_clicks
        from worker.workerkit import T0, UA_A, UA_B, click_event

        self.per_message, self.links, self.next = per_message, links, 0
        self._event, self._pack, self._t0, self._uas = click_event, pack_clicks, T0, (UA_A, UA_B)
        self._codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())

    def event(self, n: int) -> dict[str, Any]:
        link_id, offer_id, affiliate_id, _ = self.links[n % len(self.links)]
        ts = self._t0 + n * 7
        # Spread over visitors, countries and hours, so unique-click keys and rollup rows vary as in production.
        return self._event(
            link_id,
            ts,
            offer_id=offer_id,
            affiliate_id=affiliate_id,
            ip=f"10.{n % 251}.{(n // 251) % 251}.{n % 7}",
            ua=self._uas[n % 2],
            country=("US", "BR", "DE", "IN", "GB", None)[n % 6],
            device=("smartphone", "desktop", "tablet")[n % 3],
            bot=n % 50 == 0,
            click_id=self._codec.generate(link_id, ts),
        )

    def take(self, count: int) -> list[str]:
        bodies = []
        for _ in range(count):
            bodies.append(self._pack([self.event(n) for n in range(self.next, self.next + self.per_message)]))
            self.next += self.per_message
        return bodies


class ConversionMessages:
    """Fresh `v1:` bodies, one conversion each (as the postback role queues them), new txids, genuine ClickIDs."""

    per_message = 1

    def __init__(self, links: list[tuple[int, int, int, int]]) -> None:
        from adclick import _native
        from worker.workerkit import HOUR_MS, T0, conversion_body

        self.links, self.next = links, 0
        self._body, self._t0, self._hour = conversion_body, T0, HOUR_MS
        self._codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())

    def take(self, count: int) -> list[str]:
        bodies = []
        for n in range(self.next, self.next + count):
            link_id, _, _, advertiser_id = self.links[n % len(self.links)]
            ts = self._t0 + n * 11
            bodies.append(
                self._body(
                    self._codec.generate(link_id, ts),
                    f"HT-{n}",
                    received_at=ts + self._hour,
                    amount=f"{10 + n % 90}.{n % 100:02d}",
                    currency="USD",
                    status="approved" if n % 4 else None,
                    advertiser_id=advertiser_id,
                    ip=f"198.51.100.{n % 250 + 1}",
                )
            )
        self.next += count
        return bodies


def send(client: Any, queue_url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i : i + 10])]
        failed = client.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed")
        if failed:
            raise RuntimeError(f"SQS refused messages: {failed[:1]}")


def backlog(client: Any, queue_url: str) -> int:
    attrs = client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
