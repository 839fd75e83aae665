"""Server latency read off the wire: a packet capture on loopback, request in to response out, per connection.

A load generator's own latency includes its scheduling: a request sent late, a reply read late. On a small or
shared machine that dominates the tail (nginx `return 302` shows a p99 of several ms from bench/loadgen here).
A capture on `lo` timestamps each segment as it crosses the loopback device, so for every keep-alive connection
with one request in flight, the time from the request's first segment to the response's first segment is what
the server took: kernel wake-up, parsing, the handler, writing the reply. Nothing the generator does after
sending, or before reading, is in it.

`capture()` runs tcpdump (headers only) for the duration of a `with` block; `server_latencies()` reads the pcap
file with no third-party parser. Needs tcpdump (`apt-get install -y tcpdump`) and the right to capture (root or
CAP_NET_RAW).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Link-layer header lengths of the capture formats tcpdump writes for `lo` (DLT_EN10MB on Linux), or for "any".
_LINK_HEADER = {0: 4, 1: 14, 101: 0, 113: 16, 276: 20}
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
BLOCK_TIMEOUT_SECONDS = 1.2  # tcpdump's packet buffer timeout is 1 s


@dataclass
class Capture:
    """A running or finished capture: where the pcap is, and what tcpdump said about drops once stopped."""

    path: Path
    port: int
    received: int | None = None
    dropped: int | None = None
    error: str | None = None
    log: str = field(default="", repr=False)


def available() -> str | None:
    """None when a capture can run here, else why not."""
    if shutil.which("tcpdump") is None:
        return "tcpdump not installed (apt-get install -y tcpdump)"
    if os.geteuid() != 0:
        return "capturing needs root (or CAP_NET_RAW on tcpdump)"
    return None


@contextlib.contextmanager
def capture(port: int, path: Path, cpu: str | None = None) -> Iterator[Capture]:
    """Capture TCP headers to and from 127.0.0.1:`port` on `lo` while the block runs (tcpdump pinned to `cpu`)."""
    cap = Capture(path=path, port=port)
    cmd = ["tcpdump", "-i", "lo", "-n", "-q", "-s", "96", "-B", "65536", "--time-stamp-precision=nano"]
    cmd += ["-w", str(path), f"tcp port {port}"]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu, *cmd]
    err = path.with_suffix(".log")
    with err.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        # tcpdump says "listening on lo" once its socket is open: packets before that are not seen.
        deadline = time.monotonic() + 5.0
        while "listening on" not in err.read_text(errors="replace") and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            cap.error = f"tcpdump exited with {proc.returncode}: {err.read_text(errors='replace').strip()[-300:]}"
        yield cap
    finally:
        if proc.poll() is None:
            # Packets sit in a kernel ring block until it fills or its 1 s timeout retires it, and tcpdump does
            # not read an unretired block at exit: give the last block time to be retired and written.
            time.sleep(BLOCK_TIMEOUT_SECONDS)
            os.killpg(proc.pid, signal.SIGINT)  # SIGINT: tcpdump flushes the file and prints its counters
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        cap.log = err.read_text(errors="replace")
        if m := re.search(r"(\d+) packets received by filter", cap.log):
            cap.received = int(m.group(1))
        if m := re.search(r"(\d+) packets dropped by kernel", cap.log):
            cap.dropped = int(m.group(1))


def read_segments(path: Path) -> Iterator[tuple[float, int, int, int]]:
    """(timestamp in seconds, source port, destination port, TCP payload length) of each IPv4 TCP packet."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack_from("<I", data)[0]
    endian = "<"
    if magic not in (_MAGIC_US, _MAGIC_NS):
        magic = struct.unpack_from(">I", data)[0]
        endian = ">"
        if magic not in (_MAGIC_US, _MAGIC_NS):
            raise ValueError(f"{path}: not a pcap file")
    scale = 1e-9 if magic == _MAGIC_NS else 1e-6
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    link = _LINK_HEADER.get(linktype)
    if link is None:
        raise ValueError(f"{path}: link type {linktype} not handled")
    record = struct.Struct(endian + "IIII")
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = record.unpack_from(data, off)
        off += 16
        pkt = data[off : off + caplen]
        off += caplen
        ip = pkt[link:]
        if linktype == 1 and pkt[12:14] != b"\x08\x00":
            continue  # not IPv4
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack_from(">HH", tcp)
        payload = total - ihl - (tcp[12] >> 4) * 4
        yield sec + frac * scale, sport, dport, payload


def server_latencies(path: Path, server_port: int) -> list[float]:
    """Seconds from each request's first segment to its response's first segment, per client connection.

    Assumes one request in flight per connection (bench/loadgen's way); a segment seen twice (a capture that
    sees both directions of `lo`) is counted once because only the first one opens or closes a request.
    """
    waiting: dict[int, float] = {}
    out: list[float] = []
    for ts, sport, dport, payload in read_segments(path):
        if payload <= 0:
            continue
        if dport == server_port:
            waiting.setdefault(sport, ts)
        elif sport == server_port:
            start = waiting.pop(dport, None)
            if start is not None:
                out.append(ts - start)
    return out


def quantile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of already sorted values, or None when there are none."""
    if not sorted_values:
        return None
    i = min(len(sorted_values), max(1, int(-(-q * len(sorted_values) // 1)))) - 1
    return sorted_values[i]
