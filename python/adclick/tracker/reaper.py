"""Closes client connections that Robyn would keep forever: stalled requests (slowloris) and idle keep-alives.

Robyn 0.88 sets actix's client request timeout to 0 (off) and keeps connections alive as long as the OS does,
with no setting to change either. So each tracker process runs this thread: every second it reads TCP_INFO
of each accepted connection on our port (the sockets live in this process, so their file descriptors are ours
to inspect) and shuts down the ones that have waited too long. Actix then sees the socket closed and drops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("adclick.tracker.reaper")

# Offsets in struct tcp_info (linux/tcp.h): tcpi_state is byte 0; times in ms since the event.
_STATE_ESTABLISHED = 1
_LAST_DATA_SENT = 44
_LAST_DATA_RECV = 52
_BYTES_RECEIVED = 128
_TCP_INFO_LEN = 136
_PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Shows the calling thread as `name` (15 bytes at most) in top -H, ps -L and /proc: Python does not."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _tcp_info(sock: socket.socket) -> tuple[int, int, int, int] | None:
    """(state, ms since we last sent, ms since we last received, bytes received) or None."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    (sent_age,) = struct.unpack_from("I", raw, _LAST_DATA_SENT)
    (recv_age,) = struct.unpack_from("I", raw, _LAST_DATA_RECV)
    (received,) = struct.unpack_from("Q", raw, _BYTES_RECEIVED)
    return raw[0], sent_age, recv_age, received


def verdict(sent_age_ms: int, recv_age_ms: int, received: int, header_ms: int, keepalive_ms: int) -> str | None:
    """Why a connection should be closed, or None to leave it.

    - a request in progress (the client sent after our last answer) unanswered for header_ms: stalled;
    - nothing ever received for header_ms: a silent connection;
    - nothing either way for keepalive_ms: idle keep-alive.
    """
    if received == 0:
        return "silent" if recv_age_ms >= header_ms else None
    if recv_age_ms < sent_age_ms and sent_age_ms >= header_ms:
        return "stalled"
    if recv_age_ms >= keepalive_ms and sent_age_ms >= keepalive_ms:
        return "idle"
    return None


class ConnectionReaper:
    """A daemon thread applying header and keep-alive timeouts to this process's connections on `port`."""

    def __init__(
        self,
        port: int,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        interval: float = 1.0,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self._on_start = on_start
        self.header_ms = int(header_timeout * 1000)
        self.keepalive_ms = int(keepalive_timeout * 1000)
        self.interval = min(interval, header_timeout / 2)
        self.closed: dict[str, int] = {"stalled": 0, "silent": 0, "idle": 0}
        # A request caught mid-processing looks stalled for a moment; only one still unanswered at the next
        # sweep (our last send no more recent than before) is closed.
        self._suspects: dict[int, int] = {}
        self._stop = threading.Event()
        self._named = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="adclick-reaper", daemon=True)
            self._thread.start()
            # The process reports ready only once its sweeper is named and reniced (a thread starts unnamed).
            self._named.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        name_os_thread("adclick-reaper")
        if self._on_start is not None:
            self._on_start()
        self._named.set()
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # a sweep must never take the process down
                log.exception("connection sweep failed")

    def sweep(self) -> int:
        """Closes the connections that timed out; returns how many."""
        n = 0
        suspects: dict[int, int] = {}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if not os.path.islink(f"/proc/self/fd/{fd}") or not os.readlink(f"/proc/self/fd/{fd}").startswith(
                    "socket:"
                ):
                    continue
            except OSError:
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                try:
                    if sock.getsockname()[1] != self.port:
                        continue
                    sock.getpeername()  # listening sockets have no peer
                except OSError:
                    continue
                info = _tcp_info(sock)
                if info is None or info[0] != _STATE_ESTABLISHED:
                    continue
                why = verdict(info[1], info[2], info[3], self.header_ms, self.keepalive_ms)
                if why == "stalled":
                    previous = self._suspects.get(fd)
                    suspects[fd] = info[1]
                    if previous is None or info[1] < previous:
                        continue
                if why:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        continue
                    self.closed[why] += 1
                    n += 1
            finally:
                sock.detach()  # the descriptor belongs to actix; never close it from here
        self._suspects = suspects
        return n
