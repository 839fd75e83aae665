"""Start real child processes for tests and make sure none outlives its test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
    proc: ManagedProcess | None = None,
) -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` or if `proc` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if proc is not None and not proc.alive():
            exited = f"{proc.name} exited with {proc.returncode}"
            raise RuntimeError(f"{exited} while waiting for {message}:\n{proc.output()}")
        if time.monotonic() >= deadline:
            details = f"\n{proc.name} output:\n{proc.output()}" if proc is not None else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}{details}")
        time.sleep(interval)


def within_a_second(predicate: Callable[[], object], message: str = "condition") -> float:
    """Poll `predicate` every 10 ms from now; fail unless it holds in under a second. Returns the seconds it took."""
    started = time.monotonic()
    wait_until(predicate, timeout=1.0, interval=0.01, message=message)
    took = time.monotonic() - started
    assert took < 1.0, f"{message} took {took:.3f} s"
    return took


def wait_for_port(
    port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc: ManagedProcess | None = None
) -> None:
    """Wait until host:port accepts connections, failing early if `proc` exits."""
    wait_until(lambda: port_open(port, host), timeout=timeout, message=f"{host}:{port} to listen", proc=proc)


class ManagedProcess:
    """A child process in its own session, its output in a log file, killed with its whole group."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        """Signal the process group (the process and any children it started)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and state but answers nothing, like a hung host."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the group to exit with `sig`, SIGKILL it after `timeout`; return the exit code."""
        if self.alive():
            self.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.poll()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        try:
            self.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            pass

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


class ProcessGuard:
    """Owns child processes and kills every one of them on exit, whatever happened in the test."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="adclick-test-")
            log_dir = Path(self._tmp.name)
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> ManagedProcess:
        """Start `argv` in a new session, stdout and stderr to `<log_dir>/<name>.log`."""
        name = name or Path(argv[0]).name
        log_path = self.log_dir / f"{name}-{len(self.processes)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        proc = ManagedProcess(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def stop_all(self, timeout: float = 5.0) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout)
        self.processes.clear()

    def close(self) -> None:
        self.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ServerProcess:
    """A server that runs as one child process (`proc`) on a free 127.0.0.1 port, which a test can freeze and thaw."""

    proc: ManagedProcess | None

    def __init__(self, guard: ProcessGuard) -> None:
        self.guard = guard
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets and data but answers nothing, so requests hang and time out instead
        of being refused, like a stuck host; `resume()` brings it back as it was."""
        assert self.proc is not None
        self.proc.pause()

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.resume()
