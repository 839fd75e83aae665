"""`bench/wirelat.py`: the server latency read off a loopback capture, which `bench/compare.py` reports.

The parser is checked on a pcap written here byte by byte (both timestamp precisions, both byte orders, segments
seen twice, pure ACKs, pipelined connections interleaved). Where tcpdump can run (CI installs it; capturing
needs root), a real capture of real HTTP requests is read back too. No timing is asserted beyond ordering.
"""

from __future__ import annotations

import http.client
import http.server
import struct
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import wirelat  # noqa: E402

SERVER = 8080


def _packet(sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
    eth = b"\0" * 12 + b"\x08\x00"
    return eth + ip + tcp + payload


def _pcap(path: Path, packets: list[tuple[float, bytes]], *, nano: bool, endian: str = "<") -> None:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    for ts, pkt in packets:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(endian + "IIII", sec, frac, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize(("nano", "endian"), [(True, "<"), (False, "<"), (True, ">")])
def test_latency_is_first_request_segment_to_first_response_segment(tmp_path: Path, nano: bool, endian: str) -> None:
    a, b = 40001, 40002
    packets = [
        (100.000000, _packet(a, SERVER, b"GET /c/x HTTP/1.1\r\n")),  # a: request in two segments
        (100.000010, _packet(a, SERVER, b"\r\n")),
        (100.000010, _packet(a, SERVER, b"\r\n")),  # the same segment seen twice
        (100.000020, _packet(b, SERVER, b"GET /c/y HTTP/1.1\r\n\r\n")),
        (100.000030, _packet(SERVER, a, b"")),  # pure ACK: no payload, not a response
        (100.000250, _packet(SERVER, b, b"HTTP/1.1 302 Found\r\n\r\n")),  # b answered first
        (100.000400, _packet(SERVER, a, b"HTTP/1.1 302 Found\r\n\r\n")),
        (100.000400, _packet(SERVER, a, b"HTTP/1.1 302 Found\r\n\r\n")),  # seen twice: one latency
        (100.000410, _packet(SERVER, a, b"more of the body")),  # rest of the response
        (100.001000, _packet(a, SERVER, b"GET /c/z HTTP/1.1\r\n\r\n")),  # keep-alive: a's next request
        (100.001700, _packet(SERVER, a, b"HTTP/1.1 302 Found\r\n\r\n")),
        (100.002000, _packet(b, SERVER, b"GET /c/never-answered HTTP/1.1\r\n\r\n")),
    ]
    path = tmp_path / "run.pcap"
    _pcap(path, packets, nano=nano, endian=endian)
    got = [round(v * 1e6) for v in wirelat.server_latencies(path, SERVER)]
    assert got == [230, 400, 700]


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert wirelat.quantile(values, 0.5) == 50.0
    assert wirelat.quantile(values, 0.99) == 99.0
    assert wirelat.quantile(values, 1.0) == 100.0
    assert wirelat.quantile([7.0], 0.99) == 7.0
    assert wirelat.quantile([], 0.99) is None


def test_not_a_pcap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pcap"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a pcap"):
        wirelat.server_latencies(path, SERVER)


class _Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "https://shop.example/lp")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(wirelat.available() is not None, reason=str(wirelat.available()))
def test_a_real_capture_gives_one_latency_per_request(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with wirelat.capture(port, tmp_path / "real.pcap") as cap:
            assert cap.error is None
            for _ in range(2):  # two keep-alive connections, 10 requests each
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                for i in range(10):
                    conn.request("GET", f"/c/x{i}")
                    assert conn.getresponse().read() == b""
                conn.close()
    finally:
        server.shutdown()
        server.server_close()
    values = wirelat.server_latencies(tmp_path / "real.pcap", port)
    assert cap.dropped == 0, cap.log
    assert cap.received, cap.log
    assert len(values) == 20
    assert all(0 < v < 5 for v in values)
